"""The vocabulary of op rules.

A *dim* is one axis of one tensor.  Activations have one dim per axis; a constant (initializer or
Constant node output) has one dim per axis *per use*, so a constant shared by unrelated layers (the
legacy PyTorch exporter deduplicates identical initializers) never couples them.

An op rule is the one place that knows an op.  For one node it says:
- `couple`: each dim the node touches is exactly one of *coupled* (pruned together with other dims,
  element by element, through an index mapping), *free* (the node does not care about its size:
  a broadcast axis of size 1, a kernel axis) or *pinned* (a group containing it is not prunable),
  with a reason.  A dim the rule does not mention is pinned with the generic reason "does not map
  axis k": that default is what keeps onnxprune from ever writing a wrong model for an op it does
  not know.
- `zero`: how exactly-zero channels propagate (dead-channel detection);
- `fold` / `shape_entries` / `refine_shape`: what the node computes when its inputs are constants
  or shape vectors (one evaluator, onnxprune.ops.values, asks these);
- `weights` and `macs`: its weight slots and its cost at given shapes (cost, sparsity, quantize and
  the hand-back ask these);
- `rewrite`: how to fix attributes and shape constants after slicing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence

import numpy as np
import onnx

if TYPE_CHECKING:
    from ..graph import ModelIndex, Size
    from .values import Entry


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


class Role(str, Enum):
    """What a constant dim is to the channels of its group.  A str Enum, so plans keep the plain
    strings "out", "in", "param", "bn_scale"."""

    OUT = "out"            # producing weight (Conv filter rows, Gemm output rows): used for importance
    IN = "in"              # consuming weight (Conv input slices, Gemm input columns)
    PARAM = "param"        # per-channel parameter (bias, BN statistics, PRelu slope, layer scale)
    BN_SCALE = "bn_scale"  # BatchNormalization gamma: used by the `bn` criterion

    @property
    def is_weight(self) -> bool:
        """Produces or consumes channels (a layer with weights, not a per-channel parameter)."""
        return self in (Role.OUT, Role.IN)

    def __str__(self) -> str:
        return self.value


OUT, IN, PARAM, BN_SCALE = Role.OUT, Role.IN, Role.PARAM, Role.BN_SCALE


@dataclass(frozen=True)
class WeightSlot:
    """A node input that holds a layer's weight (what sparsity, quantization and the hand-back
    treat as the layer's parameters).  `depthwise`: one filter per input channel."""

    slot: int
    depthwise: bool = False


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
    """What one node says about the dims it touches: each is coupled (`link`, `choose`), free
    (`free`) or pinned with a reason (`pin`); a dim it does not mention is pinned."""

    edges: list[Edge] = field(default_factory=list)
    free_dims: set[Dim] = field(default_factory=set)
    roles: dict[Dim, Role] = field(default_factory=dict)
    choices: list[list[Edge]] = field(default_factory=list)
    """Alternatives of which at most one edge may be used (a Reshape merging several axes can follow
    only one of them); the graph builder keeps the one whose axis is prunable."""
    pinned: dict[Dim, str] = field(default_factory=dict)
    """Dims this node pins, with the reason."""
    consumed: set[Dim] = field(default_factory=set)
    """Activation dims this node reads the way a weight does (both sides of a contraction between
    activations, the input of an RMSNorm's mean of squares): a channel counts as dead only if it
    is zero here too (see importance.consumption_points)."""
    preferred: set[Dim] = field(default_factory=set)
    """Dims a choice should follow when it can (the batch axes of an activation MatMul: attention
    heads), see depgraph._resolve_choices."""

    def link(self, a: Dim, b: Dim, a_idx: np.ndarray | None = None, b_idx: np.ndarray | None = None) -> None:
        """`a` and `b` hold the same channels (element a_idx[k] of a is b_idx[k] of b)."""
        self.edges.append(Edge(a, b, a_idx, b_idx))

    def choose(self, edges: list[Edge]) -> None:
        """At most one of `edges` may hold (see `choices`)."""
        self.choices.append(edges)

    def consume(self, *dims: Dim) -> None:
        """This node's result depends on these dims' values beyond any weight (see `consumed`)."""
        self.consumed.update(dims)

    def prefer(self, *dims: Dim) -> None:
        """A choice reaching these dims should follow them (see `preferred`)."""
        self.preferred.update(dims)

    def free(self, *dims: Dim) -> None:
        """This node does not care about these dims' sizes: pruning them changes nothing here."""
        self.free_dims.update(dims)

    def pin(self, dim: Dim, reason: str) -> None:
        """This node cannot follow pruning of `dim`; `reason` is what `inspect` shows."""
        self.pinned[dim] = reason

    def role(self, dim: Dim, role: Role) -> None:
        self.roles[dim] = role

    def mentioned(self) -> set[Dim]:
        """Dims that are coupled or free (pinned ones are not: they keep their pin)."""
        dims = set(self.free_dims)
        for edge in self.edges:
            dims.add(edge.a)
            dims.add(edge.b)
        return dims


