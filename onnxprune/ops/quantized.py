"""Quantized models, pruned directly: the integer weights are sliced together with their
per-channel scales and zero points, so nothing is re-quantized and the remaining channels compute
exactly what they computed before.

- QDQ: DequantizeLinear (a constant int8 weight with a per-axis scale -> a float Conv/Gemm/MatMul)
  and QuantizeLinear/DequantizeLinear pairs on activations, which act elementwise.
- QOperator: QLinearConv, QLinearMatMul.
- Dynamic quantization: DynamicQuantizeLinear (its scale is computed from the whole tensor at run
  time: removing live channels changes it as pruning changes any activation, removing dead ones
  does not, 0 always being in its range), ConvInteger, MatMulInteger.

A scale or zero point that is one value for all channels is left as it is; one that is blocked
(block quantization, opset 21's `block_size`) pins the axis.  Zeros are not followed through these
ops (a quantized zero is the zero point, not 0), so dead-channel detection stops at them.
"""

from __future__ import annotations

import numpy as np
import onnx

from .base import IN, OUT, Coupling, NodeContext, OpRule, WeightSlot, numel
from .conv import ConvRule, link_per_channel
from .elementwise import couple_unary
from .registry import model_opset, register, rule_for


def _axis(ctx: NodeContext, rank: int) -> int:
    return int(ctx.attr("axis", 1)) % rank if rank else 0


class _PerAxisElementwise(OpRule):
    """y = f(x, scale, zero_point): same shape as x, the scale per element of `axis` or one."""

    quantized = True

    def couple(self, ctx: NodeContext) -> Coupling:
        rank = ctx.in_rank(0)
        if rank is None or ctx.attr("block_size"):
            return Coupling()
        c = couple_unary(ctx)
        for slot in (1, 2):
            link_per_channel(ctx, c, slot, ctx.out_dim(0, _axis(ctx, rank)))
        return c


@register("DequantizeLinear", min_opset=10)
class DequantizeRule(_PerAxisElementwise):
    """(x - zero_point) * scale: with a constant x, the float weight a layer sees (folded, so
    criteria and cost read it as that layer's weight)."""

    def fold_inputs(self, ctx: NodeContext):
        return range(ctx.n_inputs)

    def fold(self, ctx: NodeContext, inputs) -> list[np.ndarray] | None:
        x, scale = inputs[0], inputs[1]
        zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros((), x.dtype)
        if ctx.attr("block_size") or x is None or scale is None:
            return None
        shape = [1] * x.ndim
        if scale.size > 1:
            shape[_axis(ctx, x.ndim)] = -1
        value = (x.astype(np.float32) - zero.reshape(shape).astype(np.float32)) * scale.reshape(shape).astype(np.float32)
        return [value.astype(scale.dtype)]


@register("QuantizeLinear", min_opset=10)
class QuantizeRule(_PerAxisElementwise):
    pass


@register("DynamicQuantizeLinear", min_opset=11)
class DynamicQuantizeRule(OpRule):
    """y = saturate(round(x / scale) + zero_point), scale and zero point scalars of the whole x."""

    quantized = True

    def couple(self, ctx: NodeContext) -> Coupling:
        return couple_unary(ctx)


@register("QLinearConv", min_opset=10)
class QLinearConvRule(ConvRule):
    """x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B: a Conv on int8 weights whose scale
    and zero point go with its output channels."""

    quantized = True
    weight_slot, bias_slot, out_params = 3, 8, (4, 5)
    zero_mode = "never"

    def zero(self, ctx, views, n):
        return np.zeros(n, dtype=bool)

    def couple(self, ctx: NodeContext) -> Coupling:
        c = super().couple(ctx)
        for slot in (1, 2, 6, 7):
            c.free(*ctx.in_dims(slot))
        return c


@register("ConvInteger", min_opset=10)
class ConvIntegerRule(ConvRule):
    """x, w, x_zero_point, w_zero_point (per output channel or one) -> int32."""

    quantized = True
    weight_slot, bias_slot, out_params = 1, None, (3,)

    def zero(self, ctx, views, n):
        return np.zeros(n, dtype=bool)

    def couple(self, ctx: NodeContext) -> Coupling:
        c = super().couple(ctx)
        c.free(*ctx.in_dims(2))
        return c


class _IntegerMatMul(OpRule):
    """A MatMul whose constant int weight [K, N] sits in `weight_slot`, with per-column (N) scale
    and zero point inputs in `column_params` and one-for-all ones in `scalar_params`."""

    quantized = True
    weight_slot = 1
    column_params: tuple[int, ...] = ()
    scalar_params: tuple[int, ...] = ()

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        weight, a_rank, y = ctx.in_shape(self.weight_slot), ctx.in_rank(0), ctx.out_shape(0)
        if not ctx.is_const(self.weight_slot) or weight is None or len(weight) != 2 or not a_rank or a_rank < 2 \
                or y is None or len(y) != a_rank:
            return c
        for k in range(a_rank - 1):
            c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
        c.link(ctx.in_dim(0, a_rank - 1), ctx.in_dim(self.weight_slot, 0))
        c.role(ctx.in_dim(self.weight_slot, 0), IN)
        c.link(ctx.in_dim(self.weight_slot, 1), ctx.out_dim(0, a_rank - 1))
        c.role(ctx.in_dim(self.weight_slot, 1), OUT)
        for slot in self.column_params:
            link_per_channel(ctx, c, slot, ctx.out_dim(0, a_rank - 1))
        for slot in self.scalar_params:
            if slot < ctx.n_inputs and ctx.input(slot) and numel(ctx.in_shape(slot)) == 1:
                c.free(*ctx.in_dims(slot))
        return c

    def weights(self, ctx: NodeContext) -> list[WeightSlot]:
        return [WeightSlot(self.weight_slot)]

    def macs(self, ctx: NodeContext) -> int:
        out, a = ctx.out_shape(0), ctx.in_shape(0)
        return numel(out) * numel(a[-1:]) if out is not None and a else 0

    def output_channels(self, ctx: NodeContext) -> int | None:
        out = ctx.out_shape(0)
        return out[-1] if out else None


@register("MatMulInteger", min_opset=10)
class MatMulIntegerRule(_IntegerMatMul):
    """A, B, a_zero_point, b_zero_point -> int32."""

    weight_slot, column_params, scalar_params = 1, (3,), (2,)


@register("QLinearMatMul", min_opset=10)
class QLinearMatMulRule(_IntegerMatMul):
    """a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp."""

    weight_slot, column_params, scalar_params = 3, (4, 5), (1, 2, 6, 7)


@register("QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearSigmoid",
          "QLinearLeakyRelu", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", domain="com.microsoft")
class MicrosoftQuantizedOp(OpRule):
    """onnxruntime's contrib quantized ops: not understood, so they pin what they touch."""

    quantized = True


def is_quantized(model: onnx.ModelProto) -> bool:
    """The model contains quantization ops."""
    opset = model_opset(model)
    return any(rule_for(n, opset).quantized for n in model.graph.node)
