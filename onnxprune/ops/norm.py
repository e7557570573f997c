"""Normalisation layers.  BatchNormalization and InstanceNormalization treat channels
independently, so they prune exactly; LayerNormalization over the channel axis mixes channels
(the mean and variance change when one is removed): it prunes exactly by being rewritten so its
statistics divide by the original width (see LayerNormRule)."""

from __future__ import annotations

import numpy as np
import onnx

from .base import BN_SCALE, PARAM, Coupling, NodeContext, OpRule, RewriteContext, RewriteOptions, ZeroView
from .build import LayerNormConstants, layer_norm_over_width_nodes
from .registry import register


def _per_channel(ctx: NodeContext, slots: range, scale_role: str) -> Coupling:
    c = Coupling()
    rank = ctx.in_rank(0)
    if rank is None or rank < 2 or len([o for o in ctx.node.output if o]) != 1:
        return c
    for k in range(rank):
        c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
    for slot in slots:
        if ctx.input(slot):
            c.link(ctx.in_dim(slot, 0), ctx.in_dim(0, 1))
            c.role(ctx.in_dim(slot, 0), scale_role if slot == 1 else PARAM)
    return c


@register("BatchNormalization")
class BatchNormRule(OpRule):
    def couple(self, ctx: NodeContext) -> Coupling:
        return _per_channel(ctx, range(1, 5), BN_SCALE)

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        """Zero where gamma and beta are zero, or where a zero input maps to zero."""
        gamma, beta, mean, var = (ctx.const(s) for s in range(1, 5))
        if any(v is None for v in (gamma, beta, mean, var)):
            return np.zeros(n, dtype=bool)
        eps = np.float32(ctx.attr("epsilon", 1e-5))
        with np.errstate(all="ignore"):
            at_zero = gamma * (np.float32(0) - mean) / np.sqrt(var + eps) + beta
        killed = (gamma == 0) & (beta == 0)
        x_zero = views[0].value() if 0 in views else np.zeros(n, dtype=bool)
        return killed | (x_zero & (at_zero == 0))

    def channel_affine(self, ctx: NodeContext) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, shift) per channel: y = scale * x + shift, for scale-aware importance."""
        gamma, beta, mean, var = (ctx.const(s) if ctx.input(s) else None for s in range(1, 5))
        if any(v is None for v in (gamma, beta, mean, var)):
            return None
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + float(ctx.attr("epsilon", 1e-5)))
        return scale, beta.astype(np.float64) - mean * scale


@register("InstanceNormalization")
class InstanceNormRule(OpRule):
    """y = gamma * (x - mean_hw) / std_hw + beta: a zero input channel gives beta."""

    def couple(self, ctx: NodeContext) -> Coupling:
        return _per_channel(ctx, range(1, 3), BN_SCALE)

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        gamma, beta = ctx.const(1), ctx.const(2)
        if gamma is None or beta is None:
            return np.zeros(n, dtype=bool)
        x_zero = views[0].value() if 0 in views else np.zeros(n, dtype=bool)
        return ((gamma == 0) | x_zero) & (beta == 0)


_EXACT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


def _layer_norm_axis(ctx: NodeContext) -> int | None:
    """The normalised axis when it is the last one only (what the exact rewrite handles), else None."""
    rank = ctx.in_rank(0)
    if rank is None or int(ctx.attr("axis", -1)) % rank != rank - 1:
        return None
    return rank - 1


@register("LayerNormalization")
class LayerNormRule(OpRule):
    """y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta over the last axis.

    The channel axis is coupled from input to output with gamma and beta (per-channel parameters),
    and the input's channels are *consumed* (each enters the mean and the variance).  After
    pruning, surgery rewrites the node so its statistics still divide by the original width N
    (build.layer_norm_over_width_nodes: padded back to N with zeros, normalised, sliced): a removed
    channel that was exactly zero is a zero there too, so removing dead channels keeps every output.  An output channel is zero only
    where gamma and beta both are (otherwise it is -mean/std * gamma + beta), which is what makes a
    residual channel dead.  With RewriteOptions.inexact_layernorm the node is only sliced
    (statistics over the pruned width, Torch-Pruning's behaviour), which changes outputs.
    Normalising over several axes, extra outputs (Mean, InvStdDev) or a type other than float32 /
    float64 keep the normalised axes pinned."""

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        rank = ctx.in_rank(0)
        if rank is None:
            return c
        axis = int(ctx.attr("axis", -1)) % rank
        for k in range(axis):
            c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
        last = _layer_norm_axis(ctx)
        why = self._blocked(ctx, last)
        if why is None:
            c.link(ctx.in_dim(0, last), ctx.out_dim(0, last))
            c.consume(ctx.in_dim(0, last))  # every channel enters mean and variance
            for slot in (1, 2):
                if ctx.input(slot):
                    dims = ctx.in_dims(slot)
                    for dim in dims[:-1]:
                        c.free(dim)
                    c.link(dims[-1], ctx.in_dim(0, last))
                    if dims[-1].is_const:  # else a constant computed from one (legacy's Identity of a shared one)
                        c.role(dims[-1], PARAM)
            return c
        for k in range(axis, rank):
            c.pin(ctx.in_dim(0, k), why)
            c.pin(ctx.out_dim(0, k), why)
        for slot in (1, 2):
            for dim in ctx.in_dims(slot) if ctx.input(slot) else []:
                c.pin(dim, why)
        return c

    @staticmethod
    def _blocked(ctx: NodeContext, last: int | None) -> str | None:
        if last is None:
            return f"{ctx.label} normalises over several axes (removing a channel changes mean and variance)"
        if len([o for o in ctx.node.output if o]) != 1:
            return f"{ctx.label} also outputs its mean or inverse std (only the plain output is rewritten exactly)"
        if ctx.index.elem_types.get(ctx.input(0)) not in _EXACT_TYPES:
            return f"{ctx.label} is not float32 or float64 (the exact rewrite of its statistics computes in the input's type)"
        for slot in (1, 2):
            shape = ctx.in_shape(slot) if ctx.input(slot) else None
            if ctx.input(slot) and (ctx.const(slot) is None or not shape or any(s != 1 for s in shape[:-1])):
                return f"{ctx.label}'s scale or bias is not a per-channel constant"
        return None

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        """Zero exactly where gamma and beta are both zero: a zero input channel gives
        -mean/std * gamma + beta, not zero."""
        gamma = ctx.const(1)
        beta = ctx.const(2) if ctx.input(2) else np.zeros_like(gamma) if gamma is not None else None
        if gamma is None or beta is None:
            return np.zeros(n, dtype=bool)
        gamma, beta = (np.broadcast_to(v.reshape(-1), (n,)) if v.size in (1, n) else np.ones(n) for v in (gamma, beta))
        return (gamma == 0) & (beta == 0)

    def _pruned(self, ctx: NodeContext, kept) -> tuple[int, int] | None:
        """(N, N') when the normalised axis loses channels, else None."""
        last = _layer_norm_axis(ctx)
        if last is None:
            return None
        n = ctx.in_shape(0)[last]
        idx = kept.get(ctx.in_dim(0, last))
        return None if idx is None or not isinstance(n, int) or len(idx) == n else (n, len(idx))

    def inexact(self, ctx: NodeContext, kept, options: RewriteOptions) -> bool:
        return options.inexact_layernorm and self._pruned(ctx, kept) is not None

    def rewrite(self, ctx: RewriteContext) -> None:
        widths = self._pruned(ctx, ctx.kept)
        if widths is None or ctx.options.inexact_layernorm:
            return  # inexact: the sliced gamma and beta are all the node needs
        n, n_kept = widths
        rank = ctx.in_rank(0)
        node = ctx.writer.model.graph.node[ctx.i]
        prefix = f"{node.name or node.output[0]}/over_width_{n}/"
        add = ctx.writer.add_constant
        int64 = lambda name, values: add(prefix + name, np.array(values, dtype=np.int64))  # noqa: E731
        pads = lambda name, r: int64(name, [0] * (2 * r - 1) + [n - n_kept])  # noqa: E731  (zeros after the last axis)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        consts = LayerNormConstants(pads("pads", rank), pads("scale_pads", ctx.in_rank(1)),
                                    pads("bias_pads", ctx.in_rank(2)) if bias else None,
                                    int64("starts", [0]), int64("ends", [n_kept]), int64("axes", [-1]))
        nodes = layer_norm_over_width_nodes(node.input[0], node.input[1], bias, consts, node.output[0], prefix,
                                            float(ctx.attr("epsilon", 1e-5)))
        nodes[-1].name = node.name  # the node that writes the output keeps the name, and all the origin metadata
        for new in nodes:
            new.metadata_props.extend(node.metadata_props)
            new.doc_string = node.doc_string
        ctx.writer.replace_node(ctx.i, nodes)
