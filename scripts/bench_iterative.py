"""The iterative prune-recover loop (`onnxprune iterate`) against one-shot pruning at the same
MACs, side by side in one run, on the tasks of bench_recovery.py (same models, data and metrics,
calibration and evaluation disjoint):

- one-shot: `prune --target-macs F --data CALIB --reconstruct` (activation criterion);
- iterative: `iterate --target-macs F --steps K --data CALIB` (activation criterion, reconstruction
  after every step, each step ranked on the current pruned model);
- with --distill-epochs E: one-shot + E*K epochs of distillation, against iterative with E epochs
  of distillation after every step (the same number of distillation steps in all).

Run: OMP_NUM_THREADS=1 python scripts/bench_iterative.py --models digits,rec --fractions 0.5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import onnxprune  # noqa: E402
from bench_recovery import Digits, Rec  # noqa: E402
from onnxprune.finetune import FinetuneOptions, finetune  # noqa: E402
from onnxprune.iterative import IterativeOptions, iterate  # noqa: E402


def bench(task, fractions: list[float], steps: int, epochs: int, lr: float) -> list[dict]:
    pm = onnxprune.load(task.model_path)
    name = pm.index.model.graph.input[0].name
    feeds = {name: task.calib}
    print(f"\n{task.name}: baseline {task.metric} {task.score(task.model_path):.4f} "
          f"({len(task.calib)} calibration, {len(task.eval_x)} evaluation samples)", flush=True)
    print(f"| model | MACs kept | method | {task.metric} | seconds |\n|---|---|---|---|---|")
    rows = []
    for fraction in fractions:
        t = time.perf_counter()
        plan = pm.plan("activation", feeds, target_macs=fraction)
        result = pm.apply(plan, feeds, reconstruct=True)
        one_shot, macs = result.model, result.after.macs / result.before.macs
        rows.append((task.name, macs, "one-shot + reconstruct", task.score(one_shot), time.perf_counter() - t))
        print(_fmt(rows[-1]), flush=True)
        if epochs:
            t = time.perf_counter()
            distilled = finetune(one_shot, pm.model, feeds, FinetuneOptions(epochs=epochs * steps, lr=lr)).model
            rows.append((task.name, macs, f"one-shot + reconstruct + distill ({epochs * steps} epochs)", task.score(distilled),
                         rows[-1][4] + time.perf_counter() - t))
            print(_fmt(rows[-1]), flush=True)
        variants = [("reconstruct", None)] + ([("reconstruct + distill", FinetuneOptions(epochs=epochs, lr=lr))] if epochs else [])
        for label, distill in variants:
            t = time.perf_counter()
            it = iterate(pm, feeds, IterativeOptions(target_macs=fraction, steps=steps, criterion="activation",
                                                             distill=distill))
            suffix = f" ({epochs} epochs per step)" if distill else ""
            rows.append((task.name, it.steps[-1].macs, f"iterative, {steps} steps + {label}{suffix}", task.score(it.model),
                         time.perf_counter() - t))
            print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(row: tuple) -> str:
    model, macs, method, score, seconds = row
    return f"| {model} | {macs:.1%} | {method} | {score:.4f} | {seconds:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,rec")
    parser.add_argument("--fractions", default="0.5", help="fractions of MACs kept (comma-separated)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--calib", type=int, default=128, help="calibration samples (rec: lines)")
    parser.add_argument("--eval", type=int, default=128, help="evaluation samples (rec: lines)")
    parser.add_argument("--distill-epochs", type=int, default=0, help="distillation epochs per iterative step (0: none)")
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            task = Digits(args.calib, args.eval) if key == "digits" else Rec(args.calib, args.eval, Path(tmp))
            bench(task, fractions, args.steps, args.distill_epochs, args.lr)


if __name__ == "__main__":
    main()
