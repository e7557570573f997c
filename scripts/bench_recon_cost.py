"""What `--reconstruct` costs, side by side with what it is measured against: reconstruction time
over one pass of the same calibration data through the original model (goal: at most 3x), and the
peak memory of the process at two calibration sizes (goal: independent of the number of samples).

Each (model, samples) row runs in its own process, so that its peak RSS is its own: load, plan
(l1, --target-macs 0.75), apply with reconstruction; the pass is timed in that process too (best
of 2, session made beforehand, same batch size as reconstruction).  Models and data as in
bench_recovery.py (the digits CNN with its calibration half; PP-OCRv4 rec on rendered lines at
48x320).  Run: python scripts/bench_recon_cost.py --models digits,rec --samples 64,256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def one_row(model: str, samples: int) -> dict:
    import onnxprune
    from bench_recovery import Digits, Rec, one_pass_seconds
    from onnxprune.recovery import ReconstructOptions

    with tempfile.TemporaryDirectory() as tmp:
        task = Digits(samples, 1) if model == "digits" else Rec(samples, 1, Path(tmp))
        options = ReconstructOptions()
        t_pass = one_pass_seconds(task.model_path, task.calib, batch=options.batch)
        pm = onnxprune.load(task.model_path)
        feeds = {pm.index.model.graph.input[0].name: task.calib}
        plan = pm.plan("l1", target_macs=0.75)
        start = time.perf_counter()
        result = pm.apply(plan, feeds, reconstruct=options)
        total = time.perf_counter() - start
        seconds = result.recovery.reconstruction.seconds
    return {"model": task.name, "samples": samples, "pass_s": t_pass, "reconstruct_s": seconds,
            "ratio": seconds / t_pass, "apply_s": total, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,rec")
    parser.add_argument("--samples", default="64,256", help="calibration sizes (rec: lines)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # model:samples, run in a child process
    args = parser.parse_args()
    if args.row:
        model, samples = args.row.split(":")
        print(json.dumps(one_row(model, int(samples))))
        return
    print("| model | samples | one pass (s) | reconstruction (s) | ratio (goal <= 3x) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for samples in args.samples.split(","):
            out = subprocess.run([sys.executable, __file__, "--row", f"{model}:{samples}"], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {row['model']} | {row['samples']} | {row['pass_s']:.2f} | {row['reconstruct_s']:.2f} | {row['ratio']:.1f}x | "
                  f"{row['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
