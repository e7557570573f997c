"""Stage 7: surgery.  Given the channels each group keeps, write a dense, smaller model: slice every
constant that carries a pruned dim, let each op rule fix its attributes and shape constants, drop
the stale intermediate shapes and infer them again.  Names of nodes and initializers, and node
metadata, are kept (the hand-back to the origin framework relies on them).

A constant shared by several nodes is sliced once when all its uses agree; a use that needs a
different slice gets its own copy named `<name>__<node>` (the plan lists it)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from .groups import KeepMasks
from .depgraph import DepGraph
from .errors import OnnxPruneError
from .graph import ModelIndex, copy_fields, infer_shapes, with_data
from .ops import Dim, NodeContext, RewriteContext

if TYPE_CHECKING:
    from .staging import StagedOutput


class ModelWriter:
    """Collects edits to a copy of the model so rules never touch the original.  With a `sink`
    (staging.StagedOutput), every large initializer goes to the output's data file as it is made
    and the model keeps a stub: the pruned weights are never all in memory."""

    def __init__(self, model: onnx.ModelProto, index: ModelIndex, sink: StagedOutput | None = None):
        self.model = model
        self.index = index
        self.sink = sink
        self.inits = {t.name: t for t in model.graph.initializer}
        self.element_edits: dict[str, dict[int, int]] = defaultdict(dict)

    # --- constants -------------------------------------------------------------------------
    def tensor(self, name: str, value: np.ndarray, like: onnx.TensorProto | None = None) -> onnx.TensorProto:
        """The initializer `name` holding `value`: a stub of what the sink wrote, or the data inline."""
        if self.sink is not None and streams(value):
            return self.sink.put(name, value, like)
        if like is not None:
            return with_data(like, value)
        return numpy_helper.from_array(np.ascontiguousarray(value), name=name)

    def _store(self, name: str, value: np.ndarray) -> None:
        """Replace the value of the constant `name` (initializer or Constant node), keeping its name."""
        if name in self.inits:
            tensor = self.tensor(name, value)
            self.inits[name].CopyFrom(tensor)
            for vi in self.model.graph.input:  # IR < 4 models list initializers as inputs too
                if vi.name == name:
                    vi.CopyFrom(onnx.helper.make_tensor_value_info(name, tensor.data_type, value.shape))
            return
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name=name)
        node = self.model.graph.node[self.index.constant_nodes[name]]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", tensor))

    def _add_initializer(self, name: str, value: np.ndarray) -> str:
        base, k = name, 1
        while name in self.inits or name in self.index.producer or name in self.index.initializers:
            name, k = f"{base}_{k}", k + 1
        self.model.graph.initializer.append(self.tensor(name, value))
        self.inits[name] = self.model.graph.initializer[-1]
        return name

    def slice_constants(self, slicings: list["ConstantSlicing"]) -> None:
        for slicing in slicings:
            value = self.index.const(slicing.name)
            if slicing.in_place is not None:
                self._store(slicing.name, _take(value, slicing.in_place))
                continue
            for (node_i, slot), spec in slicing.copies.items():
                node = self.model.graph.node[node_i]
                new_name = self._add_initializer(f"{slicing.name}__{node.name or node_i}", _take(value, spec))
                node.input[slot] = new_name

    def set_input_const(self, node_i: int, slot: int, value: np.ndarray) -> None:
        node = self.model.graph.node[node_i]
        name = node.input[slot] if slot < len(node.input) else ""
        if name and self.index.is_const(name) and self.index.consumers.get(name) == [(node_i, slot)]:
            self._store(name, value)
            return
        new_name = self._add_initializer(f"{node.name or node.output[0]}_input{slot}", value)
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = new_name

    def set_const_element(self, name: str, pos: int, value: int) -> None:
        previous = self.element_edits[name].get(pos)
        if previous is not None and previous != value:
            raise OnnxPruneError(f"shape constant '{name}' is shared by shapes that need different values")
        self.element_edits[name][pos] = value

    # --- attributes ------------------------------------------------------------------------
    def set_attr(self, node_i: int, name: str, value) -> None:
        node = self.model.graph.node[node_i]
        self.remove_attr(node_i, name)
        node.attribute.append(onnx.helper.make_attribute(name, value))

    def remove_attr(self, node_i: int, name: str) -> None:
        node = self.model.graph.node[node_i]
        keep = [a for a in node.attribute if a.name != name]
        if len(keep) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(keep)

    def finish(self) -> None:
        for name, edits in self.element_edits.items():
            value = self.index.const(name).copy()
            flat = value.reshape(-1)
            for pos, new in edits.items():
                flat[pos] = new
            self._store(name, value)


Spec = dict[int, np.ndarray]
"""Axis -> kept indices along it."""

Use = tuple[int, int]
"""(node index, input slot) of one read of a constant."""


@dataclass(frozen=True)
class ConstantSlicing:
    """Surgery's decision for one constant that carries pruned dims: slice it in place (one
    slicing every use accepts) or give each use that needs a slice its own copy; in the second
    case the original stays for the uses that read it unsliced, if any (`keeps_original`)."""

    name: str
    shape: tuple[int, ...]
    in_place: Spec | None
    copies: dict[Use, Spec]
    keeps_original: bool

    def shapes_after(self) -> list[tuple[int, ...]]:
        """The shapes of the tensors the model holds for this constant after surgery."""
        if self.in_place is not None:
            return [_sliced_shape(self.shape, self.in_place)]
        return [_sliced_shape(self.shape, spec) for spec in self.copies.values()] + ([self.shape] if self.keeps_original else [])


def _sliced_shape(shape: tuple[int, ...], spec: Spec) -> tuple[int, ...]:
    return tuple(len(spec[a]) if a in spec else s for a, s in enumerate(shape))


def plan_slicing(index: ModelIndex, kept: dict[Dim, np.ndarray]) -> list[ConstantSlicing]:
    """How surgery slices every constant that carries a pruned dim (cost's dry run reads this too)."""
    per_use: dict[str, dict[Use, Spec]] = defaultdict(lambda: defaultdict(dict))
    for dim, idx in kept.items():
        if dim.is_const:
            per_use[dim.tensor][(dim.use, dim.slot)][dim.axis] = idx
    slicings = []
    for name, uses in per_use.items():
        shape = tuple(index.shape(name))
        consumers = index.consumers.get(name, [])
        specs = {use: _spec_key(uses.get(use, {})) for use in consumers if use[1] >= 0}
        in_subgraph = len(specs) != len(consumers)  # a subgraph reads it: never slice in place
        shared = _shared_spec(index, len(shape), uses, specs)
        if shared is not None and not in_subgraph and name not in index.graph_outputs:
            slicings.append(ConstantSlicing(name, shape, shared, {}, False))
            continue
        copies = {use: uses[use] for use, key in specs.items() if key}
        keeps = in_subgraph or name in index.graph_outputs or any(not key for key in specs.values())
        slicings.append(ConstantSlicing(name, shape, None, copies, keeps))
    return slicings


def _shared_spec(index: ModelIndex, rank: int, uses: dict[Use, Spec], specs: dict[Use, tuple]) -> Spec | None:
    """The one slicing every use of a constant accepts, or None when uses need different slices.

    A use that reads no elements (`OpRule.reads_elements`: Shape) reads only the sizes of some
    axes (`OpRule.sizes_read`), so other axes may be sliced as the other uses need.  Without this, a
    conv weight that also feeds `Shape(start=0, end=1)` (dynamo's zero bias, `Expand(0,
    Shape(W)[0:1])`) would be copied whole for the Shape use, and the pruned model would hold more
    parameters than the original."""
    contexts = {use: NodeContext(index, use[0]) for use in specs}
    size_only = {use for use, ctx in contexts.items() if not ctx.rule.reads_elements(ctx, use[1])}
    others = {specs[use] for use in specs if use not in size_only}
    if len(others) != 1:
        return next(iter(uses.values())) if len(set(specs.values())) == 1 else None
    spec = next((uses[use] for use in specs if use not in size_only and use in uses), {})
    for use in size_only:
        ctx = contexts[use]
        read = ctx.rule.sizes_read(ctx, use[1])
        mine = uses.get(use, {})
        if any(_spec_key({a: mine[a]} if a in mine else {}) != _spec_key({a: spec[a]} if a in spec else {})
               for a in (range(rank) if read is None else read)):
            return None
    return spec


def _spec_key(spec: Spec) -> tuple:
    return tuple(sorted((axis, idx.tobytes()) for axis, idx in spec.items()))


def _take(value: np.ndarray, spec: Spec) -> np.ndarray:
    for axis, idx in sorted(spec.items()):
        value = np.take(value, idx, axis=axis)
    return value


def kept_elements(dg: DepGraph, keep: KeepMasks) -> dict[Dim, np.ndarray]:
    """For each dim of each group that loses channels, the indices of its elements that stay."""
    kept: dict[Dim, np.ndarray] = {}
    for group in dg.groups:
        mask = keep.get(group.id)
        if mask is None or mask.all():
            continue
        for dim in group.dims:
            kept[dim] = group.kept_elements(dim, mask)
    return kept


def _referenced(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """Names read by the nodes of `graph` and of its subgraphs, or returned by it."""
    names.update(o.name for o in graph.output)
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _referenced(sub, names)
    return names


def streams(value: np.ndarray) -> bool:
    """Whether a sink writes this value to the data file (save.save_model's rule: 1 KB and more,
    no strings) rather than keeping it in the header."""
    from .staging import STREAM_FROM_BYTES

    return value.dtype.kind not in "OSU" and value.nbytes >= STREAM_FROM_BYTES


def _fill_untouched(writer: ModelWriter, index: ModelIndex) -> None:
    """Copy in the initializers surgery did not replace.  The new model starts with name-only
    placeholders instead of a full copy of the original, so the weights that get sliced are never
    held three times (original, copy, slice): for a multi-GB model that is the peak memory.  With
    a sink, each goes from the original (mapped) to the data file, one at a time."""
    for tensor in writer.model.graph.initializer:
        if tensor.data_type != onnx.TensorProto.UNDEFINED:
            continue
        source = index.initializers[tensor.name]
        if source.name in index.external:
            tensor.CopyFrom(writer.tensor(source.name, index.external[source.name], like=source))
        elif writer.sink is not None and source.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) \
                and streams(value := numpy_helper.to_array(source)):
            tensor.CopyFrom(writer.tensor(source.name, value, like=source))
        else:
            tensor.CopyFrom(source)


def _drop_replaced_initializers(model: onnx.ModelProto, index: ModelIndex) -> None:
    """Remove initializers that every use now reads through a per-use copy.  A shared constant whose
    uses need different slices gets one copy per use; the original, no longer read by any node, would
    otherwise stay in the file as dead weight (the pruned model could even outgrow the original)."""
    used_before = _referenced(index.model.graph, set())
    used_now = _referenced(model.graph, set())
    stale = {t.name for t in model.graph.initializer if t.name in used_before and t.name not in used_now}
    if not stale:
        return
    keep = [t for t in model.graph.initializer if t.name not in stale]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    inputs = [vi for vi in model.graph.input if vi.name not in stale]  # IR < 4 lists initializers as inputs
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def apply_keep(dg: DepGraph, keep: KeepMasks, sink: StagedOutput | None = None) -> onnx.ModelProto:
    """A new model in which group `g` keeps the channels where `keep[g]` is True.  With a `sink`
    its large initializers are written there as they are made and the model holds stubs
    (ModelWriter); the model is the same either way, bar where its bytes live."""
    kept = kept_elements(dg, keep)
    model = onnx.ModelProto()
    copy_fields(dg.index.model, model, skip="graph")
    copy_fields(dg.index.model.graph, model.graph, skip="initializer")
    for tensor in dg.index.model.graph.initializer:  # data filled in by _fill_untouched
        model.graph.initializer.add(name=tensor.name)
    writer = ModelWriter(model, dg.index, sink)
    if kept:
        writer.slice_constants(plan_slicing(dg.index, kept))
        touched = {dg.index.producer.get(d.tensor) for d in kept if not d.is_const}
        touched |= {i for d in kept if not d.is_const for i, _ in dg.index.consumers.get(d.tensor, [])}
        touched |= {d.use for d in kept if d.is_const}
        for i in sorted(t for t in touched if t is not None):
            ctx = RewriteContext(dg.index, i, kept, writer)
            ctx.rule.rewrite(ctx)
        writer.finish()
        _drop_replaced_initializers(model, dg.index)
    _fill_untouched(writer, dg.index)
    del model.graph.value_info[:]
    inferred = infer_shapes(model)
    known = set()
    if inferred is not model:
        model.graph.value_info.extend(vi for vi in inferred.graph.value_info if _as_specific(vi, dg.index.shape(vi.name)))
        known = {vi.name for vi in model.graph.value_info}
    model.graph.value_info.extend(_carried_shapes(dg, kept, known))
    return model


def _as_specific(vi: onnx.ValueInfoProto, before) -> bool:
    """Inference found this tensor's shape at least as precisely as the original index had it
    (a size it could not derive comes back as a made-up symbol such as 'unk__3')."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return False
    dims = t.shape.dim
    if before is None:
        return all(d.HasField("dim_value") or d.dim_param for d in dims)
    return len(dims) == len(before) and all(d.HasField("dim_value") or not isinstance(b, int) for d, b in zip(dims, before))


def _carried_shapes(dg: DepGraph, kept: dict[Dim, np.ndarray], known: set[str]) -> list[onnx.ValueInfoProto]:
    """Shapes onnx's inference cannot work out again (run-time flatten chains, some contrib ops):
    the original's, with each pruned axis at its new size.  Surgery knows both exactly."""
    index = dg.index
    io = index.graph_inputs | index.graph_outputs | set(index.initializers) | set(index.constant_nodes)
    carried = []
    for name in index.producer:
        shape = index.shape(name)
        if name in known or name in io or shape is None or name not in index.elem_types:
            continue
        new = [len(kept[Dim(name, a)]) if Dim(name, a) in kept else d for a, d in enumerate(shape)]
        carried.append(onnx.helper.make_tensor_value_info(name, index.elem_types[name], new))
    return carried
