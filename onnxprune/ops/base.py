"""The vocabulary of op rules.

A *dim* is one axis of one tensor.  Activations have one dim per axis; a constant (initializer or
Constant node output) has one dim per axis *per use*, so a constant shared by unrelated layers (the
legacy PyTorch exporter deduplicates identical initializers) never couples them.

An op rule looks at one node and says which of the dims it touches are coupled (must be pruned
together, element by element, through an index mapping) and which it leaves fixed.  Every dim a
node touches but does not mention is *pinned* by that node: a group containing it is not prunable.
That default is what keeps onnxprune from ever writing a wrong model for an op it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import onnx

from ..graph import ModelIndex, Size


class Dim(NamedTuple):
    """One axis of a tensor.  `use` is the consuming node's index for constants, -1 for activations."""

    tensor: str
    axis: int
    use: int = -1
    slot: int = -1

    @property
    def is_const(self) -> bool:
        return self.use >= 0

    def __str__(self) -> str:
        return f"{self.tensor}[axis {self.axis}]"


# Roles of constant dims: which weights produce a channel, consume it, or scale it.
OUT = "out"      # producing weight (Conv filter rows, Gemm output rows): used for importance
IN = "in"        # consuming weight (Conv input slices, Gemm input columns)
PARAM = "param"  # per-channel parameter (bias, BN statistics, PRelu slope, layer scale)
BN_SCALE = "bn_scale"  # BatchNormalization gamma: used by the `bn` criterion


@dataclass
class Edge:
    """`a` and `b` hold the same channel elements: a_idx[k] of `a` is b_idx[k] of `b`.

    None for both index arrays means the identity mapping between dims of equal size.
    """

    a: Dim
    b: Dim
    a_idx: np.ndarray | None = None
    b_idx: np.ndarray | None = None

    @property
    def is_identity(self) -> bool:
        return self.a_idx is None


@dataclass
class Coupling:
    """What one node says about the dims it touches."""

    edges: list[Edge] = field(default_factory=list)
    fixed: set[Dim] = field(default_factory=set)
    roles: dict[Dim, str] = field(default_factory=dict)
    choices: list[list[Edge]] = field(default_factory=list)
    """Alternatives of which at most one edge may be used (a Reshape merging several axes can follow
    only one of them); the graph builder keeps the one whose axis is prunable."""
    reasons: dict[Dim, str] = field(default_factory=dict)
    """Why a dim is left pinned, when the rule knows better than 'not understood'."""

    def link(self, a: Dim, b: Dim, a_idx: np.ndarray | None = None, b_idx: np.ndarray | None = None) -> None:
        self.edges.append(Edge(a, b, a_idx, b_idx))

    def role(self, dim: Dim, role: str) -> None:
        self.roles[dim] = role

    def mentioned(self) -> set[Dim]:
        dims = set(self.fixed)
        for edge in self.edges:
            dims.add(edge.a)
            dims.add(edge.b)
        return dims


class NodeContext:
    """The view of one node that rules use: inputs, outputs, constants, shapes, attributes."""

    def __init__(self, index: ModelIndex, node_index: int):
        self.index = index
        self.i = node_index
        self.node: onnx.NodeProto = index.model.graph.node[node_index]
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in self.node.attribute}

    @property
    def label(self) -> str:
        return self.index.node_label(self.i)

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def input(self, slot: int) -> str:
        inputs = self.node.input
        return inputs[slot] if slot < len(inputs) else ""

    def output(self, slot: int) -> str:
        outputs = self.node.output
        return outputs[slot] if slot < len(outputs) else ""

    @property
    def n_inputs(self) -> int:
        return len(self.node.input)

    def in_shape(self, slot: int) -> tuple[Size, ...] | None:
        name = self.input(slot)
        return self.index.shape(name) if name else None

    def out_shape(self, slot: int = 0) -> tuple[Size, ...] | None:
        name = self.output(slot)
        return self.index.shape(name) if name else None

    def in_rank(self, slot: int) -> int | None:
        shape = self.in_shape(slot)
        return None if shape is None else len(shape)

    def const(self, slot: int) -> np.ndarray | None:
        name = self.input(slot)
        return self.index.const(name) if name else None

    def is_const(self, slot: int) -> bool:
        name = self.input(slot)
        return bool(name) and self.index.is_const(name)

    def in_dim(self, slot: int, axis: int) -> Dim:
        name = self.input(slot)
        if self.index.is_const(name):
            return Dim(name, axis, self.i, slot)
        return Dim(name, axis)

    def out_dim(self, slot: int, axis: int) -> Dim:
        return Dim(self.output(slot), axis)

    def in_dims(self, slot: int) -> list[Dim]:
        rank = self.in_rank(slot)
        return [] if rank is None else [self.in_dim(slot, a) for a in range(rank)]


