"""The attention core: MatMul between two activations (Q.K^T, attn.V), IsNaN (the SDPA
decomposition's guard after Softmax), and which factor of a head split a group follows.

Y[..., m, n] = sum_k A[..., m, k] B[..., k, n]: batch axes broadcast numpy style and pass to Y,
A's rows (m) and B's columns (n) go to Y, and the contracted axis k of A and of B hold the same
channels (removing element k from both drops exactly the term A[..., k] B[k, ...]).

Heads: attention reshapes a projection's output [.., C] to [.., H, D] and moves H to a batch axis of
Q.K^T and attn.V.  A Reshape that splits (or merges) several axes can follow only one factor
(depgraph's choices); the batch axes of an activation MatMul are marked *preferred*, so a choice
follows the factor that reaches them: whole heads (and, for grouped-query attention, the kv group
with every query head that reads it), rather than head_dim.
"""

from __future__ import annotations

import numpy as np

from .base import Coupling, NodeContext, OpRule, ZeroView
from .elementwise import couple_unary
from .registry import register


def couple_activation_matmul(ctx: NodeContext) -> Coupling:
    """Couplings of MatMul(A, B) where neither input is a constant (both of rank >= 2)."""
    c = Coupling()
    a, b, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if a is None or b is None or y is None or len(a) < 2 or len(b) < 2 or len(y) != max(len(a), len(b)):
        return c
    batch = len(y) - 2
    for slot, shape in ((0, a), (1, b)):
        shift = batch - (len(shape) - 2)
        for k in range(len(shape) - 2):
            d_in, d_out = ctx.in_dim(slot, k), ctx.out_dim(0, k + shift)
            if shape[k] == 1 and y[k + shift] != 1:
                c.free(d_in)
            else:
                c.link(d_in, d_out)
    c.prefer(*[ctx.out_dim(0, k) for k in range(batch)])
    c.link(ctx.in_dim(0, len(a) - 2), ctx.out_dim(0, batch))      # m
    c.link(ctx.in_dim(1, len(b) - 1), ctx.out_dim(0, batch + 1))  # n
    c.link(ctx.in_dim(0, len(a) - 1), ctx.in_dim(1, len(b) - 2))  # k, contracted
    c.consume(ctx.in_dim(0, len(a) - 1), ctx.in_dim(1, len(b) - 2))
    return c


def activation_matmul_zero(views: dict[int, ZeroView], n: int) -> np.ndarray:
    """An output element is zero where the slice of A or of B it reads is all zero."""
    if not views:
        return np.zeros(n, dtype=bool)
    return np.logical_or.reduce([v.value() for v in views.values()])


@register("IsNaN")
class IsNaNRule(OpRule):
    """isnan(0) is False: a zero element stays a zero (False) element."""

    zero_mode = "first"

    def couple(self, ctx: NodeContext) -> Coupling:
        return couple_unary(ctx)


def _dynamic_split(src, dst):
    """(i, j, blocks of src[i:] -> dst[j:]) for the shortest leading parts src[:i] -> dst[:j] that
    both hold a dynamic size (a batch merged with heads or sequence: `[batch, H, N, D] -> [?, N, D]`,
    `[batch, N, C] -> [N*batch, C]`) and after which the reshape is understood axis by axis."""
    from .layout import reshape_blocks

    def dynamic(sizes) -> bool:
        return any(not isinstance(s, int) for s in sizes)

    for total in range(2, len(src) + len(dst) + 1):
        for i in range(1, min(total, len(src) + 1)):
            j = total - i
            if j > len(dst) or not (dynamic(src[:i]) and dynamic(dst[:j])):
                continue
            rest = reshape_blocks(src[i:], dst[j:])
            if rest is not None:
                return i, j, [([a + i for a in ia], [b + j for b in jb]) for ia, jb in rest]
    return None


def _restored_downstream(ctx: NodeContext, axes: range) -> bool:
    """The merged output is split back, through Transposes that keep axis 0, by a Reshape whose
    target reads `axes` from this node's input with Shape (the dynamo exporter's `k.transpose`):
    then a pruned head count flows through the merged axis by itself."""
    from .values import DimEntry

    index, name, source = ctx.index, ctx.output(0), ctx.input(0)
    for _ in range(8):
        consumers = index.consumers.get(name, [])
        if len(consumers) != 1 or name in index.graph_outputs:
            return False
        node_i, slot = consumers[0]
        node = index.model.graph.node[node_i]
        inner = NodeContext(index, node_i)
        if node.op_type == "Transpose" and slot == 0:
            perm = inner.attr("perm")
            if not perm or int(perm[0]) != 0:
                return False
            name = node.output[0]
            continue
        if node.op_type != "Reshape" or slot != 0:
            return False
        entries = inner.entries(1)
        return entries is not None and all(
            k < len(entries) and isinstance(entries[k], DimEntry) and entries[k][:2] == (source, k) and entries[k].factor == 1
            for k in axes)
    return False


def couple_dynamic_prefix(ctx: NodeContext, src, dst, entries) -> Coupling | None:
    """A Reshape whose leading axes merge or split a dynamic size (see `_dynamic_split`): the rest
    couples axis by axis; the leading axes of unknown size are free; a known one merged into the
    dynamic axis (the head count) is free only when a later Reshape restores it from this input's
    shape, a known one split out of it only when the target reads it from a tensor's shape (then
    `_link_dim_entries` couples it); otherwise it is pinned."""
    from .layout import couple_blocks
    from .values import DimEntry

    found = _dynamic_split(src, dst)
    if found is None:
        return None
    i, j, blocks = found
    c = couple_blocks(ctx, blocks, src, dst)
    restored = _restored_downstream(ctx, range(i))
    for k in range(i):
        if not isinstance(src[k], int) or src[k] == 1 or restored:
            c.free(ctx.in_dim(0, k))
        else:
            c.pin(ctx.in_dim(0, k), f"{ctx.label} merges this axis into a dynamic one")
    for k in range(j):
        if not isinstance(dst[k], int) or dst[k] == 1:
            c.free(ctx.out_dim(0, k))
        elif not isinstance(entries[k], DimEntry):
            c.pin(ctx.out_dim(0, k), f"{ctx.label} splits this axis out of a dynamic one")
    return c
