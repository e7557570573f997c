"""Run the fuzzing properties of tests/test_fuzz.py for a given time.

    python scripts/fuzz.py --minutes 30 [--out fuzz-failures]

Rounds of the three properties with fresh random seeds until the time is up; prints how many graphs
were tried.  On a failure hypothesis shrinks the example; the minimised model is saved as
OUT/<property>.onnx (the last model a property saw is the shrunk one), the error printed, and the
exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import onnx
from hypothesis import given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_fuzz as tf  # noqa: E402

ROUND = 25


def _property(name: str, check, out: Path, counter: list[int], *extra):
    """A hypothesis test of `check` that counts graphs and keeps the last one on disk."""
    @settings(settings.get_profile("long"), max_examples=ROUND, database=None)
    @given(tf.st.tuples(tf.graphs(), *extra))
    def run(drawn: tuple):
        counter[0] += 1
        onnx.save(drawn[0].model, str(out / f"{name}.onnx"))
        check(*drawn)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    counter = [0]
    properties = {
        "dead_channels_exact": _property("dead_channels_exact", tf.check_dead_channels_exact, args.out, counter),
        "ratio_valid": _property("ratio_valid", tf.check_ratio, args.out, counter, tf.RATIOS, tf.CRITERIA, tf.st.booleans()),
        "inspect": _property("inspect", tf.check_inspect, args.out, counter),
    }
    deadline = time.monotonic() + 60 * args.minutes
    failures = 0
    while time.monotonic() < deadline:
        for name, prop in properties.items():
            try:
                prop()
            except Exception:  # noqa: BLE001 - report every property's failure and go on
                failures += 1
                print(f"FAILURE in {name} (minimised model: {args.out / (name + '.onnx')}):", flush=True)
                traceback.print_exc()
                if (args.out / f"{name}.onnx").exists():
                    (args.out / f"{name}.onnx").rename(args.out / f"{name}.failure{failures}.onnx")
        print(f"{counter[0]} graphs tried, {failures} failures", flush=True)
    print(f"done: {counter[0]} graphs tried in {args.minutes:g} minutes, {failures} failures")
    for leftover in args.out.glob("*[!0-9].onnx"):
        leftover.unlink()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
