"""The one evaluator of values known before run time: constants, constant-folded small tensors,
and symbolic shape vectors.  Pure: it returns values and caches them in itself; it never changes
the index.  What each op computes is asked of its rule (`fold`, `shape_entries`).

Exporters often compute a target shape at run time: `Shape -> Gather -> Unsqueeze -> Concat` for
`x.view(x.size(0), -1)` (legacy PyTorch) or `Shape -> Gather -> Cast -> Slice -> Concat(1024)`
(tf2onnx).  Each element of such a shape vector is either a constant (with the constant tensor and
position it came from, so surgery can rewrite it) or "axis a of tensor t" (which follows pruning by
itself, provided the two dims are coupled).  Anything else is not understood.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .base import Dim, NodeContext, OpRule
from .registry import rule_for

if TYPE_CHECKING:
    from ..graph import ModelIndex, Size

MAX_DEPTH = 32
"""Longest chain of computed constants or shape values followed."""

FOLD_LIMIT = 4096
"""Computed constants with inputs larger than this are not folded (exporters fold shapes and axes,
not weights)."""

CACHE_ABOVE_BYTES = 1 << 24
"""Constants larger than this are decoded again on each use instead of cached: every cached value
is a second copy of its weight (protobuf hands out raw_data as a fresh bytes object), which for a
multi-GB model would double the memory; decoding one weight again costs a memcpy."""


class ConstEntry(NamedTuple):
    value: int
    source: str  # constant tensor holding the value; "" when computed (nothing to rewrite)
    pos: int     # flat position in that tensor

    @property
    def computed(self) -> bool:
        """Worked out from constants at run time (ConstantOfShape, Mul, Equal): no stored constant
        holds it, so a pruned axis cannot be given a new size through it."""
        return not self.source


def computed_entry(value: int) -> ConstEntry:
    return ConstEntry(int(value), "", -1)


class DimEntry(NamedTuple):
    tensor: str
    axis: int
    shape_node: int  # the Shape node that read it (a constant's dims are per use)
    factor: int = 1  # the element is factor * that size (GQA's `num_key_value_heads * n_rep`)

    def scaled(self, size):
        """This element's value when the axis has `size` (None when the size is not known)."""
        return size * self.factor if isinstance(size, int) else (size if self.factor == 1 else None)


Entry = ConstEntry | DimEntry


