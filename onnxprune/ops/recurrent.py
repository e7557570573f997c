"""Recurrent layers: LSTM, GRU and RNN, pruned along the hidden size.

A hidden unit j owns row g*H + j of W [dirs, G*H, I] and R [dirs, G*H, H] for every gate g (G = 4
for LSTM, iofc; 3 for GRU, zrh; 1 for RNN), column j of R (the previous hidden state it feeds back),
elements j of every bias, peephole and initial-state block, and element j of the outputs' last
axis.  Both directions share `hidden_size`, so unit j of the forward and of the backward direction
go together.  The input size (W's last axis) is a channel axis of the producer: W consumes it.
"""

from __future__ import annotations

import numpy as np

from .base import IN, OUT, PARAM, Coupling, NodeContext, OpRule, RewriteContext, WeightSlot, ZeroView, numel
from .registry import register

ZERO_PRESERVING_ACTIVATIONS = {"Tanh", "Relu", "Softsign"}


class _Recurrent(OpRule):
    gates = 1
    candidate_gate = 0
    """The gate whose activation makes a unit's new content (LSTM c, GRU h, RNN's only one): a unit
    whose rows of it are zero, with zero initial state, stays exactly zero."""
    state_slots = (5,)
    """Inputs holding an initial state [dirs, batch, H] (initial_h; LSTM also initial_c)."""
    content_activations = (0,)
    """Positions in a direction's `activations` list that must map 0 to 0 for a dead unit to stay dead."""
    default_activations = 1

    def _axes(self, ctx: NodeContext) -> tuple[int, int, dict[int, tuple[int, int, int]]]:
        """(seq axis, batch axis) of X and, per output slot, its (dirs, batch, hidden) axes."""
        if int(ctx.attr("layout", 0)):
            return 1, 0, {0: (2, 0, 3), 1: (1, 0, 2), 2: (1, 0, 2)}
        return 0, 1, {0: (1, 2, 3), 1: (0, 1, 2), 2: (0, 1, 2)}

    def _hidden(self, ctx: NodeContext) -> int | None:
        weight = ctx.in_shape(1)
        return int(ctx.attr("hidden_size", weight[1] // self.gates if weight else 0)) or None

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        hidden, x = self._hidden(ctx), ctx.in_shape(0)
        if not (ctx.is_const(1) and ctx.is_const(2)) or hidden is None or x is None:
            c.pin(ctx.in_dim(0, 2), f"{ctx.label} has weights computed at run time")
            return c
        seq, batch, out_axes = self._axes(ctx)
        y_hidden = None
        for slot, (dirs_axis, batch_axis, hidden_axis) in out_axes.items():
            if not ctx.output(slot):
                continue
            c.pin(ctx.out_dim(slot, dirs_axis), f"{ctx.label}: the number of directions is fixed")
            c.link(ctx.in_dim(0, batch), ctx.out_dim(slot, batch_axis))
            if y_hidden is None:
                y_hidden = ctx.out_dim(slot, hidden_axis)
            else:
                c.link(y_hidden, ctx.out_dim(slot, hidden_axis))
        if y_hidden is None:
            return c
        if ctx.output(0):
            c.link(ctx.in_dim(0, seq), ctx.out_dim(0, 0 if seq == 0 else 1))
        rows = np.arange(self.gates * hidden)
        for slot in (1, 2):  # W and R: rows per gate, dirs axis untouched
            c.free(ctx.in_dim(slot, 0))
            c.link(ctx.in_dim(slot, 1), y_hidden, rows, rows % hidden)
            c.role(ctx.in_dim(slot, 1), OUT)
        c.link(ctx.in_dim(2, 2), y_hidden)  # R's columns read the previous hidden state
        c.role(ctx.in_dim(2, 2), IN)
        c.link(ctx.in_dim(0, 2), ctx.in_dim(1, 2))  # the input size is consumed by W
        c.role(ctx.in_dim(1, 2), IN)
        for slot, size in ((3, 2 * self.gates * hidden), (7, 3 * hidden)):  # biases, LSTM peepholes
            if slot < ctx.n_inputs and ctx.input(slot):
                c.free(ctx.in_dim(slot, 0))
                elements = np.arange(size)
                c.link(ctx.in_dim(slot, 1), y_hidden, elements, elements % hidden)
                if ctx.is_const(slot):
                    c.role(ctx.in_dim(slot, 1), PARAM)
        if ctx.input(4):  # sequence_lens [batch]
            c.link(ctx.in_dim(4, 0), ctx.in_dim(0, batch))
        for slot in self.state_slots:
            if slot < ctx.n_inputs and ctx.input(slot):
                dirs_axis, batch_axis, hidden_axis = out_axes[1]
                if ctx.is_const(slot):
                    c.free(ctx.in_dim(slot, dirs_axis))
                    c.role(ctx.in_dim(slot, hidden_axis), PARAM)
                else:
                    c.pin(ctx.in_dim(slot, dirs_axis), f"{ctx.label}: the number of directions is fixed")
                c.link(ctx.in_dim(slot, batch_axis), ctx.in_dim(0, batch))
                c.link(ctx.in_dim(slot, hidden_axis), y_hidden)
        return c

    def _activations_keep_zero(self, ctx: NodeContext) -> bool:
        names = ctx.attr("activations")
        if not names:
            return True
        names = [n.decode() if isinstance(n, bytes) else n for n in names]
        per_dir = len(names) // max(1, 2 if ctx.attr("direction", "forward") == "bidirectional" else 1)
        return all(names[d * per_dir + k] in ZERO_PRESERVING_ACTIVATIONS
                   for d in range(len(names) // per_dir) for k in self.content_activations)

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        """Unit j is exactly zero at every step when its candidate-gate rows of W and R and its
        biases of that gate are zero, its initial states are zero and the activations keep 0 at 0:
        its content then never leaves 0, and removing it (R's column j too) changes no other unit."""
        hidden = self._hidden(ctx)
        w, r = ctx.const(1), ctx.const(2)
        if hidden != n or w is None or r is None or not self._activations_keep_zero(ctx):
            return np.zeros(n, dtype=bool)
        rows = slice(self.candidate_gate * hidden, (self.candidate_gate + 1) * hidden)
        dead = ~np.any(w[:, rows] != 0, axis=(0, 2)) & ~np.any(r[:, rows] != 0, axis=(0, 2))
        bias = ctx.const(3) if ctx.n_inputs > 3 and ctx.input(3) else None
        if ctx.n_inputs > 3 and ctx.input(3) and bias is None:
            return np.zeros(n, dtype=bool)
        if bias is not None:
            offset = self.gates * hidden
            dead &= ~np.any(bias[:, rows] != 0, axis=0)
            dead &= ~np.any(bias[:, offset + rows.start:offset + rows.stop] != 0, axis=0)
        hidden_axis = self._axes(ctx)[2][1][2]
        for slot in self.state_slots:
            if slot < ctx.n_inputs and ctx.input(slot):
                state = ctx.const(slot)
                if state is None:
                    return np.zeros(n, dtype=bool)
                dead &= ~np.any(np.moveaxis(state, hidden_axis, 0).reshape(n, -1) != 0, axis=1)
        return dead

    def rewrite(self, ctx: RewriteContext) -> None:
        hidden = self._hidden(ctx)
        new = ctx.new_size(ctx.in_dim(2, 2), hidden)
        if new != hidden:
            ctx.set_attr("hidden_size", new)

    def weights(self, ctx: NodeContext) -> list[WeightSlot]:
        return [WeightSlot(1), WeightSlot(2)]

    def macs(self, ctx: NodeContext) -> int:
        """Every step multiplies the input by W and the previous state by R, per direction."""
        x, w, r = ctx.in_shape(0), ctx.in_shape(1), ctx.in_shape(2)
        if x is None or w is None or r is None:
            return 0
        seq, batch, _ = self._axes(ctx)
        return numel([x[seq], x[batch]]) * (numel(w) + numel(r))

    def output_channels(self, ctx: NodeContext) -> int | None:
        return self._hidden(ctx)


@register("LSTM")
class LSTMRule(_Recurrent):
    gates, candidate_gate, state_slots, content_activations = 4, 3, (5, 6), (1, 2)


@register("GRU")
class GRURule(_Recurrent):
    gates, candidate_gate, state_slots, content_activations = 3, 2, (5,), (1,)


@register("RNN")
class RNNRule(_Recurrent):
    gates, candidate_gate, state_slots, content_activations = 1, 0, (5,), (0,)
