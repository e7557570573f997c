"""Ops that work per channel over spatial axes: pooling, Resize/Upsample, Pad, reductions, Softmax."""

from __future__ import annotations

import numpy as np

from .base import Coupling, NodeContext, OpRule, RewriteContext, ZeroView
from .registry import register
from .rmsnorm import match_rms_norm, rewrite_rms_norm
from .values import DimEntry, rewrite_const_entries


def _link_axes(ctx: NodeContext, axes, c: Coupling | None = None) -> Coupling:
    c = c or Coupling()
    for k in axes:
        c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
    return c


@register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
class PoolRule(OpRule):
    """Batch and channel pass through; MaxPool's optional indices output encodes flat NCHW
    positions (channel included), so a node that returns it is left pinned."""

    zero_mode = "first"

    def couple(self, ctx: NodeContext) -> Coupling:
        if len([o for o in ctx.node.output if o]) != 1 or (ctx.in_rank(0) or 0) < 2:
            return Coupling()
        return _link_axes(ctx, (0, 1))


def _resize_targets(ctx: NodeContext) -> tuple[np.ndarray | None, list | None]:
    """(scales, symbolic sizes) for Resize of any opset (Resize-10: (X, scales))."""
    if ctx.n_inputs == 2:
        return ctx.const(1), None
    scales = ctx.const(2) if ctx.input(2) else None
    sizes = ctx.entries(3) if ctx.input(3) else None
    return scales, sizes


def _upsample_targets(ctx: NodeContext) -> tuple[np.ndarray | None, list | None]:
    scales = ctx.const(1) if ctx.input(1) else np.array(ctx.attr("scales", []), dtype=np.float32)
    return scales, None


def _keeps_size(entry, tensor: str, axis: int, size) -> bool:
    """A Resize target element that leaves axis `axis` of `tensor` as it is: read from that very
    axis (it then follows pruning), or a constant equal to its size."""
    if isinstance(entry, DimEntry):
        return (entry.tensor, entry.axis, entry.factor) == (tensor, axis, 1)
    return entry.value == size


