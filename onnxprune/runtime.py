"""onnxruntime helpers: sessions on in-memory models, extra outputs for intermediate tensors, and
batched runs over calibration data."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort

from .graph import ModelIndex


def make_session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


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
