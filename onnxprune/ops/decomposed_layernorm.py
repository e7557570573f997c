"""LayerNorm written out by the legacy PyTorch exporter below opset 17, pruned along the
normalised (residual) axis exactly:

    mean = ReduceMean(x, -1);  d = Sub(x, mean);  var = ReduceMean(Pow(d, 2), -1)
    y = Div(d, Sqrt(Add(var, eps)))  [-> Mul(gamma) -> Add(beta)]

After pruning, x holds N' of its N channels and the removed ones were exactly zero.  Over the
original width, mean_N = k * mean' (k = N'/N), and each removed channel adds (0 - mean_N)^2 to the
sum of squares, so var_N = k * mean'(d^2) + (1 - k) * mean_N^2.  Surgery scales the first
ReduceMean's output by k, and rewrites the second as that sum (build.scaled_mean_nodes,
build.variance_over_width_nodes): removing dead channels leaves every output unchanged, as for
LayerNormalization itself (ops/norm.py).  Only this exact chain is recognised; any other
ReduceMean over a channel axis stays pinned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .base import NodeContext, RewriteContext
from .build import scaled_mean_nodes, variance_over_width_nodes
from .rmsnorm import _only_consumer, _scalar_slot


@dataclass(frozen=True)
class DecomposedLayerNorm:
    axis: int
    first: bool
    """This ReduceMean is the mean of x (else the mean of the squared deviations)."""
    mean: str
    """The output of the chain's first ReduceMean (the mean of x)."""


def _last_axis_mean(ctx: NodeContext, node_i: int) -> bool:
    """Node `node_i` is a ReduceMean over the last axis only, keeping dims."""
    node = ctx.index.model.graph.node[node_i]
    if node.op_type != "ReduceMean":
        return False
    other = NodeContext(ctx.index, node_i)
    rank = other.in_rank(0)
    axes = other.attr("axes")
    if axes is None and other.input(1):
        value = other.const(1)
        axes = None if value is None else value.reshape(-1).tolist()
    return rank is not None and axes is not None and len(axes) == 1 and int(axes[0]) % rank == rank - 1 \
        and bool(int(other.attr("keepdims", 1)))


def _chain(ctx: NodeContext, mean_i: int) -> tuple[int, int] | None:
    """(Sub, second ReduceMean) of the chain starting at the ReduceMean `mean_i`, or None."""
    index, graph = ctx.index, ctx.index.model.graph
    mean_node = graph.node[mean_i]
    x, mean = mean_node.input[0], mean_node.output[0]
    sub_i = _only_consumer(ctx, mean, "Sub")
    if sub_i is None or list(graph.node[sub_i].input) != [x, mean]:
        return None
    d = graph.node[sub_i].output[0]
    users = index.consumers.get(d, [])
    if len(users) != 2 or d in index.graph_outputs:
        return None
    by_type = {graph.node[i].op_type: (i, slot) for i, slot in users}
    if set(by_type) != {"Pow", "Div"} or by_type["Pow"][1] != 0 or by_type["Div"][1] != 0:
        return None
    pow_i, div_i = by_type["Pow"][0], by_type["Div"][0]
    exponent = index.const(graph.node[pow_i].input[1])
    if exponent is None or exponent.size != 1 or float(exponent.reshape(-1)[0]) != 2.0:
        return None
    var_i = _only_consumer(ctx, graph.node[pow_i].output[0], "ReduceMean")
    if var_i is None or not _last_axis_mean(ctx, var_i):
        return None
    add_i = _only_consumer(ctx, graph.node[var_i].output[0], "Add")
    if add_i is None or _scalar_slot(ctx, add_i, graph.node[var_i].output[0]) is None:
        return None
    sqrt_i = _only_consumer(ctx, graph.node[add_i].output[0], "Sqrt")
    if sqrt_i is None or list(graph.node[div_i].input) != [d, graph.node[sqrt_i].output[0]]:
        return None
    return sub_i, var_i


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def match_decomposed_layer_norm(ctx: NodeContext) -> DecomposedLayerNorm | None:
    """The decomposed LayerNorm around this ReduceMean (as its first or second mean), or None."""
    if not _last_axis_mean(ctx, ctx.i) or ctx.index.elem_types.get(ctx.input(0)) not in _FLOATS:
        return None
    rank = ctx.in_rank(0)
    graph = ctx.index.model.graph
    if _chain(ctx, ctx.i) is not None:
        return DecomposedLayerNorm(rank - 1, True, ctx.output(0))
    pow_i = ctx.index.producer.get(ctx.input(0))
    sub_i = None if pow_i is None else ctx.index.producer.get(graph.node[pow_i].input[0])
    mean_i = None if sub_i is None or graph.node[sub_i].op_type != "Sub" else ctx.index.producer.get(graph.node[sub_i].input[1])
    if mean_i is None or not _last_axis_mean(ctx, mean_i):
        return None
    chain = _chain(ctx, mean_i)
    if chain is None or chain[1] != ctx.i:
        return None
    return DecomposedLayerNorm(rank - 1, False, graph.node[mean_i].output[0])


def rewrite_decomposed_layer_norm(ctx: RewriteContext, norm: DecomposedLayerNorm) -> None:
    """Make this ReduceMean's result the one over the original width (see the module docstring)."""
    old = ctx.in_shape(0)[norm.axis]
    kept = ctx.kept_of(ctx.in_dim(0, norm.axis))
    if kept is None or not isinstance(old, int) or len(kept) == old:
        return
    k = len(kept) / old
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ctx.index.elem_types[ctx.input(0)])
    node = ctx.writer.model.graph.node[ctx.i]
    prefix = f"{node.name or node.output[0]}/over_width_{old}/"
    kept_fraction = ctx.writer.add_constant(prefix + "kept", np.array(k, dtype=dtype))
    if norm.first:
        ctx.writer.replace_node(ctx.i, scaled_mean_nodes(node, kept_fraction, prefix))
        return
    removed = ctx.writer.add_constant(prefix + "removed", np.array(1 - k, dtype=dtype))
    ctx.writer.replace_node(ctx.i, variance_over_width_nodes(node, norm.mean, kept_fraction, removed, prefix))
