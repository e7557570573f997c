"""Stage 8b: saving.  Outputs appear atomically: everything is written into a temporary folder
beside the target and renamed into place only when complete, so a crash or a full disk never
leaves a half-written model, and the input (already fully in memory) is never touched."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from .errors import InputError

EXTERNAL_DATA_THRESHOLD = 1 << 30  # above ~1 GB of weights, write external data (protobuf stops at 2 GB)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to `path` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_path(output: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse to write over an input unless asked to."""
    if overwrite:
        return
    out = output.resolve()
    for source in inputs:
        src = source.resolve()
        if out == src or out.with_name(out.name + ".data") == src.with_name(src.name + ".data"):
            raise InputError(f"{output}: refusing to overwrite the input model (use --overwrite)")


def weights_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Save `model` to `path` atomically.  External data (`<name>.data` beside it) is used when asked
    for, or when the weights are too large for one protobuf."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = weights_bytes(model) > EXTERNAL_DATA_THRESHOLD
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        target = staging / path.name
        if external_data:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(copy, target, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
            data = staging / (path.name + ".data")
            os.chmod(data, _default_mode())
            os.replace(data, path.with_name(path.name + ".data"))
        else:
            onnx.save_model(model, target)
        os.chmod(target, _default_mode())
        os.replace(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