class ZeroView:
    """What the dead-channel analysis knows about one input of a node, aligned to an output dim.

    `zero[j]` says element j of the output dim sees an input slice that is all zero; `cover[j]` is
    False where this input does not feed element j along the axis (another Concat input, or a
    broadcast input), and then `whole_zero` says whether the input is zero everywhere.
    """

    def __init__(self, zero: np.ndarray, cover: np.ndarray, whole_zero: bool):
        self.zero = zero
        self.cover = cover
        self.whole_zero = whole_zero

    def value(self) -> np.ndarray:
        return np.where(self.cover, self.zero, self.whole_zero)


class OpRule:
    """Base rule: understands nothing, so everything the node touches is pinned."""

    zero_mode = "never"
    """How the dead-channel analysis combines inputs: 'all' (Add: every input zero), 'any' (Mul),
    'first' (f(0)=0 for the first input: Relu, pooling, Div), 'cover' (Concat), 'never'."""

    def couple(self, ctx: NodeContext) -> Coupling:
        return Coupling()

    def zero(self, ctx: NodeContext, views: dict[int, ZeroView], n: int) -> np.ndarray:
        """Which of the `n` elements of an output dim are exactly zero, from the inputs' views."""
        if self.zero_mode == "never" or not views:
            return np.zeros(n, dtype=bool)
        if self.zero_mode == "first":
            return views[0].value() if 0 in views else np.zeros(n, dtype=bool)
        if self.zero_mode == "cover":
            out = np.ones(n, dtype=bool)
            covered = np.zeros(n, dtype=bool)
            for view in views.values():
                out &= np.where(view.cover, view.zero, True)
                covered |= view.cover
            return out & covered
        values = [v.value() for v in views.values()]
        if self.zero_mode == "all":
            return np.logical_and.reduce(values)
        return np.logical_or.reduce(values)  # "any"

    def rewrite(self, ctx: "RewriteContext") -> None:
        """Update attributes and shape constants after the dims' sizes changed (default: nothing)."""

    def channel_affine(self, ctx: NodeContext) -> "tuple[np.ndarray, np.ndarray] | None":
        """(scale, shift) per channel of a node that maps each channel affinely (BatchNormalization),
        None for every other node: what scale-aware importance multiplies a filter by."""
        return None

    def linear_view(self, ctx: NodeContext):
        """The node as per-group least-squares problems (an ops.reconstruct.LinearView), for
        data-aware reconstruction; None (the default) when its weight cannot be re-fitted."""
        return None


class RewriteContext(NodeContext):
    """A NodeContext during surgery: knows the new size and kept elements of every pruned dim."""

    def __init__(self, index: ModelIndex, node_index: int, kept: dict[Dim, np.ndarray], writer):
        super().__init__(index, node_index)
        self.kept = kept
        self.writer = writer

    def kept_of(self, dim: Dim) -> np.ndarray | None:
        return self.kept.get(dim)

    def new_size(self, dim: Dim, old: int) -> int:
        kept = self.kept.get(dim)
        return old if kept is None else int(len(kept))

    def set_attr(self, name: str, value) -> None:
        self.writer.set_attr(self.i, name, value)

    def set_const(self, slot: int, value: np.ndarray) -> None:
        self.writer.set_input_const(self.i, slot, value)
