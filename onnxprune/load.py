"""Stage 1: load a model file safely.

External data is resolved eagerly and only from inside the model's own folder: a location that is
absolute, contains `..` or resolves (through symlinks) outside the folder is refused, as onnx's own
loader learned the hard way (CVE-2024-27318, CVE-2024-5187).  Loading eagerly also means nothing
keeps a reference to the input's data file, so the input can never be modified by a later save.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from .errors import InputError
from .graph import copy_fields
from .ops import model_opset, rule_for


@dataclass
class LoadedModel:
    """A model held fully in memory, with where it came from."""

    model: onnx.ModelProto
    path: Path
    had_external_data: bool
    digest: Future[str] | str = ""
    """sha256 of the file's bytes followed by its external data files' (see `file_digest`), or
    the hashing still under way (`sha256` waits for it)."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """With `load_model(mapped=True)`: read-only memory maps of the external initializers, whose
    TensorProtos in `model` then stay stubs (name, type, dims, location) without data."""

    @property
    def sha256(self) -> str:
        if isinstance(self.digest, Future):
            self.digest = self.digest.result()
        return self.digest


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


def _read(path: Path) -> bytes:
    """The file's bytes, or an InputError saying why there are none (never an OSError traceback)."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an ONNX file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():  # a FIFO or device would block or never end
        raise InputError(f"{path}: not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror})") from None


def map_external(model: onnx.ModelProto, path: Path) -> dict[str, np.ndarray] | None:
    """Read-only memory maps of the external data of every initializer, checked against their
    dims, or None where mapping does not apply (external data outside the initializers, types
    without a fixed item size, a big-endian machine): the caller then reads the data eagerly.

    Mapping instead of reading keeps the original's weights out of the process's own memory:
    they are file pages the kernel can drop and read again, every slice surgery takes reads
    straight from them, and loading costs a header parse instead of a copy of every weight."""
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if sys.byteorder != "little" or len(external) != len(_external_locations(model)):
        return None
    if any(t.data_type in SUB_BYTE_TYPES or t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED)
           for t in external):
        return None
    maps: dict[str, mmap.mmap | None] = {}
    arrays = {}
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if location not in maps:
            target = _check_location(path, location)
            with open(target, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                maps[location] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        buffer = maps[location]
        size = len(buffer) if buffer is not None else 0
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise InputError(f"{path}: tensor '{tensor.name}' has a malformed external data offset or length") from None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        declared = math.prod(tensor.dims)
        held = max(0, min(length, size - offset)) // dtype.itemsize if offset >= 0 else 0
        if held != declared or length != declared * dtype.itemsize:
            raise InputError(f"{path}: tensor '{tensor.name}' declares {declared} elements but holds {held}")
        array = np.frombuffer(buffer, dtype=dtype, count=declared, offset=offset) if declared else np.zeros(0, dtype)
        arrays[tensor.name] = array.reshape(tuple(tensor.dims))
    return arrays


def load_model(path: str | os.PathLike, mapped: bool = False) -> LoadedModel:
    """Read `path` into memory with its external data, refusing anything unsafe or malformed.
    `mapped` memory-maps external data instead of reading it (see `map_external`): the model's
    initializers then stay stubs and `LoadedModel.arrays` holds their data."""
    path = Path(path)
    raw = _read(path)
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
    digest = _digest_in_background(raw, [path.parent / loc for loc in sorted(set(locations))])
    arrays = map_external(model, path) if locations and mapped else None
    if locations and arrays is None:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read external data ({exc})") from None
    check_supported(model, path, path if locations else None)
    return LoadedModel(model=model, path=path, had_external_data=bool(locations),
                       digest=digest, arrays=arrays or {})


def _digest_in_background(raw: bytes, data_files: list[Path]) -> Future[str]:
    """`file_digest` in a thread: hashlib releases the GIL, so the hash (for ResNet-50 as long
    as parsing the file; for a multi-GB model, seconds of reading its data files) overlaps
    building the graph and scoring instead of delaying them.  The plan, which records it, waits."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxprune-sha256")
    future = pool.submit(file_digest, raw, data_files)
    pool.shutdown(wait=False)
    return future


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


def check_supported(model: onnx.ModelProto, path: Path, external_source: Path | None = None) -> None:
    """Refuse what the checker rejects.

    `external_source`, the file a model with external data was loaded from, lets the checker
    resolve the data files itself (it checks offsets and lengths without loading them)."""
    check_structure(model, path)
    check_tensors(model, path)
    try:
        onnx.checker.check_model(str(external_source) if external_source else checker_view(model), full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: invalid ONNX model: {first}") from None
    except ValueError as exc:  # > 2 GB in memory is fine for us, the checker only refuses to serialise
        if "2GB" not in str(exc) and "2 GB" not in str(exc):
            raise InputError(f"{path}: invalid ONNX model: {exc}") from None


def checker_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnx.checker needs to see it, without the bytes of large weights: each becomes
    a typed graph input instead.  Their sizes were checked against their dims already
    (check_tensors); serialising 100 MB of weights into the C++ checker only to skip over them cost
    five times more than the rest of the check."""
    graph = onnx.GraphProto()
    copy_fields(model.graph, graph, skip="initializer")
    declared = {vi.name for vi in graph.input}
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) <= 4096 or tensor.data_location == onnx.TensorProto.EXTERNAL:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    view = onnx.ModelProto()
    copy_fields(model, view, skip="graph")
    view.graph.CopyFrom(graph)
    return view


