"""RMSNorm written out by the exporters, pruned along the normalised (residual) axis exactly.

    y = w * x / sqrt(mean(x^2) + eps)
    dynamo: Pow(x, 2) -> ReduceMean(-1) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(x, .) -> Mul(w, .)
    legacy: Pow(x, 2) -> ReduceMean(-1) -> Add(eps) -> Sqrt -> Div(1, .) -> Mul(x, .) [-> Cast] -> Mul(w, .)

A mean over fewer channels divides by the new width N' instead of the original N.  With
k = N'/N, sum/N + eps = k * (sum/N' + eps/k), so 1/sqrt(sum/N + eps) = (1/sqrt(k)) / sqrt(mean' + eps/k):
surgery writes eps/k into the Add and folds 1/sqrt(k) into the Div's numerator (legacy) or into the
weight w (dynamo).  Removing channels that are exactly zero leaves every output unchanged, so the
residual stream of Llama-style models prunes under `--threshold 0`.  Only this exact chain is
recognised; any other ReduceMean over a channel axis stays pinned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from .base import NodeContext, RewriteContext


@dataclass(frozen=True)
class RmsNorm:
    axis: int
    eps: tuple[int, int]           # (node, slot) of the Add's epsilon
    scale: tuple[int, int]         # (node, slot) of the constant 1/sqrt(k) is folded into
    scale_is_weight: bool          # the weight w (per channel, sliced first) or the Div's scalar numerator


def _only_consumer(ctx: NodeContext, name: str, op_type: str) -> int | None:
    consumers = ctx.index.consumers.get(name, [])
    if len(consumers) != 1 or name in ctx.index.graph_outputs:
        return None
    node_i, _ = consumers[0]
    return node_i if ctx.index.model.graph.node[node_i].op_type == op_type else None


def _scalar_slot(ctx: NodeContext, node_i: int, other: str) -> int | None:
    """The slot of the scalar constant operand of a binary node whose other operand is `other`."""
    node = ctx.index.model.graph.node[node_i]
    for slot, name in enumerate(node.input):
        if name != other and ctx.index.is_const(name):
            value = ctx.index.const(name)
            if value is not None and value.size == 1:
                return slot
    return None


def match_rms_norm(ctx: NodeContext) -> RmsNorm | None:
    """The RMSNorm chain around this ReduceMean, or None."""
    index, graph = ctx.index, ctx.index.model.graph
    rank = ctx.in_rank(0)
    axes = ctx.attr("axes")
    if axes is None and ctx.input(1):
        value = ctx.const(1)
        axes = None if value is None else value.reshape(-1).tolist()
    if rank is None or axes is None or len(axes) != 1 or int(axes[0]) % rank != rank - 1 or not int(ctx.attr("keepdims", 1)):
        return None
    pow_i = index.producer.get(ctx.input(0))
    if pow_i is None or graph.node[pow_i].op_type != "Pow":
        return None
    exponent = index.const(graph.node[pow_i].input[1])
    if exponent is None or exponent.size != 1 or float(exponent.reshape(-1)[0]) != 2.0:
        return None
    x = graph.node[pow_i].input[0]
    add_i = _only_consumer(ctx, ctx.output(0), "Add")
    eps_slot = None if add_i is None else _scalar_slot(ctx, add_i, ctx.output(0))
    sqrt_i = None if eps_slot is None else _only_consumer(ctx, graph.node[add_i].output[0], "Sqrt")
    if sqrt_i is None:
        return None
    root = graph.node[sqrt_i].output[0]
    div_i = _only_consumer(ctx, root, "Div")
    recip_i = _only_consumer(ctx, root, "Reciprocal")
    if div_i is not None:
        num_slot = _scalar_slot(ctx, div_i, root)
        if num_slot != 0 or graph.node[div_i].input[1] != root:
            return None
        inverse = graph.node[div_i].output[0]
    elif recip_i is not None:
        inverse = graph.node[recip_i].output[0]
    else:
        return None
    mul_i = _only_consumer(ctx, inverse, "Mul")
    if mul_i is None or x not in graph.node[mul_i].input:
        return None
    if div_i is not None:
        return RmsNorm(rank - 1, (add_i, eps_slot), (div_i, 0), False)
    normed = graph.node[mul_i].output[0]
    weight_i = _only_consumer(ctx, normed, "Mul")
    if weight_i is None:
        return None
    node = graph.node[weight_i]
    slot = next((s for s, name in enumerate(node.input) if name != normed and index.is_const(name)), None)
    shape = None if slot is None else index.shape(node.input[slot])
    if shape is None or len(shape) != 1:
        return None
    return RmsNorm(rank - 1, (add_i, eps_slot), (weight_i, slot), True)


def _current(ctx: RewriteContext, node_i: int, slot: int) -> np.ndarray:
    """A constant input as surgery has written it so far (sliced, possibly a per-use copy)."""
    name = ctx.writer.model.graph.node[node_i].input[slot]
    tensor = ctx.writer.inits.get(name)
    if tensor is not None and tensor.data_type:  # written by surgery (placeholders have no type yet)
        return numpy_helper.to_array(tensor)
    return ctx.index.const(name)


def rewrite_rms_norm(ctx: RewriteContext, norm: RmsNorm) -> None:
    """Rescale eps and the output so the mean still divides by the original width."""
    old = ctx.in_shape(0)[norm.axis]
    kept = ctx.kept_of(ctx.in_dim(0, norm.axis))
    if kept is None or len(kept) == old:
        return
    k = len(kept) / old
    eps = _current(ctx, *norm.eps)
    ctx.writer.set_input_const(norm.eps[0], norm.eps[1], (eps / k).astype(eps.dtype))
    scale = _current(ctx, *norm.scale)
    ctx.writer.set_input_const(norm.scale[0], norm.scale[1], (scale / np.sqrt(k)).astype(scale.dtype))
