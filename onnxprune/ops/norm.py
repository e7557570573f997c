"""Normalisation layers.  BatchNormalization and InstanceNormalization treat channels
independently, so they prune exactly; LayerNormalization over the channel axis mixes channels
(the mean and variance change when one is removed) and is left pinned with that reason."""

from __future__ import annotations

import numpy as np

from .base import BN_SCALE, PARAM, Coupling, NodeContext, OpRule, ZeroView
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


@register("LayerNormalization")
class LayerNormRule(OpRule):
    """Axes before `axis` are independent rows; the normalised axes are pinned."""

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        rank = ctx.in_rank(0)
        if rank is None:
            return c
        axis = int(ctx.attr("axis", -1)) % rank
        for k in range(axis):
            c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
        why = f"{ctx.label} normalises over this axis (removing a channel changes mean and variance)"
        for k in range(axis, rank):
            c.pin(ctx.in_dim(0, k), why)
            c.pin(ctx.out_dim(0, k), why)
        for slot in (1, 2):
            for dim in ctx.in_dims(slot) if ctx.input(slot) else []:
                c.pin(dim, why)
        return c
