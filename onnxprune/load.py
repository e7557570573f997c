"""Stage 1: load a model file safely.

External data is resolved eagerly and only from inside the model's own folder: a location that is
absolute, contains `..` or resolves (through symlinks) outside the folder is refused, as onnx's own
loader learned the hard way (CVE-2024-27318, CVE-2024-5187).  Loading eagerly also means nothing
keeps a reference to the input's data file, so the input can never be modified by a later save.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from .errors import InputError, UnsupportedModelError


@dataclass
class LoadedModel:
    """A model held fully in memory, with where it came from."""

    model: onnx.ModelProto
    path: Path
    had_external_data: bool
    sha256: str = ""
    """sha256 of the file's bytes followed by its external data files' (see `file_digest`)."""


def _external_locations(model: onnx.ModelProto) -> list[str]:
    locations = []
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            locations.append(info.get("location", ""))
    return locations


def _check_location(path: Path, location: str) -> Path:
    folder = path.parent.resolve()
    if not location:
        raise InputError(f"{path}: external data entry has no location")
    if os.path.isabs(location) or Path(location).is_absolute():
        raise InputError(f"{path}: external data location '{location}' is an absolute path; only files inside the model's folder are read")
    if ".." in Path(location).parts:
        raise InputError(f"{path}: external data location '{location}' escapes the model's folder")
    target = (folder / location).resolve()
    if folder not in target.parents and target != folder:
        raise InputError(f"{path}: external data location '{location}' resolves outside the model's folder (symlink?)")
    if not target.is_file():
        raise InputError(f"{path}: external data file '{location}' is missing")
    return target


def load_model(path: str | os.PathLike, allow_quantized: bool = False) -> LoadedModel:
    """Read `path` into memory with its external data, refusing anything unsafe or malformed.
    `allow_quantized` admits quantized models for the commands that only run them (bench)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    raw = path.read_bytes()
    if not raw:
        raise InputError(f"{path}: file is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise InputError(f"{path}: not an ONNX model (protobuf parse failed: {exc})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InputError(f"{path}: not an ONNX model (no graph)")
    locations = _external_locations(model)
    for location in sorted(set(locations)):
        _check_location(path, location)
    if locations:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read external data ({exc})") from None
    check_supported(model, path, raw if not locations else path, allow_quantized)
    return LoadedModel(model=model, path=path, had_external_data=bool(locations),
                       sha256=file_digest(raw, [path.parent / loc for loc in sorted(set(locations))]))


def file_digest(raw: bytes, data_files: list[Path]) -> str:
    """sha256 of the model file's bytes followed by those of its external data files.

    Hashing the bytes already read, instead of `model.SerializeToString()` (plus a ByteSize()
    call, which serialises too), saves two serialisations of every weight: for ResNet-50 about
    0.25 s, as much as a plain `onnx.save`.  For a file without external data the value is the
    same (protobuf writers are canonical for ONNX's map-free schema, so the file's bytes are what
    SerializeToString() returns); for one with external data it now hashes the files."""
    digest = hashlib.sha256(raw)
    for data_file in data_files:
        with open(data_file, "rb") as handle:
            while chunk := handle.read(1 << 23):
                digest.update(chunk)
    return digest.hexdigest()


def check_supported(model: onnx.ModelProto, path: Path, source: bytes | Path | None = None,
                    allow_quantized: bool = False) -> None:
    """Refuse what the checker accepts but onnxprune cannot prune exactly.

    `source`, when given, is what the checker reads instead of serialising `model` again (as long
    as `onnx.save`): the bytes `model` was parsed from, or the file it was loaded from when it has
    external data (the checker then resolves the data files itself)."""
    try:
        onnx.checker.check_model(source if isinstance(source, bytes) else str(source) if source else model, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: invalid ONNX model: {first}") from None
    except ValueError as exc:  # > 2 GB in memory is fine for us, the checker only refuses to serialise
        if "2GB" not in str(exc) and "2 GB" not in str(exc):
            raise InputError(f"{path}: invalid ONNX model: {exc}") from None
    quantized = [n.name or n.op_type for n in model.graph.node if not allow_quantized and
                 n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul")]
    if quantized:
        raise UnsupportedModelError(
            f"{path}: quantized model (node {quantized[0]}); channel pruning of quantized models is not supported, prune the float model and quantize afterwards")
