"""Parameters and multiply-accumulates, per layer and in total.

MACs are each op rule's own count (`OpRule.macs`) at the shapes the index holds: sizes that are
dynamic count as 1, so with a dynamic batch MACs are per sample.  Parameters are the floating-point
and 8/4-bit integer constants (PARAM_TYPES): initializers and Constant-node tensors (paddle2onnx
keeps every weight in Constant nodes).

`CostModel.estimate` prices a candidate pruning without doing it: a dry run of surgery's own
decisions, the slicing of every constant (`surgery.plan_slicing`: shared constants, per-use copies
and all) and each rule's MACs at the pruned sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import onnx

from .groups import KeepMasks
from .graph import ModelIndex
from .ops import NodeContext, OpRule
from .ops.registry import op_label

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
PARAM_TYPES = FLOAT_TYPES + (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
"""Weights: floating-point constants, and the 8- and 4-bit integer weights of quantized models
(int32 and int64 constants are biases of quantized layers or, far more often, shapes and indices)."""


@dataclass(frozen=True)
class ModelCost:
    """Parameters and MACs of a whole model."""

    params: int
    macs: int


@dataclass
class LayerCost:
    node: str
    op_type: str
    params: int
    macs: int
    channels: int | None
    """Output channels (Conv/Gemm/MatMul), shown in summaries before and after."""


def _is_param(index: ModelIndex, name: str) -> bool:
    """A weight (PARAM_TYPES): an initializer, or a Constant node's tensor."""
    if name in index.initializers:
        return index.initializers[name].data_type in PARAM_TYPES
    return name in index.constant_nodes and index.elem_types.get(name) in PARAM_TYPES


def _param_count(index: ModelIndex, names) -> int:
    return sum(math.prod(index.shape(n) or ()) for n in names if _is_param(index, n))


def layer_costs(index: ModelIndex) -> list[LayerCost]:
    """One entry per node that has weights or does multiply-accumulates."""
    costs = []
    for i, node in enumerate(index.model.graph.node):
        ctx = NodeContext(index, i)
        params = _param_count(index, set(node.input))
        macs = ctx.rule.macs(ctx)
        if params or macs:
            costs.append(LayerCost(node.name or node.output[0], op_label(node), params, macs, ctx.rule.output_channels(ctx)))
    return costs


def total_params(index: ModelIndex) -> int:
    return _param_count(index, list(index.initializers) + list(index.constant_nodes))


def total_macs(index: ModelIndex) -> int:
    return sum(c.macs for c in layer_costs(index))


def model_cost(index: ModelIndex) -> ModelCost:
    return ModelCost(total_params(index), total_macs(index))


class CostModel:
    """Prices candidate prunings of one dependency graph (see the module docstring), at the shapes
    of `index`: the dependency graph's own, or an index of the same model built with the input
    shapes it really runs at (ModelIndex.build(model, input_shapes)), so that no size counts as 1."""

    def __init__(self, dg, index: ModelIndex | None = None):
        self.dg = dg
        self.index = index or dg.index

    @cached_property
    def base(self) -> ModelCost:
        return model_cost(self.index)

    @cached_property
    def _counted_nodes(self) -> list[int]:
        """Nodes that do multiply-accumulates: the only ones whose MACs a pruning can change."""
        index = self.index
        return [i for i in range(len(index.model.graph.node)) if (ctx := NodeContext(index, i)).rule.macs(ctx)]

    def estimate(self, keep: KeepMasks) -> ModelCost:
        """The cost after keeping `keep[group_id]` channels, without doing the surgery."""
        from .surgery import kept_elements, plan_slicing

        index = self.index
        kept = kept_elements(self.dg, keep)
        if not kept:
            return self.base
        sizes = {dim: len(idx) for dim, idx in kept.items()}
        touched = {d.tensor for d in kept}
        macs = self.base.macs
        for i in self._counted_nodes:
            node = index.model.graph.node[i]
            if touched.isdisjoint(node.input) and touched.isdisjoint(node.output):
                continue
            before, after = NodeContext(index, i), NodeContext(index, i, sizes)
            macs += after.rule.macs(after) - before.rule.macs(before)
        params = self.base.params
        for slicing in plan_slicing(self.dg.index, kept):
            if _is_param(index, slicing.name):
                params += sum(math.prod(s) for s in slicing.shapes_after()) - math.prod(slicing.shape)
        for i in self._param_adding_nodes:
            ctx = NodeContext(self.dg.index, i)
            params += ctx.rule.added_params(ctx, kept)
        return ModelCost(int(params), int(macs))

    @cached_property
    def _param_adding_nodes(self) -> list[int]:
        """Nodes whose rule may add parameters when rewritten (OpRule.added_params: an exact LayerNorm)."""
        index = self.dg.index
        return [i for i in range(len(index.model.graph.node))
                if type(NodeContext(index, i).rule).added_params is not OpRule.added_params]
