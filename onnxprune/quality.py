"""Quality of a changed model (pruned, sparsified, quantized) against the original on the user's
data: what a person needs to decide whether to keep the result.

Verification (verify.py) proves a result is a valid, runnable model on a few samples; this module
measures how much it still agrees with the original on every sample of `--data`: top-1 agreement
(for classifier-like outputs), the relative error of the first output, and accuracy before and
after when the .npz carries a `labels` array (as `sensitivity --metric accuracy` reads it).
`prune`, `apply` and `quantize` all report it the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from .runtime import batches, make_session, run_chunked

QUALITY_BATCH = 32


@dataclass
class Quality:
    """The changed model against the original, on the first output over `samples` inputs."""

    samples: int
    rel_error: float
    """max |after - before| / max |before| (the measure verification uses, here on every sample)."""
    max_abs_diff: float
    top1_agreement: float | None = None
    """Fraction of samples with the same top-1 class; None when the output is not classifier-like."""
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    """Top-1 accuracy against the data's labels; None without labels."""

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self, before: str = "before", after: str = "after") -> str:
        """One line for a summary, e.g. 'top-1 agreement 93.06%, relative error 6.91e-01;
        accuracy 99.44% -> 91.39%'."""
        parts = []
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement {self.top1_agreement:.2%}")
        parts.append(f"relative error {self.rel_error:.2e} (max abs diff {self.max_abs_diff:.3g})")
        text = f"on {self.samples} samples: " + ", ".join(parts)
        if self.accuracy_before is not None:
            text += f"; accuracy {before} {self.accuracy_before:.2%} -> {after} {self.accuracy_after:.2%}"
        return text


def classes(output: np.ndarray) -> np.ndarray | None:
    """Top-1 class per sample of a classifier-like output ((N, C) with C >= 2, trailing 1-dims
    allowed, as a 1x1 conv head gives), else None: an argmax over a feature map is no class."""
    squeezed = output.reshape(output.shape[:2]) if output.ndim > 2 and all(d == 1 for d in output.shape[2:]) else output
    if squeezed.ndim != 2 or squeezed.shape[1] < 2:
        return None
    return squeezed.argmax(axis=1)


def compare(before: np.ndarray, after: np.ndarray, labels: np.ndarray | None = None) -> Quality:
    """Quality of `after` against `before` (first outputs, same shape); accuracy when labels are given."""
    a, b = before.astype(np.float64), after.astype(np.float64)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    quality = Quality(len(a), diff / scale if scale > 0 else diff, diff)
    top_a, top_b = classes(before), classes(after)
    if top_a is not None:
        quality.top1_agreement = float(np.mean(top_a == top_b))
        if labels is not None:
            quality.accuracy_before = float(np.mean(top_a == labels[:len(a)]))
            quality.accuracy_after = float(np.mean(top_b == labels[:len(a)]))
    return quality


def first_output(model: onnx.ModelProto | bytes | str, feed_batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The model's first output over all batches (one onnxruntime session; a model with a fixed
    batch size is fed in chunks of it, see runtime.run_chunked)."""
    session = make_session(model, prepack=False)
    name = session.get_outputs()[0].name
    return np.concatenate([run_chunked(session, feeds, [name])[0] for feeds in feed_batches])


def measure(original: onnx.ModelProto | bytes | str, changed: onnx.ModelProto | bytes | str,
            feeds: dict[str, np.ndarray], labels: np.ndarray | None = None,
            feed_batches: list[dict[str, np.ndarray]] | None = None) -> Quality:
    """Run both models on `feeds` (in batches of QUALITY_BATCH, or the batches given: a model
    with a static batch size needs its own) and compare their first outputs."""
    chunks = feed_batches if feed_batches is not None else list(batches(feeds, QUALITY_BATCH))
    before = first_output(original, chunks)
    return compare(before, first_output(changed, chunks), labels)


def labels_for(data: str | Path | None, n: int) -> np.ndarray | None:
    """The `labels` array of a calibration .npz, if it has one (n of them, else bad input)."""
    from .data import load_labels

    return load_labels(None, data, n) if isinstance(data, (str, Path)) else None
