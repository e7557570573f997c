"""Conv and ConvTranspose, including grouped and depthwise convolution.

With group g > 1 the input and output channels of each group are tied together, so the pruning
unit is a whole group: removing it removes Cin/g inputs and Cout/g outputs and lowers `group` by
one.  A depthwise conv (g = Cin) therefore prunes one input channel with its multiplier outputs.
"""

from __future__ import annotations

import numpy as np

from .base import IN, OUT, PARAM, Coupling, Dim, NodeContext, OpRule, RewriteContext, WeightSlot, ZeroView, numel
from .reconstruct import conv_view
from .registry import register


def link_per_channel(ctx: NodeContext, c: Coupling, slot: int, channel: "Dim") -> None:
    """An optional input holding one value per channel of `channel` (a bias, a per-channel scale
    or zero point) is sliced with it; one value for all channels (a scalar or size 1) is free."""
    if slot >= ctx.n_inputs or not ctx.input(slot):
        return
    shape = ctx.in_shape(slot)
    if shape is None or len(shape) > 1:
        return  # not understood: left pinned
    if len(shape) == 0 or shape[0] == 1:
        c.free(*ctx.in_dims(slot))
        return
    c.link(ctx.in_dim(slot, 0), channel)
    if ctx.is_const(slot):
        c.role(ctx.in_dim(slot, 0), PARAM)


def _group_pairs(c_in: int, c_out: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs tying every input channel of a group to every output channel of that group."""
    per_in, per_out = c_in // groups, c_out // groups
    ins = np.arange(c_in)
    outs = np.arange(c_out)
    a = np.concatenate([ins, (outs // per_out) * per_in])
    b = np.concatenate([(ins // per_in) * per_out, outs])
    return a, b


def _weight_zero(weight: np.ndarray, axis: int) -> np.ndarray:
    """Bool per index along `axis`: all zero there.  The leading axes are folded first (a fast
    contiguous OR) instead of moving `axis` to the front, which copied the whole weight."""
    nonzero = weight != 0
    if axis:
        nonzero = nonzero.reshape(-1, *weight.shape[axis:]).any(axis=0)
    return ~nonzero.reshape(weight.shape[axis], -1).any(axis=1)


class _ConvLike(OpRule):
    out_axis = 0  # axis of the weight that indexes output channels (per group)
    in_axis = 1
    weight_slot = 1
    bias_slot: int | None = 2
    out_params: tuple[int, ...] = ()
    """Inputs that hold one value per output channel, or one for all (quantized convs: the weight's
    scale and zero point)."""

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        weight = ctx.const(self.weight_slot)
        x_shape, y_shape = ctx.in_shape(0), ctx.out_shape(0)
        if weight is None or x_shape is None or y_shape is None or len(ctx.node.output) != 1:
            # Say which: an unknown input shape (after an op shape inference cannot follow) is
            # not a run-time weight.
            why = "has a weight computed at run time" if weight is None else "has an input or output of unknown shape"
            c.pin(ctx.in_dim(0, 1), f"{ctx.label} {why}")
            return c
        groups = int(ctx.attr("group", 1))
        c.link(ctx.in_dim(0, 0), ctx.out_dim(0, 0))
        c_in = weight.shape[self.in_axis] * (groups if self.in_axis == 1 else 1)
        c_out = weight.shape[self.out_axis] * (groups if self.out_axis == 1 else 1)
        w_in, w_out = ctx.in_dim(self.weight_slot, self.in_axis), ctx.in_dim(self.weight_slot, self.out_axis)
        if groups == 1:
            c.link(ctx.in_dim(0, 1), w_in)
            c.role(w_in, IN)
            c.link(w_out, ctx.out_dim(0, 1))
            c.role(w_out, OUT)
        else:
            a, b = _group_pairs(c_in, c_out, groups)
            c.link(ctx.in_dim(0, 1), ctx.out_dim(0, 1), a, b)
            # Whole groups go, so the weight's full-size axis is sliced and the per-group axis stays.
            full, per_group = (w_out, w_in) if self.out_axis == 0 else (w_in, w_out)
            c.link(full, ctx.out_dim(0, 1) if self.out_axis == 0 else ctx.in_dim(0, 1))
            c.role(full, OUT if self.out_axis == 0 else IN)
            c.free(per_group)
        for k in range(2, weight.ndim):
            c.free(ctx.in_dim(self.weight_slot, k))
        for slot in ([self.bias_slot] if self.bias_slot is not None else []) + list(self.out_params):
            link_per_channel(ctx, c, slot, ctx.out_dim(0, 1))
        return c

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        """Zero where the bias is zero and either the filter is zero or, with group > 1, every
        input channel of the conv group is zero: a group's outputs read only its own inputs (and
        zero padding), so this is exact.  Without it a grouped ConvTranspose, whose full-size
        weight axis consumes (role IN) rather than produces, could never show a dead channel."""
        weight = ctx.const(1)
        groups = int(ctx.attr("group", 1))
        if self.out_axis == 0:
            dead = _weight_zero(weight, 0)
        else:  # ConvTranspose: [Cin, Cout/g, ...] -> output channel o of group k is column o % (Cout/g) of rows in group k
            per_out = weight.shape[1]
            per_in = weight.shape[0] // groups
            dead = np.array([not np.any(weight[(o // per_out) * per_in:(o // per_out + 1) * per_in, o % per_out] != 0)
                             for o in range(per_out * groups)])
        if groups > 1 and 0 in views:
            dead = dead | views[0].value()
        if ctx.input(2):
            dead &= ctx.const(2) == 0
        return dead

    def weights(self, ctx: NodeContext) -> list[WeightSlot]:
        return [WeightSlot(self.weight_slot, depthwise=self.is_depthwise(ctx))]

    def is_depthwise(self, ctx: NodeContext) -> bool:
        """One filter per input channel: group = C > 1 and a single input channel per group."""
        groups = int(ctx.attr("group", 1))
        shape = ctx.in_shape(self.weight_slot) or ()
        if groups <= 1 or len(shape) < 3:
            return False
        return shape[1] == 1 if self.out_axis == 0 else shape[0] == groups

    def output_channels(self, ctx: NodeContext) -> int | None:
        out = ctx.out_shape(0)
        return out[1] if out is not None and len(out) > 1 else None

    def rewrite(self, ctx: RewriteContext) -> None:
        groups = int(ctx.attr("group", 1))
        if groups == 1:
            return
        x_dim = ctx.in_dim(0, 1)
        old = ctx.in_shape(0)[1]
        new = ctx.new_size(x_dim, old)
        if new != old:
            ctx.set_attr("group", groups * new // old)


@register("Conv")
class ConvRule(_ConvLike):
    out_axis, in_axis = 0, 1

    def macs(self, ctx: NodeContext) -> int:
        """Each output element reads one filter: [Cin/g, k...]."""
        out, weight = ctx.out_shape(0), ctx.in_shape(self.weight_slot)
        return numel(out) * numel(weight[1:]) if out is not None and weight is not None else 0

    def linear_view(self, ctx: NodeContext):
        return conv_view(ctx)


@register("ConvTranspose")
class ConvTransposeRule(_ConvLike):
    out_axis, in_axis = 1, 0

    def macs(self, ctx: NodeContext) -> int:
        """Each input element is scattered through [Cout/g, k...] weights."""
        x, weight = ctx.in_shape(0), ctx.in_shape(1)
        return numel(x) * numel(weight[1:]) if x is not None and weight is not None else 0
