"""Which channel rounding do packed kernels favour? (README, "Channel rounding for ncnn").

    python scripts/bench_round_to.py [--models mobilenetv2_full resnet50] [--runs 15]

Each model (tests/zoo.py benchmark models, 224x224, exported once into --workdir) is pruned to
50% of MACs (l1) with --round-to 1, 4 and 8; all four files are then timed side by side with
onnxprune's bench (1 thread, batch 1, interleaved) in onnxruntime and ncnn fp32.  Prints the
speedup of each pruned model against the unpruned one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ensure_exported  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.deploy.bench import bench  # noqa: E402

ROUNDINGS = (1, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["mobilenetv2_full", "resnet50"])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "onnxprune_bench"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    rows = []
    for name in args.models:
        original = ensure_exported(workdir, name, "dynamo")
        model = onnxprune.load(original)
        paths = [original]
        for rounding in ROUNDINGS:
            result = model.prune(target_macs=0.5, round_to=rounding)
            paths.append(onnxprune.save(result.model, workdir / f"{name}_round{rounding}.onnx", external_data=True))
        timings = bench(paths, batches=(1,), threads=1, runs=args.runs, use_ncnn=True)
        for engine in ("ncnn fp32", "onnxruntime"):
            by_file = {t.model: t for t in timings if t.engine == engine}
            if len(by_file) == len(paths):
                rows.append((name, engine, [by_file[p.name].speedup for p in paths[1:]]))
    print("| model, engine | " + " | ".join(f"`--round-to {r}`" for r in ROUNDINGS) + " |")
    print("|---|" + "---|" * len(ROUNDINGS))
    for name, engine, speedups in rows:
        print(f"| {name}, {engine} | " + " | ".join(f"{s:.2f}x" for s in speedups) + " |")


if __name__ == "__main__":
    main()
