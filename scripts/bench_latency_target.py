"""Benchmark: `--target-latency` — achieved latency against the target, and accuracy at equal latency.

1. ResNet-50 and MobileNetV2 (tests/zoo.py, random weights, dynamo export), batch 1 and 8,
   targets 0.5 and 0.7 of the original's latency, `round_to=8`, l1.  The plan is made with
   `target_latency` (the per-layer table is built on the first call per model and batch, cached
   in --workdir/cache, and its time reported apart); the pruned model is then timed again,
   independently of the allocator's own measurement, against the original: fresh sessions,
   single runs alternating between the two, each side's fastest (onnxprune.latency.latency_ratio).
   Goal: within 5% of the target.
2. The shipped digits CNN (trained), batch 64 (at batch 1 its latency is per-call overhead):
   `target_latency` F against `target_macs` with `round_to=8`, the MACs fraction found by
   bisection so that its measured latency equals what `target_latency` achieved (within 3%, or
   the closest of 7 tries).  One-shot (no fine-tuning) test accuracy of both on the 360 held-out
   images.  Goal: accuracy at least that of `target_macs`.

Not a test: prints markdown tables.  Time is bounded by few rounds; the machine is shared.

    python scripts/bench_latency_target.py [--rounds 7] [--workdir /tmp/onnxprune_bench] [--threads 0]
        [--engine ncnn] [--models resnet50 mobilenetv2_full] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from benchlib import ensure_exported  # noqa: E402


def measured_fraction(pruned, original_path: Path, batch: int, threads: int, rounds: int, engine: str = "onnxruntime") -> float:
    """Independent re-measurement: pruned vs original, fresh sessions, interleaved rounds."""
    import onnxprune
    from onnxprune.latency import Engine, _feeds, latency_ratio, timed_session

    loaded = onnxprune.load(original_path)
    index = loaded.index
    feeds = _feeds(index, sorted(index.graph_inputs), batch)
    engine = Engine(engine)
    original = timed_session(loaded.model, threads, engine, feeds, index.external)
    return latency_ratio(timed_session(pruned, threads, engine, feeds), original, feeds, rounds)


def table_one(args) -> list[dict]:
    import onnxprune

    rows = []
    for name in args.models:
        path = ensure_exported(args.workdir, name, "dynamo")
        for batch in args.batches:
            for target in (0.5, 0.7):
                model = onnxprune.load(path, mapped=True)
                start = time.perf_counter()
                plan = model.plan(target_latency=target, latency_batch=batch, latency_threads=args.threads,
                                  latency_cache=args.workdir / "cache", round_to=8, latency_engine=args.engine)
                seconds = time.perf_counter() - start
                result = model.apply(plan)
                achieved = measured_fraction(result.model, path, batch, args.threads, args.rounds, args.engine)
                rows.append({"model": name, "batch": batch, "target": target, "achieved": achieved,
                             "allocator": plan.options["measured_latency"], "seconds": seconds,
                             "macs": result.after.macs / result.before.macs})
                print(f"# {name} b{batch} {target}: {achieved:.3f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return rows


def accuracy(model, x: np.ndarray, labels: np.ndarray) -> float:
    from onnxprune.runtime import weightless_session

    session = weightless_session(model)
    name = session.get_inputs()[0].name
    return float(np.mean(np.argmax(session.run(None, {name: x})[0], axis=1) == labels))


def table_two(args) -> list[dict]:
    import onnxprune

    path = REPO / "models" / "digits_cnn.onnx"
    calib = np.load(REPO / "models" / "digits_calib.npz")
    x, labels = calib["x"], calib["labels"]
    batch = 64
    rows = []
    for target in (0.5, 0.7):
        model = onnxprune.load(path)
        plan = model.plan(target_latency=target, latency_batch=batch, latency_threads=args.threads,
                          latency_cache=args.workdir / "cache", round_to=8, latency_engine=args.engine)
        by_latency = model.apply(plan).model
        lat = measured_fraction(by_latency, path, batch, args.threads, args.rounds, args.engine)
        low, high, tries = 0.05, 1.0, []
        for _ in range(7):
            macs = (low + high) / 2
            candidate = onnxprune.load(path).prune(target_macs=macs, round_to=8).model
            got = measured_fraction(candidate, path, batch, args.threads, args.rounds, args.engine)
            tries.append((abs(got - lat), macs, got, candidate))
            if abs(got - lat) <= 0.03 * lat:
                break
            low, high = (macs, high) if got < lat else (low, macs)
        _, macs, macs_lat, by_macs = min(tries, key=lambda t: t[0])
        rows.append({"target": target, "lat": lat, "lat_acc": accuracy(by_latency, x, labels),
                     "lat_macs": plan.summary["macs"][1] / plan.summary["macs"][0], "macs": macs, "macs_lat": macs_lat,
                     "macs_acc": accuracy(by_macs, x, labels), "original_acc": accuracy(model.model, x, labels)})
        print(f"# digits {target}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune_bench"))
    parser.add_argument("--rounds", type=int, default=7, help="the independent measurement makes at least this many "
                        "alternating pairs of runs (more while under 3 s)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1: on a shared "
                        "machine, several threads wait on each other whenever another process takes a core)")
    parser.add_argument("--engine", choices=("onnxruntime", "ncnn"), default="onnxruntime",
                        help="where latency is measured (--latency-engine); ncnn: pnnx-converted, fp32")
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenetv2_full"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.skip_models:
        rows = table_one(args)
        print("\n| model | batch | target | achieved (independent) | error | allocator's measurement | MACs kept | plan time s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            err = r["achieved"] / r["target"] - 1
            ok = "ok" if abs(err) <= 0.05 else "MISSED"
            print(f"| {r['model']} | {r['batch']} | {r['target']:.2f} | {r['achieved']:.3f} | {err:+.1%} {ok} | "
                  f"{r['allocator']:.3f} | {r['macs']:.1%} | {r['seconds']:.0f} |")
    if not args.skip_digits:
        rows = table_two(args)
        print("\n| digits, batch 64 | latency kept | MACs kept | test accuracy (one-shot) |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| original | 100% | 100% | {r['original_acc']:.2%} |")
            print(f"| --target-latency {r['target']} --round-to 8 | {r['lat']:.1%} | {r['lat_macs']:.1%} | {r['lat_acc']:.2%} |")
            ok = "ok" if r["lat_acc"] >= r["macs_acc"] else "MISSED"
            print(f"| --target-macs {r['macs']:.3f} --round-to 8 | {r['macs_lat']:.1%} | {r['macs']:.1%} | {r['macs_acc']:.2%} ({ok}) |")


if __name__ == "__main__":
    main()
