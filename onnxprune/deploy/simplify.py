"""onnxslim simplification (optional extra `onnxslim`), run AFTER pruning.

Simplifying first also works, but constant folding can turn shape arithmetic into literal
constants (a Reshape target such as [N, 1024]) that onnxprune then has to rewrite, or that block
a group; pruning the exported model and slimming the result is always at least as good."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import OnnxPruneError
from ..runtime import make_session, run_chunked
from . import require

TOLERANCE = 1e-4  # slimming fuses and refolds float ops; a relative change above this is a bug


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """The onnxslim-simplified copy of `model` (the argument is left untouched)."""
    onnxslim = require("onnxslim", "--simplify")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    slimmed = onnxslim.slim(copy)
    if not isinstance(slimmed, onnx.ModelProto):
        raise OnnxPruneError("internal error: onnxslim returned no model; nothing written")
    return slimmed


def simplify_checked(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """simplify(), refused (nothing written) if outputs move by more than TOLERANCE on `feeds`."""
    slimmed = simplify(model)
    check_simplified(model, slimmed, feeds)
    return slimmed


def check_simplified(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """Max relative output change from slimming; above TOLERANCE (or a changed shape) it raises."""
    a, b = run_chunked(make_session(before), feeds), run_chunked(make_session(after), feeds)
    errors = [float(np.max(np.abs(x.astype(np.float64) - y))) / max(float(np.max(np.abs(x))), 1e-30)
              for x, y in zip(a, b) if x.size and np.issubdtype(x.dtype, np.floating)]
    error = max(errors, default=0.0)
    if error > TOLERANCE or [x.shape for x in a] != [y.shape for y in b]:
        raise OnnxPruneError(f"internal error: onnxslim changed the outputs (relative error {error:.2e}); nothing written")
    return error
