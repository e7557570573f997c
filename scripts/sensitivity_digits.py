"""Sensitivity-driven allocation against uniform allocation on the digits model, before any
fine-tuning (README, "Sensitivity analysis").

    python scripts/sensitivity_digits.py

Runs the analysis with several metrics on the test split (models/digits_calib.npz), allocates
for 50% and 70% of MACs, and prints the accuracy of each pruned model as a markdown table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import onnxprune
from onnxprune.runtime import make_session
from onnxprune.sensitivity import analyse

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("top1-agreement", "kl", "mse")
TARGETS = (0.5, 0.7)


def main() -> None:
    data = np.load(ROOT / "models" / "digits_calib.npz")
    model = onnxprune.load(ROOT / "models" / "digits_cnn.onnx")

    def accuracy(result) -> float:
        logits = make_session(result.model).run(None, {"x": data["x"]})[0]
        return float(np.mean(logits.argmax(1) == data["labels"]))

    with tempfile.TemporaryDirectory() as tmp:
        analyses = {m: analyse(model, {"x": data["x"]}, metric=m, out=Path(tmp) / f"{m}.json") for m in METRICS}
    print("| MACs kept | uniform l1 | " + " | ".join(f"sensitivity ({m})" for m in METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for target in TARGETS:
        row = [accuracy(model.apply(model.plan(target_macs=target)))]
        row += [accuracy(model.apply(model.plan(target_macs=target, sensitivity=analyses[m]))) for m in METRICS]
        print(f"| {target:.0%} | " + " | ".join(f"{a:.2%}" for a in row) + " |")


if __name__ == "__main__":
    main()
