"""Benchmark: onnxruntime CPU latency of pruned models against the ideal MACs ratio.

Requirement: "On a ResNet-50-like and a MobileNetV2-like model at 224x224, prune to 50% of MACs
and measure onnxruntime CPU latency at batch 1 and batch 8 (median of several runs, in one process,
original and pruned side by side).  Report the achieved speedup against the ideal MACs ratio.
Goal: speedup at least 0.8 of the MACs ratio."

For each model and batch size every session (the original and each pruned variant) is warmed up,
then the sessions are run round-robin (original, variant 1, variant 2, ..., original, ...) so that
noise on a shared machine hits all of them alike.  Speedup is the median of the per-round ratios
original / pruned.  MACs ratio = original MACs / pruned MACs (onnxprune.cost, per sample).

Variants (all l1 importance, target_macs=0.5): uniform allocation; uniform with round_to=8;
global ranking; global ranking with round_to=8.

This is not a test: it prints a markdown table.  Models are exported (tests/zoo.py, dynamo
exporter, no network) into --workdir on first use and reused afterwards.

    .venv/bin/python scripts/bench_latency.py [--runs 9] [--threads 2] [--workdir /tmp/onnxprune_bench]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from benchlib import ensure_exported  # noqa: E402
MODELS = ("resnet50", "mobilenetv2_full")
VARIANTS = {
    "uniform": {},
    "uniform, round_to=8": {"round_to": 8},
    "global": {"global_ranking": True},
    "global, round_to=8": {"global_ranking": True, "round_to": 8},
}


def session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune_bench"))
    parser.add_argument("--runs", type=int, default=9, help="timed rounds per (model, batch)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--exporter", default="dynamo")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    import onnxruntime as ort

    import onnxprune

    rows = []
    for name in args.models:
        path = ensure_exported(args.workdir, name, args.exporter)
        model = onnxprune.load(path)
        candidates = {"original": (model.model.SerializeToString(), 1.0, 0.0)}
        for label in args.variants:
            t = time.perf_counter()
            result = model.apply(model.plan(criterion="l1", target_macs=0.5, **VARIANTS[label]))
            macs_before, macs_after = result.before.macs, result.after.macs
            candidates[label] = (result.model.SerializeToString(), macs_before / macs_after, result.report.max_rel_error)
            print(f"# {name} {label}: MACs kept {macs_after / macs_before:.1%}, prune+verify {time.perf_counter() - t:.1f}s",
                  file=sys.stderr, flush=True)
        for batch in args.batches:
            sessions = {label: session(blob, args.threads) for label, (blob, _, _) in candidates.items()}
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            feed_name = sessions["original"].get_inputs()[0].name
            times: dict[str, list[float]] = {label: [] for label in sessions}
            for i in range(args.warmup + args.runs):
                for label, sess in sessions.items():
                    t = time.perf_counter()
                    sess.run(None, {feed_name: x})
                    if i >= args.warmup:
                        times[label].append(time.perf_counter() - t)
            for label in args.variants:
                speedups = [o / p for o, p in zip(times["original"], times[label])]
                macs_ratio = candidates[label][1]
                rows.append({"model": name, "variant": label, "batch": batch, "macs_ratio": macs_ratio,
                             "orig": quartiles(times["original"]), "pruned": quartiles(times[label]),
                             "speedup": statistics.median(speedups)})
            print(f"# {name} batch {batch} done", file=sys.stderr, flush=True)

    print(f"\nonnxruntime {ort.__version__} CPUExecutionProvider, intra_op_num_threads={args.threads}, inter_op=1, "
          f"sequential, ORT_ENABLE_ALL; {args.runs} interleaved rounds after {args.warmup} warm-up; "
          f"exporter={args.exporter}; l1, target_macs=0.5; cpu_count={os.cpu_count()}\n")
    print("| model | allocation | batch | MACs ratio | original ms median [IQR] | pruned ms median [IQR] | speedup | speedup / MACs ratio (goal >= 0.8) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, p = r["orig"], r["pruned"]
        frac = r["speedup"] / r["macs_ratio"]
        print(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['macs_ratio']:.2f} | "
              f"{o[1] * 1e3:.1f} [{o[0] * 1e3:.1f}-{o[2] * 1e3:.1f}] | {p[1] * 1e3:.1f} [{p[0] * 1e3:.1f}-{p[2] * 1e3:.1f}] | "
              f"{r['speedup']:.2f}x | {frac:.2f} {'ok' if frac >= 0.8 else 'MISSED'} |")


if __name__ == "__main__":
    main()
