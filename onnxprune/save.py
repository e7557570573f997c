"""Stage 8b: saving.  Outputs appear atomically: everything is written into a temporary folder
beside the target, checked (every byte written; external-data offsets read back by onnx.checker)
and renamed into place only when complete, so a
crash or a full disk never leaves a half-written model, and the input (already fully in memory)
is never touched."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import numpy_helper

from .errors import InputError, OnnxPruneError
from .graph import copy_fields

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


def check_output_paths(source: str | os.PathLike, outputs, overwrite: bool) -> None:
    """Refuse, unless asked to, any output (None entries skipped) that would write over the input
    model or its external data file, or whose own data file would, and any output that names a
    folder (a file would be written beside it, never inside)."""
    for output in outputs:
        if output is not None and Path(output).is_dir():
            raise InputError(f"{output}: is a folder; give the path of a file to write")
    if overwrite:
        return
    src = Path(source).resolve()
    protected = {src, src.with_name(src.name + ".data")}
    for output in outputs:
        if output is None:
            continue
        out = Path(output).resolve()
        if out in protected or out.with_name(out.name + ".data") in protected:
            raise InputError(f"{output}: refusing to overwrite the input model (use --overwrite)")


def weights_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _external_header(model: onnx.ModelProto, data: BinaryIO, location: str, threshold: int = 1024) -> onnx.ModelProto:
    """Write the bytes of every initializer of at least `threshold` bytes to `data` and return the
    model with those initializers pointing there.  Done by hand rather than with onnx's
    save_as_external_data, which needs a full copy of the model (it converts in place) and looks
    for an existing data file relative to the current directory instead of the target folder."""
    graph = onnx.GraphProto()
    copy_fields(model.graph, graph, skip="initializer")
    offset = 0
    for tensor in model.graph.initializer:
        raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
        if len(raw) < threshold or tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            graph.initializer.append(tensor)
            continue
        data.write(raw)
        stub = graph.initializer.add()
        stub.name, stub.data_type, stub.doc_string = tensor.name, tensor.data_type, tensor.doc_string
        stub.dims.extend(tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            stub.external_data.add(key=key, value=value)
        offset += len(raw)
    header = onnx.ModelProto()
    copy_fields(model, header, skip="graph")
    header.graph.CopyFrom(graph)
    return header


def _write_checked(staged: Path, payload: bytes, path: Path) -> None:
    """Write a model held inline and make sure every byte landed.  The model was checked in memory
    already; parsing 100 MB back through onnx.checker would cost more than the write itself."""
    staged.write_bytes(payload)
    if staged.stat().st_size != len(payload):
        raise OnnxPruneError(f"internal error: {path.name} was written short; nothing written")


def _check_written(staged: Path, path: Path) -> None:
    """Read the staged header back through onnx.checker (path form: it checks that every external
    tensor's offset and length lie inside the data file without loading them) before it replaces
    anything, so a short write never reaches `path`."""
    try:
        onnx.checker.check_model(str(staged))
    except (onnx.checker.ValidationError, OSError) as exc:
        raise OnnxPruneError(f"internal error: the written {path.name} does not read back ({str(exc).splitlines()[0]}); "
                             "nothing written") from None


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
            data = staging / (path.name + ".data")
            with open(data, "wb") as handle:
                header = _external_header(model, handle, path.name + ".data")
            _write_checked(target, header.SerializeToString(), path)
            _check_written(target, path)
        else:
            _write_checked(target, model.SerializeToString(), path)
        if external_data:
            os.chmod(data, _default_mode())
            os.replace(data, path.with_name(path.name + ".data"))
        os.chmod(target, _default_mode())
        os.replace(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
