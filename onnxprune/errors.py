"""Error types.  Every problem a user can fix is an `InputError` (exit code 2); the CLI prints its
message as one line.  Anything else escaping the pipeline is a bug in onnxprune (exit code 1)."""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class for errors onnxprune reports to the user."""

    exit_code = 1


class InputError(OnnxPruneError):
    """The input (model file, plan, data, option) is unusable; the message names the file and the problem."""

    exit_code = 2


class UnsupportedModelError(InputError):
    """The model is valid ONNX but cannot be handled (for example quantized weights)."""
