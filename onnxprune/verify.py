"""Stage 8a: verification.  Every pruned model passes onnx.checker, runs in onnxruntime on the same
inputs as the original, keeps its graph inputs and outputs (dynamic dimensions included) and
produces outputs of the same shapes.  When only dead channels were removed, outputs must also be
equal (relative error at most 1e-5).  Anything else is a bug: nothing is written."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import InputError, OnnxPruneError
from .load import checker_view
from .runtime import one_off_session, run_chunked

EXACT_TOLERANCE = 1e-5


@dataclass
class OutputCheck:
    name: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    max_rel_error: float


@dataclass
class VerifyReport:
    outputs: list[OutputCheck] = field(default_factory=list)

    @property
    def max_rel_error(self) -> float:
        return max((o.max_rel_error for o in self.outputs), default=0.0)


def _io_signature(model: onnx.ModelProto) -> list[tuple]:
    init = {t.name for t in model.graph.initializer}
    return [(vi.name, str(vi.type)) for vi in list(model.graph.input) + list(model.graph.output) if vi.name not in init]


def reference_outputs(original: onnx.ModelProto | str, feeds: dict[str, np.ndarray], source: str = "<model>",
                      arrays: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """The original model's outputs on `feeds` (from the model or its file's path; `arrays`, the
    data of its stub initializers).  When the original itself cannot run on them, the inputs are
    at fault, not the pruning: bad input."""
    from .inputs import probe_session

    session = probe_session(original, source, arrays)
    try:
        return run_chunked(session, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a run that fails
        shapes = ", ".join(f"{k}:{'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())
        raise InputError(f"{source}: onnxruntime cannot run the original model on the inputs ({shapes}): "
                         f"{str(exc).strip().splitlines()[0]}; pass --data or --input-shape with inputs it runs on") from None


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict[str, np.ndarray], exact: bool = False,
           reference: list[np.ndarray] | None = None, source: str | None = None) -> VerifyReport:
    """Check `pruned` against `original` on `feeds`.  `reference`, the original's outputs on
    `feeds`, may be computed beforehand (api.apply runs the original before surgery, so that its
    onnxruntime session and the pruned model are never in memory together).  `source`, the file
    `pruned` was written to with its external data (onnxprune.staging), is what the checker and
    onnxruntime then read: the checker checks every external offset and length in it, and
    onnxruntime maps the data file instead of being handed a copy of the weights."""
    if _io_signature(original) != _io_signature(pruned):
        raise OnnxPruneError("internal error: pruning changed the model's inputs or outputs; nothing written")
    before = reference if reference is not None else reference_outputs(original, feeds)
    try:  # on a view whose large weights are typed inputs: their bytes only cost the checker time
        onnx.checker.check_model(source or checker_view(pruned), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxPruneError(f"internal error: the pruned model fails onnx.checker ({str(exc).splitlines()[0]}); nothing written") from None
    try:  # one session, reading the pruned weights in place (no serialised copy of them)
        with one_off_session(source or pruned) as session:
            after = run_chunked(session, feeds)
    except Exception as exc:  # noqa: BLE001 - any runtime failure of our output is reported as ours
        raise OnnxPruneError(f"internal error: onnxruntime cannot run the pruned model ({str(exc).splitlines()[0]}); nothing written") from None
    report = VerifyReport()
    for vi, a, b in zip(original.graph.output, before, after):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise OnnxPruneError(f"internal error: output '{vi.name}' changed shape {a.shape} -> {b.shape}; nothing written")
        scale = float(np.max(np.abs(a))) if a.size and np.issubdtype(a.dtype, np.number) else 0.0
        err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale if scale > 0 else 0.0
        report.outputs.append(OutputCheck(vi.name, a.shape, b.shape, err))
    if exact and report.max_rel_error > EXACT_TOLERANCE:
        raise OnnxPruneError(f"internal error: removing dead channels changed the outputs (relative error {report.max_rel_error:.2e}); nothing written")
    return report
