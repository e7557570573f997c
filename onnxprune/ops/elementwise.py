"""Elementwise ops: binary ops with numpy broadcasting, activations, Clip, PRelu, Cast.

A constant operand that varies along the channel axis (a bias [C,1,1], a layer scale, a PRelu
slope) is coupled to that axis and sliced with it; an operand of size 1 on an axis broadcasts and
stays as it is.
"""

from __future__ import annotations

import numpy as np
import onnx

from .base import PARAM, Coupling, NodeContext, OpRule, ZeroView
from .registry import register
from .values import ConstEntry, DimEntry, Entry, Folds, computed_entry


def couple_broadcast(ctx: NodeContext, slots: range | list[int], out_slot: int = 0) -> Coupling:
    """Couple each input axis to the output axis it lines up with (right-aligned, numpy style)."""
    c = Coupling()
    out = ctx.out_shape(out_slot)
    if out is None:
        return c
    for slot in slots:
        shape = ctx.in_shape(slot)
        if shape is None or len(shape) > len(out):
            continue
        shift = len(out) - len(shape)
        for k, size in enumerate(shape):
            d_in, d_out = ctx.in_dim(slot, k), ctx.out_dim(out_slot, k + shift)
            if size == 1 and out[k + shift] != 1:
                c.free(d_in)
            else:
                c.link(d_in, d_out)
                if d_in.is_const:
                    c.role(d_in, PARAM)
    return c


class Broadcasting(OpRule):
    def couple(self, ctx: NodeContext) -> Coupling:
        return couple_broadcast(ctx, range(ctx.n_inputs))


class SumLike(Broadcasting):
    zero_mode = "all"


@register("Add", "Sub")
class AddSub(SumLike, Folds):
    """Also shape arithmetic (folded).  A residual sum: `x + f(x)` and `f(x) + x` leave x without
    f, `x - f(x)` leaves x (not `f(x) - x`)."""

    def residual_pairs(self, ctx: NodeContext) -> list[tuple[int, int]]:
        if ctx.n_inputs != 2:
            return []
        return [(0, 1)] if ctx.node.op_type == "Sub" else [(0, 1), (1, 0)]


@register("Sum", "Max", "Min", "Mean")
class Reducing(SumLike):
    def residual_pairs(self, ctx: NodeContext) -> list[tuple[int, int]]:
        """A two-input Sum is `x + f(x)`; Max, Min and Mean of x and f(x) are not x without f."""
        return [(0, 1), (1, 0)] if ctx.node.op_type == "Sum" and ctx.n_inputs == 2 else []


class MulLike(Broadcasting):
    zero_mode = "any"


@register("Mul")
class MulRule(MulLike, Folds):
    """Also shape arithmetic (folded), and a size read from a tensor times a positive constant
    (the legacy exporter's GQA `num_key_value_heads * n_rep`), which follows pruning by itself."""

    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return self._entries(ctx) is not None

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        return self._entries(ctx)

    def _entries(self, ctx: NodeContext) -> list[Entry] | None:
        sides = [ctx.entries(0), ctx.entries(1)]
        if any(side is None for side in sides):
            return None
        a, b = sides
        if len(a) != len(b):
            if min(len(a), len(b)) != 1:
                return None
            a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a))
        out: list[Entry] = []
        for x, y in zip(a, b):
            if isinstance(x, ConstEntry) and isinstance(y, ConstEntry):
                out.append(computed_entry(x.value * y.value))
            elif isinstance(x, DimEntry) and isinstance(y, ConstEntry) and y.value > 0:
                out.append(x._replace(factor=x.factor * y.value))
            elif isinstance(y, DimEntry) and isinstance(x, ConstEntry) and x.value > 0:
                out.append(y._replace(factor=y.factor * x.value))
            else:
                return None
        return out


@register("And")
class AndRule(MulLike):
    pass


class FirstOperand(Broadcasting):
    zero_mode = "first"


@register("Div")
class DivRule(FirstOperand, Folds):
    """Also shape arithmetic (folded)."""


@register("PRelu")
class PReluRule(FirstOperand):
    pass


@register("Pow")
class PowRule(Broadcasting):
    """0^p = 0 for a positive constant exponent (RMSNorm's x^2): a dead channel stays dead."""

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        exponent = ctx.const(1)
        if exponent is None or exponent.size != 1 or not float(exponent.reshape(-1)[0]) > 0 or 0 not in views:
            return np.zeros(n, dtype=bool)
        return views[0].value()


@register("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Or", "Xor")
class OtherBinary(Broadcasting):
    zero_mode = "never"


