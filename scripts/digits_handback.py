"""End-to-end proof of the hand-back: the digits CNN (models/digits_cnn.pt, trained by
scripts/digits.py) is exported, pruned to 50% of MACs, handed back to PyTorch, fine-tuned and
re-exported; one-shot and iterative (prune-finetune loop) side by side.

    python scripts/digits_handback.py [--target-macs 0.5] [--epochs 10]

Prints a markdown table: accuracy on the fixed test split, parameters, MACs and onnxruntime
latency (batch 1, median of interleaved runs in this process) for each stage.  Needs torch and
scikit-learn.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402
from onnxprune.torch import apply_plan, export, iterative_prune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def latency_ms(sessions: dict[str, object], x: np.ndarray, rounds: int = 200) -> dict[str, float]:
    """Median latency per session, runs interleaved so machine noise hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"x": x})
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v[rounds // 10:]) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (split over the iterative steps)")
    parser.add_argument("--steps", type=int, default=4, help="iterative prune-finetune steps")
    parser.add_argument("--criterion", default="l1")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = digits.load_digits_split()
    example = (torch.from_numpy(x_test[:2]),)

    original = digits.make_model()
    original.load_state_dict(torch.load(ROOT / "models" / "digits_cnn.pt"))
    original.eval()

    def evaluate(m):
        return digits.accuracy_torch(m, x_test, y_test)

    stages: dict[str, torch.nn.Module] = {"original": original}
    tmp = Path(tempfile.mkdtemp())
    model = onnxprune.load(export(original, example, tmp / "original.onnx"))
    plan = model.plan(criterion=args.criterion, target_macs=args.target_macs)
    pruned = apply_plan(copy.deepcopy(original), plan, example)
    stages["pruned, no fine-tuning"] = copy.deepcopy(pruned)
    stages["one-shot prune + fine-tune"] = digits.train(pruned, x_train, y_train, epochs=args.epochs, lr=1e-3)

    per_step = max(1, args.epochs // args.steps)
    iterative, history = iterative_prune(copy.deepcopy(original), example,
                                         finetune=lambda m, step: digits.train(m, x_train, y_train, epochs=per_step, lr=1e-3, seed=step),
                                         evaluate=evaluate, target_macs=args.target_macs, steps=args.steps,
                                         criterion=args.criterion)
    stages[f"iterative ({args.steps} steps) + fine-tune"] = iterative

    sessions, rows = {}, []
    for name, module in stages.items():
        path = export(module, example, tmp / f"{len(sessions)}.onnx")
        info = onnxprune.load(path).inspect()
        sessions[name] = make_session(onnxprune.load(path).model, threads=1)
        rows.append((name, evaluate(module), info["params"], info["macs"]))
    latency = latency_ms(sessions, x_test[:1])
    base = rows[0]
    print(f"digits CNN, target {args.target_macs:.0%} of MACs, criterion {args.criterion}, {args.epochs} fine-tuning epochs\n")
    print("| stage | test accuracy | params | MACs | onnxruntime latency, batch 1 (ms) | speedup |")
    print("|---|---|---|---|---|---|")
    for name, acc, params, macs in rows:
        print(f"| {name} | {acc:.2%} | {params:,} ({params / base[2]:.0%}) | {macs:,} ({macs / base[3]:.0%}) | "
              f"{latency[name]:.3f} | {latency['original'] / latency[name]:.2f}x |")
    print("\niterative schedule (linear):")
    for record in history:
        print(f"  step {record.step}: target {record.target_macs:.0%} of MACs, reached {record.macs:.0%}, accuracy {record.score:.2%}")


if __name__ == "__main__":
    main()