@register("Resize")
class ResizeRule(OpRule):
    zero_mode = "first"
    targets = staticmethod(_resize_targets)

    def shape_sink(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 3

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        in_shape = ctx.in_shape(0)
        scales, sizes = self.targets(ctx)
        if in_shape is None:
            return c
        if ctx.attr("axes") is not None:
            # Resize-18 `axes`: scales/sizes cover only the listed axes (pinned here); every other
            # axis keeps its size and content, so it passes through exactly.
            listed = {int(a) % len(in_shape) for a in ctx.attr("axes")}
            return _link_axes(ctx, [k for k in range(len(in_shape)) if k not in listed], c)
        for k in range(len(in_shape)):
            if scales is not None and scales.size == len(in_shape) and scales[k] == 1:
                c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
            elif sizes is not None and len(sizes) == len(in_shape) and _keeps_size(sizes[k], ctx.input(0), k, in_shape[k]):
                c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
        return c

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        """A zero channel resizes to zero, except that tf_crop_and_resize fills points outside the
        input with `extrapolation_value`: when that is not 0 the channel is no longer zero."""
        mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
        if mode == "tf_crop_and_resize" and float(ctx.attr("extrapolation_value", 0.0)) != 0.0:
            return np.zeros(n, dtype=bool)
        return super().zero(ctx, views, n)

    def rewrite(self, ctx: RewriteContext) -> None:
        """Rewrite a constant size of a pruned axis.  With `axes`, sizes has one entry per listed
        axis (all pinned), so there is nothing to rewrite and positions are not output axes."""
        _, sizes = self.targets(ctx)
        if sizes is not None and ctx.attr("axes") is None:
            rewrite_const_entries(ctx, sizes)


@register("Upsample")
class UpsampleRule(ResizeRule):
    targets = staticmethod(_upsample_targets)

    def shape_sink(self, ctx: NodeContext, slot: int) -> bool:
        return False


@register("Pad")
class PadRule(OpRule):
    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        rank = ctx.in_rank(0)
        pads = ctx.const(1) if ctx.n_inputs > 1 and ctx.input(1) else np.array(ctx.attr("pads", []) or [], dtype=np.int64)
        if rank is None or pads is None or ctx.n_inputs > 3:  # opset-18 `axes` input: keep it simple, pin
            return c
        if pads.size != 2 * rank:
            return c
        return _link_axes(ctx, [k for k in range(rank) if pads[k] == 0 and pads[k + rank] == 0], c)

    def zero(self, ctx, views, n):
        mode = ctx.attr("mode", "constant")
        value = ctx.const(2) if ctx.n_inputs > 2 and ctx.input(2) else np.array(ctx.attr("value", 0.0))
        if mode == "constant" and (value is None or np.any(value != 0)):
            return np.zeros(n, dtype=bool)
        return views[0].value() if 0 in views else np.zeros(n, dtype=bool)


def _reduce_axes(ctx: NodeContext, rank: int) -> list[int] | None:
    if ctx.attr("axes") is not None:
        axes = ctx.attr("axes")
    elif ctx.n_inputs > 1 and ctx.input(1):
        value = ctx.const(1)
        if value is None:
            return None
        axes = value.tolist()
    else:
        return [] if int(ctx.attr("noop_with_empty_axes", 0)) else list(range(rank))
    return sorted(int(a) % rank for a in axes)


@register("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare")
class ReduceRule(OpRule):
    """Axes not reduced pass through; a reduced axis is pinned (a mean over channels changes)."""

    zero_mode = "first"

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        rank = ctx.in_rank(0)
        axes = None if rank is None else _reduce_axes(ctx, rank)
        if axes is None:
            return c
        norm = match_rms_norm(ctx) if ctx.node.op_type == "ReduceMean" else None
        if norm is not None:  # RMSNorm: the mean is rescaled after pruning (see ops/rmsnorm.py)
            c.consume(ctx.in_dim(0, norm.axis))  # x^2 of every channel enters the mean
            for k in range(rank):
                if k == norm.axis:
                    c.free(ctx.in_dim(0, k), ctx.out_dim(0, k))
                else:
                    c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
            return c
        keep = int(ctx.attr("keepdims", 1))
        out_axis = 0
        for k in range(rank):
            if k in axes:
                c.pin(ctx.in_dim(0, k), f"{ctx.label} reduces over this axis")
                if keep:
                    c.free(ctx.out_dim(0, out_axis))
                    out_axis += 1
                continue
            c.link(ctx.in_dim(0, k), ctx.out_dim(0, out_axis))
            out_axis += 1
        return c

    def rewrite(self, ctx: RewriteContext) -> None:
        norm = match_rms_norm(ctx) if ctx.node.op_type == "ReduceMean" else None
        if norm is not None:
            rewrite_rms_norm(ctx, norm)



@register("ReduceLogSumExp")
class LogSumExpRule(ReduceRule):
    """log(sum(exp(0))) is not 0: zeros do not propagate."""

    zero_mode = "never"


@register("Softmax", "LogSoftmax", "Hardmax", min_opset=13)
class SoftmaxRule(OpRule):
    """Axes other than the normalised one pass through."""

    default_axis = -1

    def mixed_axes(self, axis: int, rank: int) -> set[int]:
        return {axis}

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        rank = ctx.in_rank(0)
        if rank is None:
            return c
        axis = int(ctx.attr("axis", self.default_axis)) % rank
        mixed = self.mixed_axes(axis, rank)
        for k in range(rank):
            if k in mixed:
                c.pin(ctx.in_dim(0, k), f"{ctx.label} normalises over this axis")
            else:
                c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
        return c


@register("Softmax", "LogSoftmax", "Hardmax", max_opset=12)
class Softmax12Rule(SoftmaxRule):
    """Before opset 13 the input is flattened at `axis` (default 1): every axis from it on mixes."""

    default_axis = 1

    def mixed_axes(self, axis: int, rank: int) -> set[int]:
        return set(range(axis, rank))
