"""Criteria for transformers (README, "Transformers: criteria and bias compensation"): output error
at one pruning ratio for l1, activation and wanda, without and with compensation, side by side.

    python scripts/bench_transformer_criteria.py [--models gpt2 llama] [--ratio 0.3] [--samples 64]

For each tiny random-init model of tests/transformer_zoo.py (dynamo export), synthetic token ids
(uniform below the vocabulary size, seeded) make a calibration set and a separate held-out set
of the same size.  Every prunable group loses `--ratio` of its channels (heads, MLP width, the
residual stream); the table shows the relative error ||y_pruned - y|| / ||y|| of the logits on
the held-out set, for each criterion: plain; with bias compensation only (FLAP-style: each layer
reading pruned channels gets the removed channels' mean contribution in its bias, a bias attached
where it has none; `ReconstructOptions(rows_per_feature=inf)`); and with `--reconstruct` (least
squares re-fit of those layers with an intercept, which includes the compensation); and how many
attention-output and MLP-down projections the re-fit improved.  Random-init models have no trained structure, so the figures compare the
criteria's mechanics, not what they do on a trained LLM.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import transformer_zoo as tz  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.recovery import ReconstructOptions  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402

CRITERIA = ("l1", "activation", "wanda")


def token_ids(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, tz.VOCAB, (n, tz.SEQ)).astype(np.int64)}


def logits(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = make_session(model)
    return session.run(None, feeds)[0].astype(np.float64)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def projections_refit(result, origins: dict[str, str | None], names: tuple[str, ...]) -> str:
    """'improved/seen' over the reconstructed layers whose origin name contains one of `names`
    (attention output and MLP down projections)."""
    if result.recovery is None or result.recovery.reconstruction is None:
        return "-"
    def origin(label: str) -> str:
        return origins.get(label.split("'")[1] if "'" in label else label) or ""
    layers = [f for f in result.recovery.reconstruction.layers if any(n in origin(f.node) for n in names)]
    return f"{sum(f.fitted for f in layers)}/{len(layers)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"], choices=list(tz.MODELS))
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (the held-out set has as many)")
    args = parser.parse_args()
    calib, held_out = token_ids(args.samples, 0), token_ids(args.samples, 1)
    print(f"ratio {args.ratio}, {args.samples} calibration + {args.samples} held-out sequences of {tz.SEQ} random tokens")
    print(f"{'model':8} {'criterion':11} {'heads':>6} {'MACs kept':>9} {'rel. error':>10} {'+bias only':>10} "
          f"{'+reconstruct':>12} {'o/down improved':>15} {'time s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            module, inputs = tz.MODELS[name]()
            path = tz.export(module, inputs, Path(tmp) / f"{name}.onnx", "dynamo")
            m = onnxprune.load(path)
            reference = logits(m.model, held_out)
            origins = m.origins()
            heads = [g for g in m.groups if g.n_channels <= 4]
            for criterion in CRITERIA:
                start = time.perf_counter()
                plan = m.plan(criterion, data=calib if criterion != "l1" else None, ratio=args.ratio)
                removed_heads = sum(gp.channels - len(gp.keep) for gp in plan.groups if gp.id in {g.id for g in heads})
                plain = m.apply(plan, calib)
                bias_only = m.apply(plan, calib, reconstruct=ReconstructOptions(rows_per_feature=float("inf")))
                fitted = m.apply(plan, calib, reconstruct=True)
                seconds = time.perf_counter() - start
                refit = projections_refit(fitted, origins, ("o_proj", "down_proj", "attn.c_proj", "mlp.c_proj"))
                kept = plain.after.macs / plain.before.macs
                errors = [relative_error(reference, logits(r.model, held_out)) for r in (plain, bias_only, fitted)]
                print(f"{name:8} {criterion:11} {removed_heads:>6} {kept:>9.1%} {errors[0]:>10.4f} {errors[1]:>10.4f} "
                      f"{errors[2]:>12.4f} {refit:>15} {seconds:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
