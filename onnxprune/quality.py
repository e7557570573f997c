"""Quality of a changed model (pruned, sparsified, quantized) against the original on the user's
data: what a person needs to decide whether to keep the result.

Verification (verify.py) proves a result is a valid, runnable model on a few samples; this module
measures how much it still agrees with the original on every sample of `--data`: top-1 agreement
(for classifier-like outputs), the relative error of the first output, and accuracy before and
after when the .npz carries a `labels` array (as `sensitivity --metric accuracy` reads it).
`prune`, `apply` and `quantize`, the reconstruction report (onnxprune.recovery, before and after
re-fitting) and `finetune` (before and after distillation) all report this one measure."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from .runtime import batches, make_session, run_chunked

QUALITY_BATCH = 32


@dataclass
class Quality:
    """The changed model against the original, on the first output over `samples` inputs.  The
    one measure of agreement: `prune`/`apply`/`quantize` with `--data`, the reconstruction report
    (before and after it) and `finetune` (before and after distillation) all report it."""

    samples: int
    rel_error: float
    """max |after - before| / max |before| over all samples (the measure verification uses)."""
    max_abs_diff: float
    top1_agreement: float | None = None
    """Fraction of equal top-1 classes (per sample, or per position of an (N, T, C) sequence
    output); None when the output is not classifier-like."""
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    """Top-1 accuracy against the data's labels (one class per sample); None without labels."""

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
    allowed, as a 1x1 conv head gives), per position of a sequence output ((N, T, C), a CTC or
    language-model head), else None: an argmax over a feature map is no class."""
    squeezed = output
    while squeezed.ndim > 2 and squeezed.shape[-1] == 1:
        squeezed = squeezed.reshape(squeezed.shape[:-1])
    if squeezed.ndim not in (2, 3) or squeezed.shape[-1] < 2:
        return None
    return squeezed.argmax(axis=-1)


class Tally:
    """Running agreement of one changed model with the original, batch by batch (memory does
    not grow with the data)."""

    def __init__(self):
        self.samples, self.max_diff, self.max_ref = 0, 0.0, 0.0
        self.agree, self.positions, self.correct_before, self.correct_after = 0, 0, 0, 0
        self.classifier: bool | None = None
        self.labelled = False

    def add(self, before: np.ndarray, after: np.ndarray, labels: np.ndarray | None = None) -> None:
        """One batch of first outputs (same shape), with that batch's labels if any."""
        a, b = np.asarray(before, np.float64), np.asarray(after, np.float64)
        self.samples += len(a)
        if a.size:
            self.max_diff = max(self.max_diff, float(np.max(np.abs(a - b))))
            self.max_ref = max(self.max_ref, float(np.max(np.abs(a))))
        top_a, top_b = classes(np.asarray(before)), classes(np.asarray(after))
        self.classifier = top_a is not None if self.classifier is None else self.classifier and top_a is not None
        if top_a is None:
            return
        self.agree += int(np.sum(top_a == top_b))
        self.positions += top_a.size
        if labels is not None and top_a.ndim == 1:
            self.labelled = True
            self.correct_before += int(np.sum(top_a == labels[:len(top_a)]))
            self.correct_after += int(np.sum(top_b == labels[:len(top_b)]))

    def result(self) -> Quality:
        quality = Quality(self.samples, self.max_diff / self.max_ref if self.max_ref > 0 else self.max_diff, self.max_diff)
        if self.classifier and self.positions:
            quality.top1_agreement = self.agree / self.positions
            if self.labelled:
                quality.accuracy_before = self.correct_before / self.samples
                quality.accuracy_after = self.correct_after / self.samples
        return quality


def compare(before: np.ndarray, after: np.ndarray, labels: np.ndarray | None = None) -> Quality:
    """Quality of `after` against `before` (first outputs, same shape); accuracy when labels are given."""
    tally = Tally()
    tally.add(before, after, labels)
    return tally.result()


def first_output(model: onnx.ModelProto | bytes | str, feed_batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The model's first output over all batches (one onnxruntime session; a model with a fixed
    batch size is fed in chunks of it, see runtime.run_chunked)."""
    session = make_session(model, prepack=False)
    name = session.get_outputs()[0].name
    return np.concatenate([run_chunked(session, feeds, [name])[0] for feeds in feed_batches])


def measure_all(original: onnx.ModelProto | bytes | str, changed: list[onnx.ModelProto | bytes | str],
                feed_batches: list[dict[str, np.ndarray]], labels: np.ndarray | None = None,
                original_arrays: dict[str, np.ndarray] | None = None) -> list[Quality]:
    """Quality of each changed model against the original, streamed batch by batch: the
    original runs once, and only one batch of outputs is held at a time.  `original_arrays`
    holds the data of the original's initializers that are stubs (mapped weights)."""
    sessions = [make_session(original, prepack=False, arrays=original_arrays or None)] + \
        [make_session(m, prepack=False) for m in changed]
    names = [s.get_outputs()[0].name for s in sessions]
    tallies = [Tally() for _ in changed]
    offset = 0
    for feeds in feed_batches:
        before = run_chunked(sessions[0], feeds, [names[0]])[0]
        part = labels[offset:offset + len(before)] if labels is not None else None
        for tally, session, name in zip(tallies, sessions[1:], names[1:]):
            tally.add(before, run_chunked(session, feeds, [name])[0], part)
        offset += len(before)
    return [t.result() for t in tallies]


def measure(original: onnx.ModelProto | bytes | str, changed: onnx.ModelProto | bytes | str,
            feeds: dict[str, np.ndarray], labels: np.ndarray | None = None,
            feed_batches: list[dict[str, np.ndarray]] | None = None) -> Quality:
    """Run both models on `feeds` (in batches of QUALITY_BATCH, or the batches given: a model
    with a static batch size needs its own) and compare their first outputs."""
    chunks = feed_batches if feed_batches is not None else list(batches(feeds, QUALITY_BATCH))
    return measure_all(original, [changed], chunks, labels)[0]


def labels_for(data: str | Path | None, n: int) -> np.ndarray | None:
    """The `labels` array of a calibration .npz, if it has one (n of them, else bad input)."""
    from .data import load_labels

    return load_labels(None, data, n) if isinstance(data, (str, Path)) else None