@register("Equal")
class EqualRule(OtherBinary):
    """Also shape arithmetic: the legacy torch exporter turns `expand(b, -1, n, n)` into
    `Where(Equal(shape, -1), 1, shape)`.  A size read from a tensor is never negative, so comparing
    it with a negative constant is False whatever pruning does to it."""

    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return self._entries(ctx) is not None

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        return self._entries(ctx)

    def _entries(self, ctx: NodeContext) -> list[Entry] | None:
        sides = [ctx.entries(0), ctx.entries(1)]
        if any(side is None for side in sides) or len(sides[0]) != len(sides[1]):
            return None
        out = []
        for a, b in zip(*sides):
            if isinstance(a, ConstEntry) and isinstance(b, ConstEntry):
                out.append(computed_entry(int(a.value == b.value)))
            elif isinstance(a, ConstEntry) != isinstance(b, ConstEntry) and min(
                    e.value for e in (a, b) if isinstance(e, ConstEntry)) < 0:
                out.append(computed_entry(0))
            else:
                return None
        return out


@register("Where")
class WhereRule(OtherBinary):
    """Also shape arithmetic: picks each element of a shape vector from input 1 or 2 where the
    condition's elements are known (see EqualRule)."""

    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return self._entries(ctx) is not None

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        return self._entries(ctx)

    def _entries(self, ctx: NodeContext) -> list[Entry] | None:
        cond, a, b = ctx.entries(0), ctx.entries(1), ctx.entries(2)
        if cond is None or a is None or b is None or not (len(cond) == len(a) == len(b)):
            return None
        if any(not isinstance(c, ConstEntry) for c in cond):
            return None
        return [x if c.value else y for c, x, y in zip(cond, a, b)]


def couple_unary(ctx: NodeContext) -> Coupling:
    c = Coupling()
    rank = ctx.in_rank(0)
    if rank is None:
        return c
    for k in range(rank):
        c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
    return c


class Unary(OpRule):
    def couple(self, ctx: NodeContext) -> Coupling:
        return couple_unary(ctx)


ALIAS_OPS = frozenset({"Identity"})
"""Ops whose output is their input, unchanged: the legacy torch exporter puts one between a
deduplicated initializer and its second user, so the layer is the alias's consumer's."""


def is_alias(node) -> bool:
    return node.op_type in ALIAS_OPS


@register("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "HardSwish", "Tanh", "Softsign",
          "Abs", "Sqrt", "Erf", "Floor", "Ceil", "Round", "Sign", "Mish",
          "ThresholdedRelu", "Sin", "Atan", "Asin", "Sinh", "Tan")
class ZeroPreserving(Unary):
    """f(0) = 0: a dead input channel stays dead."""

    zero_mode = "first"


@register("Neg")
class NegRule(ZeroPreserving, Folds):
    """Also shape arithmetic (folded)."""


@register("Identity", "Cast")
class ValueCopy(ZeroPreserving, Folds):
    """The input's elements (converted): weights seen through it are still those weights, and a
    shape vector passes through."""

    preserves_elements = True

    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 0

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        shape = ctx.out_shape(0)
        return inputs[0] if inputs and (shape is None or len(shape) <= 1) else None


@register("Sigmoid", "HardSigmoid", "Softplus", "Exp", "Log", "Reciprocal", "Not", "Cos", "Acos", "Cosh")
class ZeroBreaking(Unary):
    """f(0) != 0: a dead input channel becomes a constant, so it is only dead where multiplied away."""


@register("Dropout")
class DropoutRule(Unary):
    """Inference-mode Dropout is an identity; a requested mask output is left pinned."""

    zero_mode = "first"

    def couple(self, ctx: NodeContext) -> Coupling:
        if len([o for o in ctx.node.output if o]) > 1:
            return Coupling()
        return couple_unary(ctx)


@register("Clip")
class ClipRule(Unary):
    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        low = ctx.const(1) if ctx.input(1) else np.array(ctx.attr("min", -np.inf))
        high = ctx.const(2) if ctx.input(2) else np.array(ctx.attr("max", np.inf))
        if low is None or high is None or not (low <= 0 <= high):
            return np.zeros(n, dtype=bool)
        return views[0].value() if 0 in views else np.zeros(n, dtype=bool)


@register("CastLike")
class CastLikeRule(Unary):
    """Output has input 0's values and input 1's dtype; input 1's shape does not matter."""

    zero_mode = "first"

    def couple(self, ctx: NodeContext) -> Coupling:
        c = couple_unary(ctx)
        c.free(*ctx.in_dims(1))
        return c

    def fold_inputs(self, ctx: NodeContext):
        return (0,)  # only the dtype of the second input matters

    def fold(self, ctx: NodeContext, inputs) -> list[np.ndarray] | None:
        target = ctx.index.elem_types.get(ctx.input(1))
        if inputs[0] is None or not target:
            return None
        return [inputs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(target))]