class Values:
    """Values of one model's tensors that are known before run time."""

    def __init__(self, index: "ModelIndex"):
        self.index = index
        self._consts: dict[str, np.ndarray | None] = {}
        self._entries: dict[str, list[Entry] | None] = {}

    def const(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of tensor `name` if it is a constant or computed from constants only."""
        if name in self._consts:
            return self._consts[name]
        index = self.index
        value = None
        if name in index.external:
            return index.external[name]  # a view of the mapped file (load.map_external): nothing to cache
        if name in index.initializers:
            value = numpy_helper.to_array(index.initializers[name])
        elif name in index.producer and depth <= MAX_DEPTH:
            node_i = index.producer[name]
            node = index.model.graph.node[node_i]
            ctx = NodeContext(index, node_i)
            rule = rule_for(node, index.opset)
            inputs = self._fold_inputs(ctx, rule.fold_inputs(ctx), depth)
            outputs = None if inputs is None else rule.fold(ctx, inputs)
            if outputs is not None:
                value = np.asarray(outputs[list(node.output).index(name)])
        if value is None or value.nbytes <= CACHE_ABOVE_BYTES:
            self._consts[name] = value
        return value

    def _fold_inputs(self, ctx: NodeContext, slots: Sequence[int] | None, depth: int) -> list | None:
        """The values of the inputs a fold needs (None elsewhere), or None when one is unknown."""
        if slots is None:
            return None
        inputs: list[np.ndarray | None] = [None] * ctx.n_inputs
        for slot in slots:
            name = ctx.input(slot)
            if not name:
                continue
            value = self.const(name, depth + 1)
            if value is None:
                return None
            inputs[slot] = value
        return inputs

    def entries(self, name: str, depth: int = 0) -> list[Entry] | None:
        """The elements of the 0-D/1-D integer tensor `name` as a shape vector, or None."""
        if name in self._entries:
            return self._entries[name]
        index = self.index
        result = None
        if index.is_const(name):
            value = self.const(name)
            if value is not None and value.ndim <= 1 and value.dtype.kind in "iu":
                result = [ConstEntry(int(v), name, i) for i, v in enumerate(value.reshape(-1))]
        elif name in index.producer and depth <= MAX_DEPTH:
            node_i = index.producer[name]
            node = index.model.graph.node[node_i]
            inputs = [self.entries(n, depth + 1) if n else None for n in node.input]
            result = rule_for(node, index.opset).shape_entries(NodeContext(index, node_i), inputs)
            if result is None:
                value = self.const(name)
                if value is not None and value.ndim <= 1 and value.dtype.kind in "iub" and value.size <= FOLD_LIMIT:
                    result = [computed_entry(int(v)) for v in value.reshape(-1)]
        self._entries[name] = result
        return result

    def escapes(self, name: str, depth: int = 0) -> list["Escape"]:
        """Where the shape value `name` is used for something other than a target shape whose
        entries a rule couples (following ops that pass shape values on): each such use, with the
        tensor that reaches it."""
        index = self.index
        if depth > MAX_DEPTH:
            return [Escape("a long chain of shape computations", None)]
        found = [Escape("a graph output", name)] if name in index.graph_outputs else []
        for node_i, slot in index.consumers.get(name, []):
            node = index.model.graph.node[node_i]
            rule, ctx = rule_for(node, index.opset), NodeContext(index, node_i)
            if slot >= 0 and rule.shape_sink(ctx, slot):
                continue
            if slot >= 0 and rule.passes_shape_value(ctx, slot):
                found += self.escapes(node.output[0], depth + 1)
                continue
            found.append(Escape(index.node_label(node_i), name))
        return found


class Escape(NamedTuple):
    """A use of a shape value that is not a coupled target shape: `where` names it, `tensor` is the
    value that reaches it (None when it could not be followed)."""

    where: str
    tensor: str | None


class Folds(OpRule):
    """A rule whose node onnxprune folds when its inputs are constants (shape arithmetic, axes
    vectors), with onnx's reference evaluator."""

    def fold_inputs(self, ctx: NodeContext) -> Sequence[int] | None:
        return range(ctx.n_inputs)

    def fold(self, ctx: NodeContext, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray] | None:
        return reference_fold(ctx, inputs)


def reference_fold(ctx: NodeContext, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray] | None:
    """Run one node on constant inputs with onnx's reference evaluator (what a rule's `fold` does
    for an op whose value onnxprune needs but has no reason to reimplement)."""
    node = ctx.node
    named = {n: v for n, v in zip(node.input, inputs) if n}
    if any(v is None or v.size > FOLD_LIMIT for v in named.values()):
        return None
    from onnx.reference import ReferenceEvaluator

    graph = onnx.helper.make_graph(
        [node], "fold", [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                         for n, v in named.items()],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o])
    mini = onnx.helper.make_model(graph, opset_imports=list(ctx.index.model.opset_import))
    try:
        results = ReferenceEvaluator(mini).run(None, named)
    except Exception:  # noqa: BLE001 - anything the evaluator cannot do is simply not folded
        return None
    outputs = iter(results)
    return [np.asarray(next(outputs)) if o else None for o in node.output]


def refine_from_target(ctx: NodeContext, target_slot: int) -> tuple["Size", ...] | None:
    """Output sizes that shape inference left unknown but that the symbolic target shape at input
    `target_slot` gives (for example a conv bias built as Expand(0, Shape(weight)[0:1]))."""
    shape = ctx.out_shape(0)
    entries = ctx.entries(target_slot)
    if shape is None and entries is not None:
        shape = (None,) * len(entries)
    if shape is None or entries is None or len(entries) != len(shape):
        return None
    refined = []
    for size, entry in zip(shape, entries):
        if not isinstance(size, int):
            if isinstance(entry, ConstEntry) and entry.value > 1:
                size = entry.value
            elif isinstance(entry, DimEntry):
                source = ctx.index.shape(entry.tensor)
                if source is not None and isinstance(source[entry.axis], int):
                    size = entry.scaled(source[entry.axis])
        refined.append(size)
    refined = tuple(refined)
    return refined if refined != ctx.index.shape(ctx.output(0)) else None


