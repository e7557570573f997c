"""Benchmark of the deployment path: prune, then quantize, then measure.

For the digits CNN (real data; pruned to 50% of MACs with onnxprune.torch.prune, round_to=8, and fine-tuned with digits.train)
and a MobileNetV2-like model at 224x224 (tests/zoo.py, random weights, random calibration data;
pruned without fine-tuning), prints one markdown table per model:

    original fp32 | original int8 | pruned fp32 | pruned int8, int8 with and without float first/last layers

Columns: MACs; accuracy on the digits test split (MobileNetV2: none, the weights are random);
fidelity of each int8 model to its own fp32 model (top-1 agreement, max abs diff); onnxruntime
latency at batch 1 (one thread, median of interleaved rounds, speedup against original fp32);
ncnn fp32 and fp16 latency of the float models (pnnx conversion; quantized ONNX does not go to
ncnn: see the README for ncnn's own int8 tools).  int8: onnxruntime static QDQ quantization,
per-channel int8 weights, uint8 activations, MinMax calibration on 256 training images (digits) or
32 random inputs (MobileNetV2); fidelity and accuracy are measured on held-out inputs.

Goal reported against: pruned + int8 at least 2x faster than original fp32 in onnxruntime at
batch 1, with at most 1 point of accuracy lost on digits after fine-tuning.

    .venv/bin/python scripts/bench_deploy.py [--runs 30] [--epochs 10] [--workdir /tmp/onnxprune_deploy]

Needs torch and scikit-learn (`pip install -e .[torch,test]`); pnnx and ncnn for the ncnn columns.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

import onnxprune  # noqa: E402
from onnxprune.cost import total_macs  # noqa: E402
from onnxprune.deploy.bench import bench  # noqa: E402
from onnxprune.deploy.quantize import fidelity, quantize_model  # noqa: E402
from onnxprune.graph import ModelIndex  # noqa: E402
from onnxprune.load import load_model  # noqa: E402


def float_models(name: str, workdir: Path, epochs: int, round_to: int) -> tuple[Path, Path, dict, dict, np.ndarray | None]:
    """(original.onnx, pruned.onnx, calibration feeds, evaluation feeds, evaluation labels)."""
    import torch

    from onnxprune.torch import export, prune

    torch.manual_seed(0)
    torch.set_num_threads(1)
    if name == "digits":
        import digits

        x_train, y_train, x_test, y_test = digits.load_digits_split()
        module = digits.make_model()
        module.load_state_dict(torch.load(REPO / "models" / "digits_cnn.pt"))
        example = (torch.from_numpy(x_test[:2]),)
        pruned, _ = prune(copy.deepcopy(module).eval(), example, target_macs=0.5, round_to=round_to)
        digits.train(pruned, x_train, y_train, epochs=epochs, lr=1e-3)
        calib, evaluation, labels = {"x": x_train[:256]}, {"x": x_test}, y_test
    else:
        import zoo

        module, example = zoo.BENCH_MODELS["mobilenetv2_full"]()
        pruned, _ = prune(copy.deepcopy(module), example, target_macs=0.5, round_to=round_to)
        rng = np.random.default_rng(0)
        calib = {"x": rng.standard_normal((32, 3, 224, 224)).astype(np.float32)}
        evaluation, labels = {"x": rng.standard_normal((32, 3, 224, 224)).astype(np.float32)}, None
    original = export(module.eval(), example, workdir / f"{name}_fp32.onnx")
    input_name = onnxprune.load(original).model.graph.input[0].name  # the exporter names it after forward()'s argument
    calib, evaluation = {input_name: calib["x"]}, {input_name: evaluation["x"]}
    return original, export(pruned.eval(), example, workdir / f"{name}_pruned_fp32.onnx"), calib, evaluation, labels


def run(name: str, workdir: Path, runs: int, epochs: int, round_to: int) -> None:
    original, pruned, calib, evaluation, labels = float_models(name, workdir, epochs, round_to)
    rows: dict[str, tuple[Path, Path]] = {"original fp32": (original, original), "pruned fp32": (pruned, pruned)}
    for base_label, base in (("original", original), ("pruned", pruned)):
        model = onnxprune.load(base).model
        for keep, suffix in (([], "int8"), (["first", "last"], "int8, first/last float")):
            quantized, _ = quantize_model(model, calib, per_channel=True, fmt="qdq", keep_float=keep)
            path = onnxprune.save(quantized, workdir / f"{name}_{base_label}_{'int8' if not keep else 'int8_ends'}.onnx")
            rows[f"{base_label} {suffix}"] = (path, base)
    order = ["original fp32", "original int8", "original int8, first/last float",
             "pruned fp32", "pruned int8", "pruned int8, first/last float"]
    use_ncnn = all(importlib.util.find_spec(m) for m in ("pnnx", "ncnn"))
    timings = bench([rows[k][0] for k in order], (1,), threads=1, runs=runs, use_ncnn=use_ncnn)
    by = {(t.model, t.engine): t for t in timings}
    base_macs = total_macs(ModelIndex.build(onnxprune.load(original).model))
    print(f"\n### {name}\n")
    print("| model | MACs | accuracy | int8 vs own fp32: top-1 agreement, max abs diff | onnxruntime ms (speedup) | ncnn fp32 ms | ncnn fp16 ms |")
    print("|---|---|---|---|---|---|---|")
    for label in order:
        path, base = rows[label]
        float_model = onnxprune.load(base).model
        f = fidelity(float_model, load_model(path).model, evaluation, labels)
        macs = total_macs(ModelIndex.build(float_model))
        accuracy = f"{f.accuracy_after:.2%}" if f.accuracy_after is not None else "-"
        agreement = "-" if path == base else f"{f.top1_agreement:.2%}, {f.max_abs_diff:.3g}"
        ort = by[(path.name, "onnxruntime")]
        cells = [by.get((path.name, e)) for e in ("ncnn fp32", "ncnn fp16")]
        ncnn_cells = [f"{c.median_ms:.3f} ({c.speedup:.2f}x)" if c and c.median_ms else "-" for c in cells]
        print(f"| {label} | {macs / base_macs:.0%} | {accuracy} | {agreement} | {ort.median_ms:.3f} ({ort.speedup:.2f}x) | "
              f"{' | '.join(ncnn_cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune_deploy"))
    parser.add_argument("--runs", type=int, default=30, help="timed interleaved rounds")
    parser.add_argument("--epochs", type=int, default=10, help="digits fine-tuning epochs after pruning")
    parser.add_argument("--models", nargs="*", default=["digits", "mobilenetv2"])
    parser.add_argument("--round-to", type=int, default=8, help="kept channel counts multiple of N (default 8: odd "
                        "counts make pruned MobileNetV2 slower than the original in onnxruntime)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        run(name, args.workdir, args.runs, args.epochs, args.round_to)


if __name__ == "__main__":
    main()
