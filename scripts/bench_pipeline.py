"""Benchmark: onnxprune's whole pipeline against a plain `onnx.load` + `onnx.save` of the same file.

Requirement: "Load, build the dependency graph, remove 30% of prunable channels and save a
ResNet-50-sized model (about 100 MB of weights); print the time as a ratio to a plain
`onnx.load` + `onnx.save` of the same file.  Goal: at most 2x."

Per model, in one process and interleaved (baseline, onnxprune, baseline, onnxprune, ...):

* baseline  = onnx.load(path) + onnx.save(model, out)
* onnxprune = onnxprune.load + depgraph + plan(ratio=0.3, criterion="l1") + surgery(plan, output=out)
              + save, the API calls the command line makes: a model with external data is written
              as it goes (staged beside `out`, renamed into place by save), an inline one is saved
              by onnxprune.save;  the stages are also reported one by one
* verify    = what `apply()` adds on top of the surgery, in the command line's order:
              `check_runs()` before planning (the original's run on the verification inputs,
              which also measures the channels' activations for plan()'s structure warning), then
              onnxprune.verify.verify(original, pruned, those inputs, their reference outputs)
              (onnx.checker full check, onnxruntime on the pruned model).  Reported separately;
              it is not part of the 2x goal.  `watch` is what measuring the activations adds to
              the original's run (check_runs against a plain reference run), included in verify.

Whole process (what a user waits for), interleaved the same way, each side a fresh interpreter
from start to exit:

* baseline  = python -c 'import onnx; m = onnx.load(path); onnx.save(m, out)'
* onnxprune = onnxprune prune path -o out --ratio 0.3   (verification included)
* --help    = onnxprune --help, against python -c pass

Peak memory is measured in a fresh subprocess per model (VmHWM of /proc/self/status, reset after
the imports, minus the RSS after imports) and printed as a ratio to the weights' size.

This is not a test: it prints a markdown table.  Models are exported (tests/zoo.py, no network)
into --workdir on first use and reused afterwards.

    .venv/bin/python scripts/bench_pipeline.py [--reps 5] [--workdir /tmp/onnxprune_bench]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from benchlib import ensure_exported  # noqa: E402
CASES = [("resnet50", "dynamo"), ("resnet50", "legacy"), ("vgg11_bn", "dynamo"), ("mobilenetv2_full", "dynamo"),
         ("mobilenetv2_full", "legacy")]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def process_seconds(argv: list[str]) -> float:
    """Wall time of a fresh interpreter running `argv`, start to exit (it must succeed)."""
    t = time.perf_counter()
    subprocess.run(argv, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def whole_process(path: Path, workdir: Path, reps: int) -> dict:
    """Median of paired ratios, onnxprune prune vs a plain onnx load + save process."""
    base = [sys.executable, "-c", f"import onnx; m = onnx.load({str(path)!r}); onnx.save(m, {str(workdir / 'proc_base.onnx')!r})"]
    prune = [sys.executable, "-m", "onnxprune.cli", "prune", str(path), "-o", str(workdir / "proc_pruned.onnx"), "--ratio", "0.3"]
    process_seconds(base), process_seconds(prune)  # warm-up: page cache, .pyc files
    pairs = []
    for rep in range(reps):
        order = (base, prune) if rep % 2 == 0 else (prune, base)
        times = {id(argv): process_seconds(argv) for argv in order}
        pairs.append((times[id(base)], times[id(prune)]))
    ratios = [p / b for b, p in pairs]
    return {"base": statistics.median(b for b, _ in pairs), "prune": statistics.median(p for _, p in pairs),
            "ratio": statistics.median(ratios), "spread": (min(ratios), max(ratios))}


def help_overhead(reps: int) -> dict:
    """`onnxprune --help` against a bare interpreter, paired and interleaved (seconds)."""
    bare, helped = [sys.executable, "-c", "pass"], [sys.executable, "-m", "onnxprune.cli", "--help"]
    process_seconds(helped)
    diffs, bares = [], []
    for _ in range(reps):
        b = process_seconds(bare)
        diffs.append(process_seconds(helped) - b)
        bares.append(b)
    return {"bare": statistics.median(bares), "over": statistics.median(diffs), "spread": (min(diffs), max(diffs))}


def file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def baseline(path: Path, out: Path) -> float:
    import onnx

    t = time.perf_counter()
    model = onnx.load(str(path))
    onnx.save(model, str(out))
    elapsed = time.perf_counter() - t
    del model
    return elapsed


def pipeline(path: Path, out: Path, with_verify: bool = True) -> tuple[dict[str, float], object]:
    """The onnxprune side, stage by stage, through the API calls the command line makes (a model
    with external data is written as it goes, see PrunableModel.surgery).  Returns (times,
    PrunableModel)."""
    import onnxprune
    from onnxprune.verify import reference_outputs

    for stale in (out, out.with_name(out.name + ".data")):  # another case's output data would be counted as kept
        stale.unlink(missing_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    model = onnxprune.load(path, mapped=True)  # as the command line loads it
    times["load"] = time.perf_counter() - t
    t = time.perf_counter()
    model.depgraph  # noqa: B018 - builds the index (shape inference) and the dependency graph
    times["depgraph"] = time.perf_counter() - t
    t = time.perf_counter()
    checked = model.check_runs()  # verification's run of the original, first, as the command line makes it
    reference_s = time.perf_counter() - t
    t = time.perf_counter()
    plan = model.plan(ratio=0.3, criterion="l1")
    times["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    pruning = model.surgery(plan, output=out)
    times["surgery"] = time.perf_counter() - t
    if with_verify:
        t = time.perf_counter()
        result = pruning.verify()
        times["verify"] = reference_s + time.perf_counter() - t
        t = time.perf_counter()
        reference_outputs(str(path), checked.feeds)  # the same run without watching the activations
        times["watch"] = reference_s - (time.perf_counter() - t)
    t = time.perf_counter()
    if pruning.staged is not None:
        pruning.staged.commit()  # what PruneResult.save does with a staged output
    else:
        onnxprune.save(pruning.model, out)
    times["save"] = time.perf_counter() - t
    times["total"] = sum(v for k, v in times.items() if k not in ("verify", "watch"))
    return times, model


def peak_memory(path: Path, out: Path, mode: str) -> int:
    """Peak RSS growth (bytes) of a fresh interpreter running one side once.  ru_maxrss is not used:
    Linux carries it over from the forking parent across exec."""
    code = f"""