class NodeContext:
    """The view of one node that rules use: inputs, outputs, constants, shapes, attributes.

    `sizes` overrides the size of some dims (cost's dry run of surgery asks `macs` at the pruned
    sizes through it); shapes of other dims are the index's."""

    def __init__(self, index: ModelIndex, node_index: int, sizes: Mapping[Dim, int] | None = None):
        self.index = index
        self.i = node_index
        self.node: onnx.NodeProto = index.model.graph.node[node_index]
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in self.node.attribute}
        self.sizes = sizes or {}

    @property
    def label(self) -> str:
        return self.index.node_label(self.i)

    @property
    def opset(self) -> int:
        return self.index.opset

    @property
    def rule(self) -> "OpRule":
        from .registry import rule_for

        return rule_for(self.node, self.index.opset)

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def input(self, slot: int) -> str:
        inputs = self.node.input
        return inputs[slot] if slot < len(inputs) else ""

    def output(self, slot: int) -> str:
        outputs = self.node.output
        return outputs[slot] if slot < len(outputs) else ""

    @property
    def n_inputs(self) -> int:
        return len(self.node.input)

    def _sized(self, shape: tuple[Size, ...] | None, dim_of) -> tuple[Size, ...] | None:
        if shape is None or not self.sizes:
            return shape
        return tuple(self.sizes.get(dim_of(a), s) for a, s in enumerate(shape))

    def in_shape(self, slot: int) -> tuple[Size, ...] | None:
        name = self.input(slot)
        return self._sized(self.index.shape(name), lambda a: self.in_dim(slot, a)) if name else None

    def out_shape(self, slot: int = 0) -> tuple[Size, ...] | None:
        name = self.output(slot)
        return self._sized(self.index.shape(name), lambda a: Dim(name, a)) if name else None

    def in_rank(self, slot: int) -> int | None:
        shape = self.in_shape(slot)
        return None if shape is None else len(shape)

    def const(self, slot: int) -> np.ndarray | None:
        """The value of input `slot` when it is known before run time (folded if computed)."""
        name = self.input(slot)
        return self.index.const(name) if name else None

    def entries(self, slot: int) -> "list[Entry] | None":
        """Input `slot` as a symbolic shape vector (see onnxprune.ops.values)."""
        name = self.input(slot)
        return self.index.values.entries(name) if name else None

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
    """Base rule: understands nothing, so everything the node touches is pinned, it folds nothing,
    has no weights and costs nothing."""

    zero_mode = "never"
    """How the dead-channel analysis combines inputs: 'all' (Add: every input zero), 'any' (Mul),
    'first' (f(0)=0 for the first input: Relu, pooling, Div), 'cover' (Concat), 'never'."""

    preserves_elements = False
    """The output holds exactly the input's elements, moved (Transpose, Reshape, Cast...): a weight
    reached through it is still that weight (sparsity follows weights through such ops)."""

    quantized = False
    """A quantization op: the model is quantized."""

    constant_source = False
    """The node has no inputs and its output is a constant (Constant): its value comes from `fold`,
    and like an initializer it has one dim per axis per use."""

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

    # --- values: what the node computes from constant inputs ----------------------------------
    def fold_inputs(self, ctx: NodeContext) -> Sequence[int] | None:
        """The input slots whose values `fold` needs; None: the node is never folded."""
        return None

    def fold(self, ctx: NodeContext, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray] | None:
        """The node's outputs when they are known before run time (`inputs[k]` is input k's value,
        None when not constant), or None.  Default: not foldable."""
        return None

    def shape_entries(self, ctx: NodeContext, inputs: "Sequence[list[Entry] | None]") -> "list[Entry] | None":
        """Output 0 as a symbolic shape vector, from the inputs' (see onnxprune.ops.values), or None
        when the node does not pass shape values through."""
        return None

    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        """A shape value at input `slot` flows on to output 0 (`shape_entries` follows it)."""
        return False

    def shape_sink(self, ctx: NodeContext, slot: int) -> bool:
        """Input `slot` is a target shape whose entries this rule couples to its output's axes
        (Reshape, Expand, Resize sizes): a shape value may flow into it."""
        return False

    def reads_elements(self, ctx: NodeContext, slot: int) -> bool:
        """The node reads the values of input `slot`, not only its shape (Shape reads only sizes)."""
        return True

    def sizes_read(self, ctx: NodeContext, slot: int) -> range | None:
        """Axes of input `slot` whose sizes the node reads when it reads no elements; None: all."""
        return None

    def refine_shape(self, ctx: NodeContext) -> tuple[Size, ...] | None:
        """Output 0's shape where onnx's shape inference left sizes unknown that this rule can work
        out (a Reshape whose target is a symbolic shape vector), or None."""
        return None

    # --- weights and cost ------------------------------------------------------------------------
    def weights(self, ctx: NodeContext) -> list[WeightSlot]:
        """The inputs that are this layer's weights (Conv filters, Gemm/MatMul matrices)."""
        return []

    def macs(self, ctx: NodeContext) -> int:
        """Multiply-accumulates of one run of the node at the shapes `ctx` gives (unknown sizes
        count as 1).  Default 0: elementwise work is not counted."""
        return 0

    def output_channels(self, ctx: NodeContext) -> int | None:
        """The layer's width as summaries show it (Conv output channels, Gemm output features)."""
        return None

    def rewrite(self, ctx: "RewriteContext") -> None:
        """Update attributes and shape constants after the dims' sizes changed (default: nothing)."""

    def residual_pairs(self, ctx: NodeContext) -> list[tuple[int, int]]:
        """(shortcut slot, branch slot) pairs for which the node is a residual sum: with the branch
        input gone, its output is the shortcut input itself (`x + f(x)` becomes `x`), which is what
        block removal (onnxprune.blocks) rewrites.  Default: none."""
        return []

    def channel_affine(self, ctx: NodeContext) -> "tuple[np.ndarray, np.ndarray] | None":
        """(scale, shift) per channel of a node that maps each channel affinely (BatchNormalization),
        None for every other node: what scale-aware importance multiplies a filter by."""
        return None

    def linear_view(self, ctx: NodeContext):
        """The node as per-group least-squares problems (an ops.reconstruct.LinearView), for
        data-aware reconstruction; None (the default) when its weight cannot be re-fitted."""
        return None


def numel(shape: Sequence[Size] | None) -> int:
    """Elements of a tensor of `shape`; unknown and symbolic sizes count as 1."""
    if shape is None:
        return 0
    n = 1
    for d in shape:
        n *= d if isinstance(d, int) and d > 0 else 1
    return n


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
