"""Benchmark of the sensitivity analysis (issue: "total analysis time divided by (number of
candidates x time of one plain evaluation pass over the data); goal at most 1.2; also the speedup
from 2 worker processes").

    python scripts/bench_sensitivity.py [--images 256] [--size 224] [--groups 6] [--ratios 0.3,0.6]

A ResNet-50 (tests/zoo.py) is exported once into --workdir.  A plain evaluation pass is the
original model run over the same images with the same batch size in one warmed-up onnxruntime
session (the best of two passes).
The analysis is timed end to end (masked-model build, session, reference pass, all candidates);
`--groups` limits how many groups are analysed so the run fits in minutes on a small machine
(the ratio does not depend on it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ensure_exported  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.runtime import batches, make_session  # noqa: E402
from onnxprune.sensitivity import analyse  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--groups", type=int, default=6, help="analyse only the first N prunable groups")
    parser.add_argument("--ratios", default="0.3,0.6")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "onnxprune_bench"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    path = ensure_exported(workdir, "resnet50", "dynamo")
    model = onnxprune.load(path)
    feeds = {"x": np.random.default_rng(0).standard_normal((args.images, 3, args.size, args.size)).astype(np.float32)}
    ratios = [float(r) for r in args.ratios.split(",")]
    selected = model.groups[: args.groups]
    model.depgraph.groups  # build once, outside the timings
    wanted = {g.id for g in selected}
    for group in model.depgraph.groups:
        if group.id not in wanted and group.prunable:
            group.blocked.append("not selected for this benchmark")

    session = make_session(model.model)

    def plain_pass() -> float:
        start = time.perf_counter()
        for chunk in batches(feeds, args.batch):
            session.run(None, chunk)
        return time.perf_counter() - start

    plain_pass()  # warm-up: the first pass also sizes onnxruntime's memory arena
    plain = min(plain_pass(), plain_pass())
    candidates = len(selected) * len(ratios)
    rows = []
    for workers in (1, 2):
        start = time.perf_counter()
        analyse(model, feeds, metric="top1-agreement", ratios=ratios, workers=workers, batch=args.batch,
                out=workdir / f"sens_bench_{workers}_{time.time_ns()}.json")
        rows.append((workers, time.perf_counter() - start))
    print(f"ResNet-50, {args.images} images {args.size}x{args.size}, batch {args.batch}, {len(selected)} groups x "
          f"{len(ratios)} ratios = {candidates} candidates; one plain evaluation pass: {plain:.2f} s\n")
    print("| workers | analysis time (s) | time / (candidates x plain pass) (goal <= 1.2) | speedup vs 1 worker |")
    print("|---|---|---|---|")
    for workers, seconds in rows:
        print(f"| {workers} | {seconds:.1f} | {seconds / (candidates * plain):.2f} | {rows[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