import resource, json, sys
sys.path.insert(0, {str(REPO / 'scripts')!r})
import onnx, onnxruntime, numpy, networkx, onnxprune, onnxprune.api, onnxprune.verify, onnx.reference
import bench_pipeline as b
from pathlib import Path
def status(key):
    with open('/proc/self/status') as f:
        return int(next(l for l in f if l.startswith(key)).split()[1]) * 1024
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset the RSS high-water mark after the imports
start = status('VmRSS:')
if {mode!r} == 'baseline':
    b.baseline(Path({str(path)!r}), Path({str(out)!r}))
else:
    b.pipeline(Path({str(path)!r}), Path({str(out)!r}), with_verify={mode == 'verify'})
peak = status('VmHWM:')
print(json.dumps(peak - start))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune_bench"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=[f"{n}:{e}" for n, e in CASES], help="model:exporter")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--process-reps", type=int, default=3, help="interleaved whole-process repetitions per model")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    import onnx

    rows = []
    for case in args.cases:
        name, exporter = case.split(":")
        path = ensure_exported(args.workdir, name, exporter)
        out_base, out_prune = args.workdir / "out_baseline.onnx", args.workdir / "out_pruned.onnx"
        # warm-up (imports, page cache, allocator)
        baseline(path, out_base)
        _, model = pipeline(path, out_prune)
        weights = sum(a.nbytes for a in model.loaded.arrays.values()) + sum(
            len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in model.model.graph.initializer if t.name not in model.loaded.arrays)
        kept_params = file_bytes(out_prune) / max(file_bytes(path), 1)
        del model
        base_t, prune_t, ratios = [], [], []
        stages: dict[str, list[float]] = {}
        for rep in range(args.reps):
            gc.collect()
            order = ("base", "prune") if rep % 2 == 0 else ("prune", "base")
            for side in order:
                if side == "base":
                    b = baseline(path, out_base)
                else:
                    times, _ = pipeline(path, out_prune)
                    for k, v in times.items():
                        stages.setdefault(k, []).append(v)
                gc.collect()
            base_t.append(b)
            prune_t.append(stages["total"][-1])
            ratios.append(stages["total"][-1] / b)
        med = {k: statistics.median(v) for k, v in stages.items()}
        mb = statistics.median(base_t)
        row = {"case": f"{name} ({exporter}{', external data' if path.with_name(path.name + '.data').is_file() else ', inline'})",
               "weights": weights, "file": file_bytes(path), "kept": kept_params, "base": mb, "prune": med["total"],
               "ratio": statistics.median(ratios), "ratio_spread": (min(ratios), max(ratios)), "stages": med,
               "verify_ratio": statistics.median(v / b for v, b in zip(stages["verify"], base_t))}
        row["process"] = whole_process(path, args.workdir, args.process_reps)
        if not args.no_memory:
            row["mem_base"] = peak_memory(path, out_base, "baseline") / weights
            row["mem_prune"] = peak_memory(path, out_prune, "prune") / weights
            row["mem_verify"] = peak_memory(path, out_prune, "verify") / weights
        rows.append(row)
        print(f"# done {case}: ratio {row['ratio']:.2f}, whole process {row['process']['ratio']:.2f}", file=sys.stderr, flush=True)
    helped = help_overhead(max(args.process_reps, 5))

    print(f"\nPipeline vs onnx.load+onnx.save, {args.reps} interleaved reps, median (ratio = median of paired ratios, [min-max]); "
          f"cpu_count={os.cpu_count()}\n")
    print("| model | weights MB | kept | onnx load+save s | onnxprune s | ratio (goal <= 2x) | load / depgraph / plan / surgery / save s | verify s (x baseline), of which watch s | peak RSS / weights: baseline / onnxprune / +verify |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["stages"]
        mem = (f"{r['mem_base']:.2f} / {r['mem_prune']:.2f} / {r['mem_verify']:.2f}" if "mem_base" in r else "-")
        ok = "ok" if r["ratio"] <= 2 else "MISSED"
        print(f"| {r['case']} | {r['weights'] / 1e6:.1f} | {r['kept']:.0%} | {r['base']:.3f} | {r['prune']:.3f} | "
              f"{r['ratio']:.2f}x [{r['ratio_spread'][0]:.2f}-{r['ratio_spread'][1]:.2f}] {ok} | "
              f"{s['load']:.3f} / {s['depgraph']:.3f} / {s['plan']:.3f} / {s['surgery']:.3f} / {s['save']:.3f} | "
              f"{s['verify']:.3f} ({r['verify_ratio']:.1f}x), {s['watch']:.3f} | {mem} |")
    print(f"\nWhole process, start to exit, verification included ({args.process_reps} interleaved pairs, median of paired ratios):\n")
    print("| model | python -c 'onnx.load + onnx.save' s | onnxprune prune --ratio 0.3 s | ratio (goal <= 3x) |")
    print("|---|---|---|---|")
    for r in rows:
        p = r["process"]
        ok = "ok" if p["ratio"] <= 3 else "MISSED"
        print(f"| {r['case']} | {p['base']:.2f} | {p['prune']:.2f} | {p['ratio']:.2f}x [{p['spread'][0]:.2f}-{p['spread'][1]:.2f}] {ok} |")
    ok = "ok" if helped["over"] <= 0.3 else "MISSED"
    print(f"\nonnxprune --help: {helped['over']:.3f} s over a bare interpreter ({helped['bare']:.3f} s) "
          f"[{helped['spread'][0]:.3f}-{helped['spread'][1]:.3f}], goal <= 0.3 s: {ok}")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
