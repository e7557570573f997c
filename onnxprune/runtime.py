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

from .graph import ModelIndex


FILE_ROUTE_ABOVE = 1 << 28
"""Models larger than this (256 MB) reach onnxruntime and onnx.checker through a temporary file
with external data: protobuf cannot serialise a message over 2 GB at all, and below that the
serialised bytes would be one more copy of every weight in memory."""


def weights_size(model: onnx.ModelProto) -> int:
    """Bytes of the initializers, from their dims: ModelProto.ByteSize() would serialise the whole
    model to find out (a transient copy of every weight), and raw_data hands out a copy."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
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


def make_session(model: onnx.ModelProto | bytes | str, threads: int = 0, prepack: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session on a model, its bytes or its path (see `model_source`).
    `prepack=False` suits one-off runs (verification): onnxruntime then keeps no repacked copy of
    every Conv/Gemm weight and can map external data from the file instead of reading it."""
    if isinstance(model, onnx.ModelProto):
        with model_source(model) as source:
            return make_session(source, threads, prepack)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def with_outputs(index: ModelIndex, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also returns the intermediate tensors `names`."""
    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, index.elem_types.get(name, onnx.TensorProto.FLOAT), None))
    return model


def batches(feeds: dict[str, np.ndarray], batch: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch):
        yield {k: v[start:start + batch] for k, v in feeds.items()}
