"""Fine-grained sparsity on the digits CNN (models/digits_cnn.pt / .onnx, trained by
scripts/digits.py): accuracy and file size at 75% and 90% per-layer magnitude sparsity, one-shot,
with mask-fixed fine-tuning, and gradual (the sparsity rises along a schedule while training).

    python scripts/sparsity_digits.py [--epochs 10] [--sparsity 0.75 0.9]

Every model is measured as ONNX in onnxruntime on the fixed test split.  Fine-tuned models go back
to ONNX through the dynamo exporter and `onnxprune.sparsify` at the same sparsity, which finds the
zeros the training kept (BN folding scales whole channels, so zeros stay zeros) and produces the
sizes: weights inline, raw and gzip (level 6), dense with zeros and ONNX sparse initializers.
Prints a markdown table.  Needs torch and scikit-learn.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import schedule  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402
from onnxprune.sparsity import magnitude_masks, serialized_sizes  # noqa: E402
from onnxprune.torch import apply_masks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ONNX = ROOT / "models" / "digits_cnn.onnx"


def trained_module() -> torch.nn.Module:
    module = digits.make_model()
    module.load_state_dict(torch.load(ROOT / "models" / "digits_cnn.pt"))
    return module.eval()


def onnx_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float((make_session(model).run(None, {"x": x})[0].argmax(1) == y).mean())


def finetune_fixed(masks: dict[str, np.ndarray], data, epochs: int) -> torch.nn.Module:
    """Train with the one-shot masks held fixed (gradients and weights re-masked every step)."""
    x_train, y_train = data
    module = trained_module()
    handle = apply_masks(module, masks)
    digits.train(module, x_train, y_train, epochs=epochs, lr=1e-3, masks=lambda m: handle.apply())
    handle.remove()
    return module


def finetune_gradual(names: list[str], sparsity: float, data, epochs: int, rule: str) -> torch.nn.Module:
    """Gradual magnitude pruning: before each of the first epochs/2 epochs the target rises along
    `rule` (cubic: Zhu & Gupta; paddle_log: PaddlePaddle's hook), masks are recomputed on the
    current weights, then one epoch trains with them fixed; the rest train at the final sparsity."""
    x_train, y_train = data
    module = trained_module()
    ramp = max(1, epochs // 2)
    for epoch in range(epochs):
        step = min(epoch + 1, ramp)
        target = (schedule.cubic(step, sparsity, n=ramp) if rule == "cubic"
                  else schedule.paddle_log(step, sparsity, interval_pass=1, end_pass=ramp))
        params = dict(module.named_parameters())
        masks = magnitude_masks({n: params[n].detach().numpy() for n in names}, sparsity=target)
        handle = apply_masks(module, masks)
        digits.train(module, x_train, y_train, epochs=1, lr=1e-3, seed=epoch, masks=lambda m: handle.apply())
        handle.remove()
    return module


def measure(label: str, model_path: Path, sparsity: float, x: np.ndarray, y: np.ndarray, **options) -> dict:
    result = onnxprune.sparsify(model_path, sparsity=sparsity, **options) if sparsity else None
    model = result.model if result else onnxprune.load(model_path).model
    sizes = result.sizes() if result else {"dense_zeros": serialized_sizes(model), "sparse": (None, None)}
    zeros = result.totals["model_sparsity"] if result else 0.0
    return {"label": label, "zeros": zeros, "accuracy": onnx_accuracy(model, x, y),
            "raw": sizes["dense_zeros"][0], "gzip": sizes["dense_zeros"][1],
            "sparse": sizes["sparse"][0], "sparse_gzip": sizes["sparse"][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per run (default 10)")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.75, 0.9])
    args = parser.parse_args()
    torch.set_num_threads(2)
    x_train, y_train, x_test, y_test = digits.load_digits_split()
    data = (x_train, y_train)
    tmp = Path(tempfile.mkdtemp())
    rows = [measure("original (dense)", ONNX, 0.0, x_test, y_test)]
    for sparsity in args.sparsity:
        one_shot = onnxprune.sparsify(ONNX, sparsity=sparsity)
        names = list(one_shot.masks)
        rows.append(measure(f"{sparsity:.0%} one-shot", ONNX, sparsity, x_test, y_test))
        rows.append(measure(f"{sparsity:.0%} one-shot, --protect-ends", ONNX, sparsity, x_test, y_test, protect_ends=True))
        rows.append(measure(f"{sparsity:.0%} one-shot, --global", ONNX, sparsity, x_test, y_test, global_ranking=True))
        runs = {f"{sparsity:.0%} + fine-tune, fixed masks ({args.epochs} ep)": finetune_fixed(one_shot.masks, data, args.epochs)}
        for rule in ("cubic", "paddle_log"):
            runs[f"{sparsity:.0%} gradual, {rule} ({args.epochs} ep)"] = finetune_gradual(names, sparsity, data, args.epochs, rule)
        for label, module in runs.items():
            path = digits.export(module.eval(), tmp / f"{len(rows)}.onnx")
            rows.append(measure(label, path, sparsity, x_test, y_test))
    print("| model | zero weights | test accuracy | ONNX bytes | gzip | sparse format | sparse gzip |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sparse = f"{r['sparse']:,} | {r['sparse_gzip']:,}" if r["sparse"] else "- | -"
        print(f"| {r['label']} | {r['zeros']:.1%} | {r['accuracy']:.2%} | {r['raw']:,} | {r['gzip']:,} | {sparse} |")


if __name__ == "__main__":
    main()
