"""onnxruntime helpers: sessions on in-memory models, extra outputs for intermediate tensors, and
batched runs over calibration data."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort

from .graph import ModelIndex


PROTOBUF_LIMIT = (1 << 31) - 1
"""protobuf cannot serialise a message larger than this (2 GB)."""


@contextmanager
def model_source(model: onnx.ModelProto) -> Iterator[bytes | str]:
    """What onnxruntime and onnx.checker read `model` from: its bytes, or, for a model protobuf
    cannot serialise (over 2 GB), the path of a temporary copy with external data, removed after
    use.  The file route also avoids holding a serialised copy of every weight in memory."""
    if model.ByteSize() <= PROTOBUF_LIMIT:
        yield model.SerializeToString()
        return
    from .save import save_model

    with tempfile.TemporaryDirectory(prefix="onnxprune-") as folder:
        yield str(save_model(model, Path(folder) / "model.onnx", external_data=True))


def make_session(model: onnx.ModelProto | bytes | str, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session on a model, its bytes or its path (see `model_source`)."""
    if isinstance(model, onnx.ModelProto):
        with model_source(model) as source:
            return make_session(source, threads)
    options = ort.SessionOptions()
    options.log_severity_level = 3
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