MAX_INPUT_ELEMENTS = 1 << 32
"""A graph input declaring more elements than this (dynamic axes counted as 1) cannot be run for
verification; it is refused before anything tries to allocate it."""


def _label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def check_structure(model: onnx.ModelProto, path: Path) -> None:
    """Refuse, with a message naming the culprit, what onnx.checker either accepts (an opset newer
    than the installed onnx, which later fails in onnxruntime) or reports vaguely (a dangling input
    and a cycle both read "must be topologically sorted")."""
    known = onnx.defs.onnx_opset_version()
    imported = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    if imported.get("ai.onnx", 0) > known:
        raise InputError(f"{path}: opset {imported['ai.onnx']} is newer than the installed onnx {onnx.__version__} "
                         f"knows (up to {known}); upgrade onnx")
    graph = model.graph
    available = {vi.name for vi in graph.input} | {t.name for t in graph.initializer} | \
                {t.values.name for t in graph.sparse_initializer}
    producer: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if (node.domain or "ai.onnx") not in imported and model.opset_import:
            raise InputError(f"{path}: node '{_label(node)}' uses domain '{node.domain}', which the model does not "
                             "import (no opset_import entry)")
        for name in filter(None, node.output):
            if name in producer or name in available:
                raise InputError(f"{path}: tensor '{name}' is produced more than once (again by node "
                                 f"'{_label(node)}'); ONNX graphs assign every tensor once")
            producer[name] = node
    for node in graph.node:
        for name in filter(None, node.input):
            if name not in producer and name not in available:
                raise InputError(f"{path}: node '{_label(node)}' reads '{name}', which no node, initializer or "
                                 "graph input provides")
    for vi in graph.output:
        if vi.name not in producer and vi.name not in available:
            raise InputError(f"{path}: graph output '{vi.name}' is not produced by any node")
    _check_acyclic(graph, producer, path)


def _check_acyclic(graph: onnx.GraphProto, producer: dict[str, onnx.NodeProto], path: Path) -> None:
    """Kahn's algorithm over the main graph (subgraphs read outer names only, they add no edges)."""
    position = {id(node): i for i, node in enumerate(graph.node)}
    waiting = [len({position[id(producer[n])] for n in node.input if n in producer}) for node in graph.node]
    users: dict[int, set[int]] = {}
    for i, node in enumerate(graph.node):
        for j in {position[id(producer[n])] for n in node.input if n in producer}:
            users.setdefault(j, set()).add(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    while ready:
        for j in users.get(ready.pop(), ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    stuck = [i for i, count in enumerate(waiting) if count > 0]
    if stuck:
        raise InputError(f"{path}: the graph has a cycle (through node '{_label(graph.node[stuck[0]])}')")


SUB_BYTE_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                  if hasattr(onnx.TensorProto, name)}


def _held_elements(tensor: onnx.TensorProto) -> int | None:
    """How many elements a tensor's data holds, or None where that is not simply countable
    (unloaded external data, packed 4-bit types, strings in raw_data)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type in SUB_BYTE_TYPES:
        return None
    if tensor.HasField("raw_data"):
        if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            return None
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        return len(tensor.raw_data) // itemsize
    field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    per_element = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
    return len(getattr(tensor, field)) // per_element


def check_tensors(model: onnx.ModelProto, path: Path) -> None:
    """Every initializer and Constant holds as many elements as its dims declare (a short or
    missing buffer would otherwise surface as a numpy reshape error deep in the pipeline, and a
    huge declared size must never be allocated), and no graph input is too large to run."""
    opset = model_opset(model)
    tensors = [(t.name, t) for t in model.graph.initializer] + [
        (n.output[0], a.t) for n in model.graph.node if n.output and rule_for(n, opset).constant_source
        for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for name, tensor in tensors:
        declared, held = math.prod(tensor.dims), _held_elements(tensor)
        if held is not None and held != declared:
            raise InputError(f"{path}: tensor '{name}' declares {declared} elements but holds {held}")
    initializers = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        if vi.name not in initializers and math.prod(dims) > MAX_INPUT_ELEMENTS:
            raise InputError(f"{path}: graph input '{vi.name}' declares {math.prod(dims)} elements, more than "
                             f"2**{MAX_INPUT_ELEMENTS.bit_length() - 1}; too large to run")
