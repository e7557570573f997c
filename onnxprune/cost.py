"""Parameters and multiply-accumulates per layer, from the weights and the inferred shapes.

Dynamic dimensions (the batch) count as 1, so MACs are per sample."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from .graph import ModelIndex

WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
              "LayerNormalization", "PRelu"}


@dataclass
class LayerCost:
    node: str
    op_type: str
    params: int
    macs: int
    channels: int | None
    """Output channels (Conv/Gemm/MatMul), shown in summaries before and after."""


def _numel(shape) -> int:
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def _float_params(index: ModelIndex, names) -> int:
    total = 0
    for name in names:
        tensor = index.initializers.get(name)
        if tensor is not None and tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                       onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
            total += _numel(tensor.dims)
    return total


def _macs(index: ModelIndex, node: onnx.NodeProto) -> tuple[int, int | None]:
    out = index.shape(node.output[0]) if node.output else None
    weight = index.shape(node.input[1]) if len(node.input) > 1 else None
    if out is None or weight is None:
        return 0, None
    if node.op_type == "Conv":
        return _numel(out[1:]) * _numel(weight[1:]), out[1] if len(out) > 1 else None
    if node.op_type == "ConvTranspose":
        x = index.shape(node.input[0]) or ()
        return _numel(x[1:]) * _numel(weight[1:]), out[1] if len(out) > 1 else None
    if node.op_type in ("Gemm", "MatMul") and index.is_const(node.input[1]):
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        k = weight[-1] if trans_b else weight[0]
        return _numel(out[1:] if len(out) > 2 else out[-1:]) * (k if isinstance(k, int) else 1), out[-1]
    return 0, None


def layer_costs(index: ModelIndex) -> list[LayerCost]:
    """One entry per node that has weights or does multiply-accumulates."""
    costs = []
    for i, node in enumerate(index.model.graph.node):
        params = _float_params(index, set(node.input))
        macs, channels = _macs(index, node)
        if params or macs:
            costs.append(LayerCost(node.name or node.output[0], node.op_type, params, macs, channels))
    return costs


def total_params(index: ModelIndex) -> int:
    return _float_params(index, index.initializers)


def total_macs(index: ModelIndex) -> int:
    return sum(c.macs for c in layer_costs(index))


def _node_macs(index: ModelIndex) -> dict[int, int]:
    return {i: m for i, node in enumerate(index.model.graph.node) if (m := _macs(index, node)[0])}


def estimate(dg, keep: dict) -> tuple[int, int]:
    """(params, MACs) after keeping `keep[group_id]` channels, without doing the surgery: each
    weight shrinks by the kept fraction of each of its pruned axes, and so do its MACs.  A constant
    whose uses need different slices costs one copy per distinct slice, as surgery makes them."""
    index = dg.index
    if not hasattr(dg, "_cost_base"):
        dg._cost_base = (_node_macs(index), total_params(index))
    node_macs, params = dg._cost_base
    specs: dict[str, dict[int, dict[int, np.ndarray]]] = {}  # initializer -> use -> axis -> kept indices
    for group in dg.groups:
        mask = keep.get(group.id)
        if mask is None or mask.all():
            continue
        for dim in group.const_dims:
            if index.model.graph.node[dim.use].op_type == "Shape":
                continue  # reads only sizes; surgery slices the weight for its real use (surgery._shared_spec)
            specs.setdefault(dim.tensor, {}).setdefault(dim.use, {})[dim.axis] = np.nonzero(mask[group.classes[dim]])[0]

    def fraction(name: str, use_spec: dict[int, np.ndarray]) -> float:
        shape = index.shape(name)
        return float(np.prod([len(kept) / shape[axis] for axis, kept in use_spec.items()])) if use_spec else 1.0

    macs = 0
    for i, m in node_macs.items():
        weight = index.model.graph.node[i].input[1]
        macs += m * fraction(weight, specs.get(weight, {}).get(i, {}))
    for name, uses in specs.items():
        if name not in index.initializers:
            continue
        readers = {i for i, slot in index.consumers.get(name, []) if slot >= 0 and index.model.graph.node[i].op_type != "Shape"}
        distinct = {tuple((a, k.tobytes()) for a, k in sorted(spec.items())): spec for spec in uses.values()}
        copies = [fraction(name, spec) for spec in distinct.values()] + ([1.0] if readers - set(uses) else [])
        params += _float_params(index, [name]) * (sum(copies) - 1)
    return int(round(params)), int(round(macs))