def rewrite_const_entries(ctx, entries, skip=lambda pos, value: False) -> None:
    """Write the new size of each pruned output axis into the constant its target-shape element came from.

    A constant that is this node's own input but is also read elsewhere (exporters deduplicate
    identical shape constants, so two flatten heads can share one `[-1, 512]`) gets a copy for this
    node: editing it in place would change the other reader's shape too."""
    out_shape = ctx.out_shape(0)
    edits: dict[str, dict[int, int]] = {}
    by_pos: dict[int, int] = {}
    for pos, entry in enumerate(entries):
        if not isinstance(entry, ConstEntry) or entry.value <= 0 or skip(pos, entry.value):
            continue
        new = ctx.new_size(ctx.out_dim(0, pos), out_shape[pos] if isinstance(out_shape[pos], int) else entry.value)
        if new != entry.value:
            edits.setdefault(entry.source, {})[entry.pos] = new
            by_pos[pos] = new
    if by_pos and _rewrite_concat_parts(ctx, len(entries), by_pos):
        return
    for source, changes in edits.items():
        slot = next((s for s, name in enumerate(ctx.node.input) if name == source), None)
        if slot is not None and ctx.index.consumers.get(source) != [(ctx.i, slot)]:
            value = ctx.index.const(source).copy()
            flat = value.reshape(-1)
            for pos, new in changes.items():
                flat[pos] = new
            ctx.set_const(slot, value)
            continue
        if slot is None and not _read_only_by(ctx.index, source, ctx.i):
            _write_private_target(ctx, entries, by_pos, source)
            continue
        for pos, new in changes.items():
            ctx.writer.set_const_element(source, pos, new)


def _read_only_by(index, source: str, node_i: int) -> bool:
    """Every use of the constant `source` leads, through the nodes that compute from it, to node
    `node_i` alone: an in-place edit of it changes nothing else."""
    todo, seen = [source], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in index.graph_outputs or not index.consumers.get(name) or len(seen) > MAX_DEPTH:
            return False
        for consumer, _ in index.consumers[name]:
            if consumer != node_i:
                todo.extend(o for o in index.model.graph.node[consumer].output if o)
    return True


def _write_private_target(ctx, entries, by_pos: dict[int, int], source: str) -> None:
    """A shape constant read elsewhere too and reached through other nodes (a Cast, Squeeze):
    this node gets the whole edited target as a constant of its own (per use, like any shared
    constant), when the target is constant; otherwise surgery stops rather than write a wrong
    shape."""
    from ..errors import OnnxPruneError

    target = next((s for s, name in enumerate(ctx.node.input) if name and ctx.rule.shape_sink(ctx, s)), None)
    value = None if target is None else ctx.index.const(ctx.input(target))
    if value is None:
        raise OnnxPruneError(f"{ctx.label}: shape constant '{source}' is shared with other nodes and reached "
                             f"through a computation onnxprune cannot give a private copy of")
    value = value.copy()
    flat = value.reshape(-1)
    offset = len(entries) - flat.size
    for pos, new in by_pos.items():
        flat[pos - offset] = new
    ctx.set_const(target, value)


def concat_parts(index, target: str, n_entries: int) -> tuple[int, list[tuple[int, int]]] | None:
    """When the shape vector `target` (of `n_entries` entries) is a Concat's output: the Concat's
    node index and, per entry position, (Concat input slot, offset in that input)."""
    producer = index.producer.get(target) if target else None
    if producer is None or index.model.graph.node[producer].op_type != "Concat":
        return None
    parts: list[tuple[int, int]] = []
    for slot, name in enumerate(index.model.graph.node[producer].input):
        part = index.values.entries(name)
        if part is None:
            return None
        parts += [(slot, k) for k in range(len(part))]
    return (producer, parts) if len(parts) == n_entries else None


def _rewrite_concat_parts(ctx, n_entries: int, by_pos: dict[int, int]) -> bool:
    """A target shape built by a Concat of small constants read by nodes that all need the same
    edit (k and v of one layer): give each edited part of that Concat its own constant (`by_pos`:
    entry position -> new size), so that another node reading the same constant (the dynamo exporter
    reuses one `[2]` as Unsqueeze axes and as shape sizes) never sees the edit.  False otherwise
    (the caller then edits the constants)."""
    index = ctx.index
    target = ctx.input(1)
    found = concat_parts(index, target, n_entries)
    if found is None:
        return False
    for node_i, slot in index.consumers.get(target, []):
        other = index.model.graph.node[node_i].output[0]
        if slot != 1 or any(ctx.new_size(Dim(other, pos), -1) != new for pos, new in by_pos.items()):
            return False
    producer, parts = found
    concat = index.model.graph.node[producer]
    new_parts: dict[int, np.ndarray] = {}
    for pos, new in by_pos.items():
        slot, offset = parts[pos]
        if slot not in new_parts:
            value = index.const(concat.input[slot])
            if value is None:
                return False
            new_parts[slot] = value.copy()
        new_parts[slot].reshape(-1)[offset] = new
    for slot, value in new_parts.items():
        ctx.writer.set_input_const(producer, slot, value)
    return True
