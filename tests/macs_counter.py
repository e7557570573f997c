"""An independent MAC counter for the cost tests, written from the ONNX operator spec: every
tensor's real shape comes from running the model in onnxruntime (every intermediate as an extra
output), not from onnxprune's index or onnx shape inference."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort


def real_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
    del probe.graph.value_info[:]
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = {n: tuple(np.shape(v)) for n, v in zip(names, session.run(names, feeds))}
    shapes.update({n: v.shape for n, v in feeds.items()})
    shapes.update({t.name: tuple(t.dims) for t in model.graph.initializer})
    return shapes


def count_macs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of one run on `feeds`: Conv, ConvTranspose, Gemm, MatMul, LSTM/GRU/RNN."""
    shapes = real_shapes(model, feeds)
    total = 0
    for node in model.graph.node:
        s = [shapes.get(i) if i else None for i in node.input]
        y = shapes.get(node.output[0]) if node.output else None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            total += math.prod(y) * math.prod(s[1][1:])
        elif node.op_type == "ConvTranspose":
            total += math.prod(s[0]) * math.prod(s[1][1:])
        elif node.op_type == "Gemm":
            total += math.prod(y) * (s[0][0] if attrs.get("transA", 0) else s[0][1])
        elif node.op_type == "MatMul":
            total += math.prod(y) * s[0][-1]
        elif node.op_type in ("LSTM", "GRU", "RNN"):
            seq, batch = (s[0][1], s[0][0]) if attrs.get("layout", 0) else (s[0][0], s[0][1])
            total += seq * batch * (math.prod(s[1]) + math.prod(s[2]))
    return total
