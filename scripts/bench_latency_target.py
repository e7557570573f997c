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
   bisection (first try at target_latency's MACs fraction) so that its measured latency equals
   what `target_latency` achieved (within 3%, or the closest of 7 tries).  One-shot (no fine-tuning) test accuracy of both on the 360 held-out
   images.  Goal: accuracy at least that of `target_macs`.
3. With `--real yolo,det[,rec]`: the real pretrained models of scripts/bench_recovery.py (its
   tasks, calibration and evaluation data, disjoint, and its metric: recall of the original's
   boxes for YOLOv8n and PP-OCRv4 det, character accuracy for rec), `--real-batch` (default 1),
   targets 0.5 and 0.7 (`--real-targets`): `target_latency` F against `target_macs` M with `round_to=8`, M bisected
   as in 2 until it times the same as the target_latency model, the two timed against each other
   (single runs alternating; one measurement between the two compared instead of two against the
   original), then each side again against the original.  Both sides rank with the same activation
   criterion on the calibration data (computed once) and are scored plain and after
   `reconstruct` on the calibration data (the recovery benchmark's best row).  Goal: metric at least that of
   `target_macs`.

Not a test: prints markdown tables.  Time is bounded by few rounds; the machine is shared.

    python scripts/bench_latency_target.py [--rounds 7] [--workdir /tmp/onnxprune_bench] [--threads 0]
        [--engine ncnn] [--models resnet50 mobilenetv2_full] [--batches 1 8]
        [--real yolo,det] [--real-targets 0.5 0.7] [--real-batch 1] [--calib N] [--eval N] [--no-reconstruct]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
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


def macs_at_latency(prune: Callable[[float], object], latency: float, measure: Callable[[object], float],
                    tries: int = 7, first: float | None = None):
    """The `target_macs` whose measured latency matches `latency`: bisection on the MACs fraction
    (`prune(macs)` -> pruned model, `measure(model)` -> its latency fraction) until within 3%, or
    the closest of `tries`; the first try at `first` (the other side's MACs fraction: one noisy
    measurement far from the answer then cannot send the search away from it), else mid-range.
    Returns (macs fraction, its measured latency, the object prune made)."""
    low, high, found = 0.05, 1.0, []
    for attempt in range(tries):
        macs = first if attempt == 0 and first is not None else (low + high) / 2
        candidate = prune(macs)
        got = measure(candidate)
        found.append((abs(got - latency), macs, got, candidate))
        print(f"#   target_macs {macs:.4f}: latency {got:.3f} (aiming at {latency:.3f})", file=sys.stderr, flush=True)
        if abs(got - latency) <= 0.03 * latency:
            break
        low, high = (macs, high) if got < latency else (low, macs)
    _, macs, got, candidate = min(found, key=lambda t: t[0])
    return macs, got, candidate


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
        macs, macs_lat, by_macs = macs_at_latency(lambda m: onnxprune.load(path).prune(target_macs=m, round_to=8).model,
                                                  lat, lambda m: measured_fraction(m, path, batch, args.threads, args.rounds, args.engine),
                                                  first=plan.summary["macs"][1] / plan.summary["macs"][0])
        rows.append({"target": target, "lat": lat, "lat_acc": accuracy(by_latency, x, labels),
                     "lat_macs": plan.summary["macs"][1] / plan.summary["macs"][0], "macs": macs, "macs_lat": macs_lat,
                     "macs_acc": accuracy(by_macs, x, labels), "original_acc": accuracy(model.model, x, labels)})
        print(f"# digits {target}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def table_real(args) -> list[dict]:
    """Section 3: target_latency against target_macs at equal measured latency on bench_recovery's
    real pretrained models, same criterion and recovery on both sides, its metric on its evaluation data."""
    import bench_recovery  # its tasks need the real-model packages, only for --real

    import onnxprune
    from onnxprune.importance import activation_criterion

    rows = []
    folder = Path(tempfile.mkdtemp(prefix="bench_latency_real_", dir=args.workdir))
    for key in args.real.split(","):
        n_calib = args.calib or bench_recovery.DEFAULT_SAMPLES[key]
        task = bench_recovery.TASKS[key](n_calib, args.eval or n_calib, folder)
        pm = onnxprune.load(task.model_path)
        feeds = {pm.index.model.graph.input[0].name: task.calib}
        start = time.perf_counter()
        criterion = activation_criterion(pm.depgraph, feeds)  # one calibration pass, shared by every plan below
        print(f"# {task.name}: activation criterion {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        baseline = task.score(task.model_path)
        for target in args.real_targets:
            rows.append(real_row(args, task, pm, criterion, feeds, target) | {"baseline": baseline})
            print(f"# {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def real_row(args, task, pm, criterion, feeds: dict, target: float) -> dict:
    """One target of section 3: the target_latency plan; the target_macs plan bisected until it
    times the same as that one head to head (within 3%, or the closest of 7); each side's latency
    against the original; each scored plain and reconstructed."""
    from onnxprune.latency import Engine, _feeds, latency_ratio, timed_session

    path, batch = task.model_path, args.real_batch
    engine = Engine(args.engine)
    sample = _feeds(pm.index, sorted(pm.index.graph_inputs), batch)

    def fraction(result) -> float:
        return measured_fraction(result.model, path, batch, args.threads, args.rounds, args.engine)

    start = time.perf_counter()
    lat_plan = pm.plan(criterion, target_latency=target, latency_batch=batch, latency_threads=args.threads,
                       latency_cache=args.workdir / "cache", round_to=8, latency_engine=args.engine)
    plan_seconds = time.perf_counter() - start
    lat_result = pm.apply(lat_plan)
    lat_session = timed_session(lat_result.model, args.threads, engine, sample)

    def by_macs(macs: float):
        plan = pm.plan(criterion, target_macs=macs, round_to=8)
        return plan, pm.apply(plan)

    def against_latency_side(pair) -> float:
        """The candidate's latency over the target_latency model's, timed head to head: one noisy
        measurement between the two compared, rather than two against the original."""
        return latency_ratio(timed_session(pair[1].model, args.threads, engine, sample), lat_session, sample, args.rounds)

    print(f"# {task.name} {target}: target_latency plan {plan_seconds:.0f} s", file=sys.stderr, flush=True)
    lat_macs = lat_result.after.macs / lat_result.before.macs
    macs, head_to_head, (macs_plan, macs_result) = macs_at_latency(by_macs, 1.0, against_latency_side, first=lat_macs)
    row = {"model": task.name, "target": target, "plan_s": plan_seconds, "allocator": lat_plan.options["measured_latency"],
           "lat": fraction(lat_result), "lat_macs": lat_macs,
           "macs": macs, "macs_lat": fraction(macs_result), "macs_macs": macs_result.after.macs / macs_result.before.macs,
           "head_to_head": head_to_head,
           "lat_plain": task.score(lat_result.model), "macs_plain": task.score(macs_result.model)}
    if args.reconstruct:
        for side, plan in (("lat", lat_plan), ("macs", macs_plan)):
            result = pm.apply(plan, feeds, reconstruct=True)
            rec = result.recovery
            row |= {f"{side}_rec": task.score(result.model), f"{side}_rec_s": rec.reconstruction.seconds,
                    f"{side}_dropped": rec.reconstructed is None}
    return row


def verdict(by_latency: float, by_macs: float) -> str:
    """The two metrics and whether target_latency's is at least target_macs's (the goal)."""
    outcome = "met, equal" if by_latency == by_macs else "met" if by_latency > by_macs else f"MISSED by {by_macs - by_latency:.4f}"
    return f"{by_latency:.4f} / {by_macs:.4f} ({outcome})"


def print_real(rows: list[dict], reconstruct: bool) -> None:
    print("\n| model | target | --target-latency: latency (allocator's own measurement), MACs | --target-macs M --round-to 8 at that latency: M, latency, MACs "
          "| latency, target-macs / target-latency (head to head) | metric, activation: target-latency / target-macs "
          + ("| metric, activation + reconstruct: target-latency / target-macs; reconstruction s " if reconstruct else "") + "|")
    print("|---|---|---|---|---|---|" + ("---|" if reconstruct else ""))
    for r in rows:
        line = (f"| {r['model']} (original {r['baseline']:.4f}) | {r['target']:.1f} | {r['lat']:.1%} ({r['allocator']:.1%}), {r['lat_macs']:.1%} "
                f"| {r['macs']:.3f}, {r['macs_lat']:.1%}, {r['macs_macs']:.1%} | {r['head_to_head']:.3f} "
                f"| {verdict(r['lat_plain'], r['macs_plain'])} |")
        if reconstruct:
            dropped = "".join(f" [{side}: reconstruction dropped, worse]" for side in ("lat", "macs") if r[f"{side}_dropped"])
            line += (f" {verdict(r['lat_rec'], r['macs_rec'])}{dropped}; {r['lat_rec_s']:.0f} s / {r['macs_rec_s']:.0f} s |")
        print(line)


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
    parser.add_argument("--real", default="", help="comma-separated tasks of scripts/bench_recovery.py (yolo, det, rec, "
                        "digits) for section 3: target_latency against target_macs at equal latency on real models")
    parser.add_argument("--real-targets", nargs="+", type=float, default=[0.5, 0.7], help="section 3's latency targets")
    parser.add_argument("--real-batch", type=int, default=1, help="batch at which section 3 measures latency (default 1)")
    parser.add_argument("--calib", type=int, help="section 3's calibration samples (default: bench_recovery's per task)")
    parser.add_argument("--eval", type=int, help="section 3's evaluation samples (default: as --calib)")
    parser.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                        help="section 3 without its activation + reconstruct rows (plain activation only)")
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
    if args.real:
        print_real(table_real(args), args.reconstruct)


if __name__ == "__main__":
    main()
