"""onnxruntime helpers: sessions on in-memory models, extra outputs for intermediate tensors, and
batched runs over calibration data."""

from __future__ import annotations

import math
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .graph import ModelIndex, weightless_copy


FILE_ROUTE_ABOVE = 1 << 28
"""Models larger than this (256 MB) reach onnxruntime and onnx.checker through a temporary file
with external data: protobuf cannot serialise a message over 2 GB at all, and below that the
serialised bytes would be one more copy of every weight in memory."""


def weights_size(model: onnx.ModelProto) -> int:
    """Bytes of the initializers, from their dims: ModelProto.ByteSize() would serialise the whole
    model to find out (a transient copy of every weight), and raw_data hands out a copy."""
    total = 0
    for tensor in model.graph.initializer:  # stubs of external data (load.map_external) hold nothing
        if tensor.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) and \
                tensor.data_location != onnx.TensorProto.EXTERNAL:
            total += math.prod(tensor.dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


@contextmanager
def model_source(model: onnx.ModelProto) -> Iterator[bytes | str]:
    """What onnxruntime and onnx.checker read `model` from: its bytes, or for a large model the
    path of a temporary copy with external data, removed after use (see FILE_ROUTE_ABOVE)."""
    if weights_size(model) <= FILE_ROUTE_ABOVE:
        yield model.SerializeToString()
        return
    from .save import save_model

    with tempfile.TemporaryDirectory(prefix="onnxprune-") as folder:
        yield str(save_model(model, Path(folder) / "model.onnx", external_data=True))


def make_session(model: onnx.ModelProto | bytes | str, threads: int = 0, prepack: bool = True,
                 quiet: bool = False, arrays: dict[str, np.ndarray] | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session on a model, its bytes or its path (see `model_source`).
    `prepack=False` suits one-off runs (verification): onnxruntime then keeps no repacked copy of
    every Conv/Gemm weight, can map external data from the file instead of reading it, and only
    the basic graph optimisations run (the others cost more to plan than they save in one run).
    `quiet` silences onnxruntime's own log of failed runs (probing expects some to fail).
    `arrays` supplies the data of initializers that are stubs in `model` (see `weightless_session`)."""
    if isinstance(model, onnx.ModelProto):
        with model_source(model) as source:
            return make_session(source, threads, prepack, quiet, arrays)
    options = ort.SessionOptions()
    options.log_severity_level = 4 if quiet else 3
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in (arrays or {}).values()]
    if values:  # onnxruntime reads these buffers in place: they must outlive the session
        options.add_external_initializers(list(arrays), values)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session.onnxprune_buffers = (arrays, values)
    return session


def weightless_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A one-off session (see make_session's `prepack`) on an in-memory model without serialising
    its weights: the graph goes over as a weightless copy, and each large initializer's bytes as
    an array onnxruntime reads in place.  Serialising would cost a copy of every weight in memory
    and the time to make it.  The arrays are copies (protobuf cannot lend its bytes), so this
    suits models up to FILE_ROUTE_ABOVE; `one_off_session` routes larger ones through a file.

    (Moving the bytes out of the ModelProto instead of copying them does not help: protobuf's
    arena keeps the memory of a cleared field until the whole message goes, so the weights were
    then held three times.)"""
    view = weightless_copy(model)
    stubbed = {t.name for t in view.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in stubbed and t.HasField("raw_data")}
    return make_session(view.SerializeToString(), prepack=False, arrays=arrays)


@contextmanager
def one_off_session(model: onnx.ModelProto | str) -> Iterator[ort.InferenceSession]:
    """A session for one verification run: on a model's file (its path) as it is; on a model in
    memory, `weightless_session` up to FILE_ROUTE_ABOVE; above, on a temporary copy with external
    data (see `model_source`, removed afterwards), which onnxruntime maps from the file instead of
    holding a second copy of the weights in memory."""
    if isinstance(model, str):
        yield make_session(model, prepack=False)
        return
    if weights_size(model) <= FILE_ROUTE_ABOVE:
        yield weightless_session(model)
        return
    with model_source(model) as source:
        yield make_session(source, prepack=False)


def with_outputs(index: ModelIndex, names: list[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A weightless copy of the model (graph.weightless_copy) that also returns the intermediate
    tensors `names`, and the data of its stubbed weights for make_session's `arrays`: the index's
    own values (the mapped external data, inline weights as `const` decodes them once), which
    onnxruntime reads in place.  A full copy would hold and serialise every weight twice more."""
    model = weightless_copy(index.model)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, index.elem_types.get(name, onnx.TensorProto.FLOAT), None))
    arrays = {t.name: index.const(t.name) for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    return model, arrays


def sample_count(feeds: dict[str, np.ndarray]) -> int:
    """How many samples `feeds` hold: the longest axis 0 (0-d inputs such as a sample rate hold none)."""
    return max((len(v) for v in feeds.values() if np.ndim(v)), default=1)


def batches(feeds: dict[str, np.ndarray], batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of `batch` samples; 0-d arrays (a sample rate) go whole into every chunk."""
    n = sample_count(feeds)
    for start in range(0, n, batch):
        yield {k: v[start:start + batch] if np.ndim(v) and len(v) == n else v for k, v in feeds.items()}


def _fixed_batch(meta) -> int | None:
    return meta.shape[0] if meta.shape and isinstance(meta.shape[0], int) and meta.shape[0] > 0 else None


def chunk_size(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> int | None:
    """The batch size to feed `feeds` in: the model's fixed axis-0 size where the data hold more
    samples than that (most exports fix the batch at 1), else None (all at once)."""
    sizes = []
    for meta in session.get_inputs():
        value, fixed = feeds.get(meta.name), _fixed_batch(meta)
        if fixed and value is not None and value.ndim and len(value) > fixed and len(value) % fixed == 0:
            sizes.append(fixed)
    return min(sizes) if sizes else None


def run_chunked(session: ort.InferenceSession, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
    """session.run over `feeds` in chunks of the model's fixed batch size (see `chunk_size`),
    outputs concatenated on axis 0; one run when the batch is free.  Arrays that do not hold the
    samples (0-d inputs, inputs whose fixed axis 0 they match exactly: a state, channel masks) go
    whole into every chunk."""
    size = chunk_size(session, feeds)
    if size is None:
        return session.run(names, feeds)
    fixed = {m.name: _fixed_batch(m) for m in session.get_inputs()}
    n = max(len(feeds[k]) for k, s in fixed.items() if k in feeds and s == size and feeds[k].ndim and len(feeds[k]) > s)
    split = {k for k, v in feeds.items() if v.ndim and len(v) == n and fixed.get(k) != n}
    parts = [session.run(names, {k: v[start:start + size] if k in split else v for k, v in feeds.items()})
             for start in range(0, n, size)]
    return [np.concatenate([p[k] for p in parts]) if np.ndim(parts[0][k]) else np.stack([p[k] for p in parts])
            for k in range(len(parts[0]))]
