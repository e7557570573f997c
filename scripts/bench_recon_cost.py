"""What `--reconstruct` costs, side by side with what it is measured against: reconstruction time
over one pass of the same calibration data through the original model (goal: at most 3x), and the
peak memory of the process at two calibration sizes (goal: independent of the number of samples).

Each (model, samples) row runs in its own process, so that its peak RSS (VmHWM) is its own: load,
plan (l1, --target-macs 0.75), apply with reconstruction; the pass is timed in that process too
(best of 2, session made beforehand, same batch size as reconstruction).  The calibration data
itself (held by the caller) is reported beside the peak: it is the part that has to grow.  On a
shared machine the wall-time ratio moves with the load between the pass and the reconstruction;
the CPU-time ratio (process CPU time of reconstruct over that of one pass) moves less.  Models and data as in
bench_recovery.py (the digits CNN with its calibration half; PP-OCRv4 rec on rendered lines at
48x320).  Run: python scripts/bench_recon_cost.py --models digits,rec --samples 64,256
`--trees OLD,NEW` runs every row on each of these checkouts of onnxprune in turn (their own
onnxprune/ and scripts/), so that two versions are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def one_row(model: str, samples: int, tree: Path) -> dict:
    sys.path[:0] = [str(tree), str(tree / "scripts")]
    import onnxprune
    from bench_recovery import Digits, Rec, one_pass_seconds
    from onnxprune.recovery import ReconstructOptions

    import onnxprune.recovery as recovery

    cpu = {}
    inner = recovery.reconstruct

    def timed(*args, **kwargs):  # the CPU time of reconstruct itself, beside its wall time
        start = time.process_time()
        report = inner(*args, **kwargs)
        cpu["reconstruct"] = time.process_time() - start
        return report

    recovery.reconstruct = timed
    with tempfile.TemporaryDirectory() as tmp:
        task = Digits(samples, 1) if model == "digits" else Rec(samples, 1, Path(tmp))
        options = ReconstructOptions()
        t_pass = one_pass_seconds(task.model_path, task.calib, batch=options.batch)
        cpu_pass = one_pass_seconds(task.model_path, task.calib, batch=options.batch, clock=time.process_time)
        pm = onnxprune.load(task.model_path)
        feeds = {pm.index.model.graph.input[0].name: task.calib}
        plan = pm.plan("l1", target_macs=0.75)
        start = time.perf_counter()
        result = pm.apply(plan, feeds, reconstruct=options)
        total = time.perf_counter() - start
        seconds = result.recovery.reconstruction.seconds
    return {"model": task.name, "samples": samples, "pass_s": t_pass, "reconstruct_s": seconds,
            "ratio": seconds / t_pass, "apply_s": total, "cpu_ratio": cpu["reconstruct"] / cpu_pass, "peak_rss_mb": peak_rss_mb(), "data_mb": task.calib.nbytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,rec")
    parser.add_argument("--samples", default="64,256", help="calibration sizes (rec: lines)")
    parser.add_argument("--trees", default=str(ROOT), help="checkouts of onnxprune to measure, comma-separated (default: this one)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # model:samples:tree, run in a child process
    args = parser.parse_args()
    if args.row:
        model, samples, tree = args.row.split(":", 2)
        print(json.dumps(one_row(model, int(samples), Path(tree))))
        return
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    print("| code | model | samples | one pass (s) | reconstruction (s) | ratio (goal <= 3x) | CPU-time ratio | peak RSS (MB) | calibration data (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for samples in args.samples.split(","):
            for tree in trees:
                out = subprocess.run([sys.executable, __file__, "--row", f"{model}:{samples}:{tree}"], capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {tree.name} | {row['model']} | {row['samples']} | {row['pass_s']:.3g} | {row['reconstruct_s']:.3g} | "
                      f"{row['ratio']:.1f}x | {row['cpu_ratio']:.1f}x | {row['peak_rss_mb']:.0f} | {row['data_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
