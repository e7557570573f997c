"""Gemm and MatMul with a constant weight: the dense layers of classifier heads.

PyTorch exports Linear as Gemm(transB=1) with weight [out, in]; tf2onnx and paddle2onnx export
MatMul with weight [in, out] followed by a bias Add.
"""

from __future__ import annotations

import numpy as np

from .base import IN, OUT, PARAM, Coupling, NodeContext, OpRule, WeightSlot, ZeroView, numel
from .attention import activation_matmul_zero, couple_activation_matmul
from .conv import _weight_zero
from .reconstruct import gemm_view, matmul_view
from .registry import register


class _Dense(OpRule):
    """A dense layer: a constant matrix in slot 1 (or, for sparsity, slot 0)."""

    def weights(self, ctx: NodeContext) -> list[WeightSlot]:
        return [WeightSlot(0), WeightSlot(1)]

    def output_channels(self, ctx: NodeContext) -> int | None:
        out = ctx.out_shape(0)
        return out[-1] if out and ctx.is_const(1) else None


@register("Gemm")
class GemmRule(_Dense):
    def macs(self, ctx: NodeContext) -> int:
        """M x N outputs, each a dot product of length K."""
        out, weight = ctx.out_shape(0), ctx.in_shape(1)
        if out is None or weight is None or len(weight) != 2:
            return 0
        k = weight[1] if int(ctx.attr("transB", 0)) else weight[0]
        return numel(out) * numel([k])

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        if not ctx.is_const(1) or ctx.is_const(0):
            return c
        trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
        a_m, a_k = (1, 0) if trans_a else (0, 1)
        b_k, b_n = (1, 0) if trans_b else (0, 1)
        c.link(ctx.in_dim(0, a_m), ctx.out_dim(0, 0))
        c.link(ctx.in_dim(0, a_k), ctx.in_dim(1, b_k))
        c.role(ctx.in_dim(1, b_k), IN)
        c.link(ctx.in_dim(1, b_n), ctx.out_dim(0, 1))
        c.role(ctx.in_dim(1, b_n), OUT)
        if ctx.input(2):
            bias_shape = ctx.in_shape(2) or ()
            if len(bias_shape) == 2:
                if bias_shape[0] == 1:
                    c.free(ctx.in_dim(2, 0))
                else:
                    c.link(ctx.in_dim(2, 0), ctx.out_dim(0, 0))
            if bias_shape and bias_shape[-1] != 1:
                c.link(ctx.in_dim(2, len(bias_shape) - 1), ctx.out_dim(0, 1))
                c.role(ctx.in_dim(2, len(bias_shape) - 1), PARAM)
            elif bias_shape:
                c.free(ctx.in_dim(2, len(bias_shape) - 1))
        return c

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        dead = _weight_zero(ctx.const(1), 0 if int(ctx.attr("transB", 0)) else 1)
        if ctx.input(2):
            bias = ctx.const(2)
            if bias is None:
                return np.zeros(n, dtype=bool)
            rows = np.atleast_2d(bias)
            dead &= np.all(np.broadcast_to(rows, (rows.shape[0], n)) == 0, axis=0)
        return dead

    def linear_view(self, ctx: NodeContext):
        return gemm_view(ctx)


@register("MatMul")
class MatMulRule(_Dense):
    def macs(self, ctx: NodeContext) -> int:
        """Every output element is a dot product over the contracted axis (A's last)."""
        out, a = ctx.out_shape(0), ctx.in_shape(0)
        if out is None or not a:
            return 0
        return numel(out) * numel(a[-1:])

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        weight = ctx.const(1)
        if weight is None and not ctx.is_const(0):
            return couple_activation_matmul(ctx)
        a_rank, y_rank = ctx.in_rank(0), len(ctx.out_shape(0) or ())
        if weight is None or weight.ndim != 2 or ctx.is_const(0) or not a_rank or a_rank < 2 or y_rank != a_rank:
            return c
        for k in range(a_rank - 1):
            c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
        c.link(ctx.in_dim(0, a_rank - 1), ctx.in_dim(1, 0))
        c.role(ctx.in_dim(1, 0), IN)
        c.link(ctx.in_dim(1, 1), ctx.out_dim(0, y_rank - 1))
        c.role(ctx.in_dim(1, 1), OUT)
        return c

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        if ctx.const(1) is None:
            return activation_matmul_zero(views, n)
        return _weight_zero(ctx.const(1), 1)

    def linear_view(self, ctx: NodeContext):
        return matmul_view(ctx)
