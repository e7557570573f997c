"""A read-only index over a loaded model: who produces and consumes each tensor, which tensors are
constants (initializers or Constant nodes) and what shape every tensor has after onnx shape
inference.  Every later stage asks questions through this index instead of walking the proto."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import shape_inference

if TYPE_CHECKING:
    from .ops.values import Values

Size = int | str | None
"""A dimension: a known int, a symbolic name, or None when unknown."""


STRIP_ABOVE_ELEMENTS = 4096
"""Initializers with more elements than this are handed to shape inference without their data."""


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    is_repeated = getattr(descriptor, "is_repeated", None)  # protobuf >= 5.28; `label` is gone in 7
    return bool(is_repeated) if is_repeated is not None else descriptor.label == descriptor.LABEL_REPEATED


def copy_fields(source: Message, target: Message, skip: str) -> None:
    """Copy every set field of `source` into `target` except the field named `skip`."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if _is_repeated(descriptor):
            getattr(target, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large initializers keep their name, type and dims but not their data
    (they are marked as external data, which is how onnx sees a model loaded without its weights).

    Shape inference serialises the whole model to C++ and parses the inferred copy back, so with
    inline weights it costs two round trips of every weight byte (~0.4 s for ResNet-50's 100 MB)
    for nothing: inference reads the data of small shape-like constants only (Reshape targets,
    axes, ...), and those stay.  It also keeps models above 2 GB within protobuf's limit."""
    graph = onnx.GraphProto()
    copy_fields(model.graph, graph, skip="initializer")
    for tensor in model.graph.initializer:
        if math.prod(tensor.dims) <= STRIP_ABOVE_ELEMENTS:
            graph.initializer.append(tensor)
            continue
        stub = graph.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="onnxprune-weightless-copy")
    copy = onnx.ModelProto()
    copy_fields(model, copy, skip="graph")
    copy.graph.CopyFrom(graph)
    return copy


def with_data(stub: onnx.TensorProto, value: np.ndarray) -> onnx.TensorProto:
    """`stub` (an initializer whose data lives elsewhere) as an ordinary tensor holding `value`."""
    tensor = onnx.TensorProto()
    copy_fields(stub, tensor, skip="external_data")
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = np.ascontiguousarray(value).tobytes()
    return tensor


def infer_shapes(model: onnx.ModelProto, hints: list[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    """Shape-infer a copy of `model` (data propagation on, so Reshape targets resolve), seeded with
    the shapes in `hints` (a hint for a graph input replaces its declared shape).  Only the returned
    graph's value_info, inputs and outputs are meant to be read: large initializers of the returned
    model carry no data (see `weightless_copy`)."""
    copy = weightless_copy(model)
    inputs = {vi.name: vi for vi in copy.graph.input}
    dynamic: list[onnx.ValueInfoProto] = []
    if any(hint.name in inputs for hint in hints):
        # concrete input sizes: declared shapes with dynamic sizes would shadow what inference
        # now derives from them; they come back below only where inference derives nothing
        dynamic = [vi for vi in copy.graph.value_info if not _is_static(vi)]
        static = [vi for vi in copy.graph.value_info if _is_static(vi)]
        del copy.graph.value_info[:]
        copy.graph.value_info.extend(static)
    for hint in hints:
        if hint.name in inputs:
            inputs[hint.name].CopyFrom(hint)
        else:
            copy.graph.value_info.append(hint)
    try:
        inferred = shape_inference.infer_shapes(copy, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        # A model whose graph alone cannot be serialised; fall back to declared shapes.
        return model
    derived = {vi.name for vi in inferred.graph.value_info if _is_static(vi)}
    inferred.graph.value_info.extend(vi for vi in dynamic if vi.name not in derived)
    return inferred


def _is_static(vi: onnx.ValueInfoProto) -> bool:
    shape = _shape_of(vi)
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _shape_of(value_info: onnx.ValueInfoProto) -> tuple[Size, ...] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Size] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


REFINE_ROUNDS = 4
"""Rounds of shape refinement (each one more onnx shape inference): the legacy exporter's attention
chains `view(b, n, -1, d)` -> transpose -> matmul -> `view(b, -1, n, d)`, each refinable once the
one before it is."""


PROBE_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19)
"""Sizes given to the graph inputs' dynamic axes when probing which sizes are which input's (see
ModelIndex._probe_dims): distinct primes, small enough that no exporter's clamp (a slice of a
position table) is reached."""


@dataclass
class ModelIndex:
    """Producers, consumers, constants and shapes of one graph (the main graph; subgraphs are opaque)."""

    model: onnx.ModelProto
    shapes: dict[str, tuple[Size, ...]] = field(default_factory=dict)
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    constant_nodes: dict[str, int] = field(default_factory=dict)
    elem_types: dict[str, int] = field(default_factory=dict)
    dim_aliases: dict[tuple[str, int], str] = field(default_factory=dict)
    """Dynamic sizes known to be a graph input's dynamic size (see `_probe_dims`)."""
    external: dict[str, np.ndarray] = field(default_factory=dict)
    """The data of initializers that are stubs in `model` (memory-mapped external data, see
    load.map_external); `const` reads them without a copy."""

    @classmethod
    def build(cls, model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
              external: dict[str, np.ndarray] | None = None) -> "ModelIndex":
        """Index `model`.  Sizes that onnx's inference leaves unknown but op rules can work out
        (`OpRule.refine_shape`: a Reshape whose target is a run-time shape vector) seed a second
        inference, so tensors downstream get shapes too.

        `input_shapes` fixes the graph inputs' sizes (the shapes the model really runs at), so
        every size downstream is known: what cost counts at.  Pruning itself works on the index
        without them, which keeps dynamic dimensions dynamic.  `external` holds the data of
        initializers that are stubs in `model` (see the field)."""
        seeds = [onnx.helper.make_tensor_value_info(name, _input_type(model, name), list(shape))
                 for name, shape in (input_shapes or {}).items()]
        index = cls._build(model, {}, seeds, external or {})
        hints: dict[str, tuple[Size, ...]] = {}
        aliases: dict[tuple[str, int], str] = {}
        probed = bool(seeds)
        for _ in range(REFINE_ROUNDS + 1):  # a refined size can let a later Reshape refine its own
            new = {**hints, **index._refined_shapes()}
            if new == hints and not probed:
                probed = True
                aliases = index._probe_dims(new)
                index.dim_aliases = aliases
                new.update(index._refined_shapes())
            if new == hints:
                break
            hints = new
            index = cls._build(model, hints, seeds + index._hint_infos(hints), external or {})
            index.dim_aliases = aliases
        return index

    def _refined_shapes(self) -> dict[str, tuple[Size, ...]]:
        from .ops import NodeContext, rule_for

        hints = {}
        for i, node in enumerate(self.model.graph.node):
            refined = rule_for(node, self.opset).refine_shape(NodeContext(self, i))
            if refined is not None:
                hints[node.output[0]] = refined
        return hints

    def _probe_dims(self, hints: dict[str, tuple[Size, ...]]) -> dict[tuple[str, int], str]:
        """Which dynamic sizes are a graph input's dynamic size: (tensor, axis) -> that size's name,
        for sizes onnx's inference named with a fresh symbol (the legacy exporter's `view(b, n, -1)`
        reads `b` from one tensor while its input's batch carries another symbol, so `-1` cannot be
        worked out by cancelling them).

        Shape inference runs at two probes of the inputs' dynamic sizes, the k-th being
        PROBE_PRIMES[k] in the first and PROBE_PRIMES[k + 1] in the second; a size that takes
        exactly the k-th input size's two values is taken to be that size.  Nothing is concluded
        from a size that stays the same (a ceil-divided or clamped size can do so)."""
        dynamic = [(vi.name, a, d) for vi in self.model.graph.input if vi.name in self.graph_inputs
                   for a, d in enumerate(_shape_of(vi) or ()) if not (isinstance(d, int) and d > 0)]
        unknown = {name: shape for name, shape in self.shapes.items()
                   if name not in self.graph_inputs and any(isinstance(d, str) for d in shape)}
        if not dynamic or len(dynamic) >= len(PROBE_PRIMES) or not unknown:
            return {}
        probes = []
        for shift in (0, 1):
            sizes = {vi.name: list(_shape_of(vi)) for vi in self.model.graph.input if vi.name in self.graph_inputs}
            for k, (name, axis, _) in enumerate(dynamic):
                sizes[name][axis] = PROBE_PRIMES[k + shift]
            seeds = [onnx.helper.make_tensor_value_info(name, _input_type(self.model, name), shape) for name, shape in sizes.items()]
            inferred = infer_shapes(self.model, seeds + self._hint_infos({n: h for n, h in hints.items() if n not in unknown}))
            probes.append({vi.name: _shape_of(vi) for vi in inferred.graph.value_info})
        names = {(PROBE_PRIMES[k], PROBE_PRIMES[k + 1]): d if isinstance(d, str) and d else f"{name}[{axis}]"
                 for k, (name, axis, d) in enumerate(dynamic)}
        found = {}
        for name, shape in unknown.items():
            a, b = probes[0].get(name), probes[1].get(name)
            if a is None or b is None or len(a) != len(shape) or len(b) != len(shape):
                continue
            for axis, (d, x, y) in enumerate(zip(shape, a, b)):
                if isinstance(d, str) and (x, y) in names:
                    found[(name, axis)] = names[(x, y)]
        return found

    def dim_name(self, tensor: str, axis: int) -> Size:
        """The size of `tensor` at `axis`, a dynamic one by the graph input size it is (see
        `_probe_dims`) where that is known, so that sizes named apart by inference line up."""
        shape = self.shapes.get(tensor)
        size = shape[axis] if shape is not None and axis < len(shape) else None
        return size if isinstance(size, int) else self.dim_aliases.get((tensor, axis), size)

    @classmethod
    def _build(cls, model: onnx.ModelProto, hints: dict[str, tuple[Size, ...]],
               hint_infos: list[onnx.ValueInfoProto], external: dict[str, np.ndarray]) -> "ModelIndex":
        from .ops import rule_for

        index = cls(model=model, external=external)
        graph = model.graph
        index.initializers = {t.name: t for t in graph.initializer}
        for i, node in enumerate(graph.node):
            for name in node.output:
                if name:
                    index.producer[name] = i
            for slot, name in enumerate(node.input):
                if name:
                    index.consumers.setdefault(name, []).append((i, slot))
            if node.output and rule_for(node, index.opset).constant_source:
                index.constant_nodes[node.output[0]] = i
            for attr in node.attribute:  # names used inside subgraphs are consumed by this node
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    for outer in _outer_names(sub):
                        index.consumers.setdefault(outer, []).append((i, -1))
        index._read_shapes(infer_shapes(model, hint_infos))
        index.shapes.update(hints)
        for name, tensor in index.initializers.items():
            index.shapes[name] = tuple(int(d) for d in tensor.dims)
            index.elem_types[name] = tensor.data_type
        for name, node_i in index.constant_nodes.items():
            value = index.const(name)
            if value is not None:
                index.shapes[name] = tuple(value.shape)
                index.elem_types[name] = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        return index

    def _hint_infos(self, hints: dict[str, tuple[Size, ...]]) -> list[onnx.ValueInfoProto]:
        return [onnx.helper.make_tensor_value_info(name, self.elem_types[name], list(shape))
                for name, shape in hints.items() if name in self.elem_types and name not in self.graph_outputs]

    def _read_shapes(self, inferred: onnx.ModelProto) -> None:
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            if vi.type.tensor_type.elem_type:
                self.elem_types[vi.name] = vi.type.tensor_type.elem_type
            shape = _shape_of(vi)
            if shape is not None and (vi.name not in self.shapes or None not in shape):
                self.shapes[vi.name] = shape

    @cached_property
    def opset(self) -> int:
        """The default-domain opset version."""
        for entry in self.model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                return int(entry.version)
        return 1

    @cached_property
    def graph_inputs(self) -> set[str]:
        return {vi.name for vi in self.model.graph.input} - set(self.initializers)

    @cached_property
    def graph_outputs(self) -> set[str]:
        return {vi.name for vi in self.model.graph.output}

    @cached_property
    def values(self) -> "Values":
        """The evaluator of this model's values known before run time (onnxprune.ops.values)."""
        from .ops.values import Values

        return Values(self)

    def is_const(self, name: str) -> bool:
        """A stored constant: an initializer or a Constant node's output."""
        return name in self.initializers or name in self.constant_nodes

    def const(self, name: str) -> np.ndarray | None:
        """The value of tensor `name` if known before run time (stored or folded), else None."""
        return self.values.const(name)

    def shape(self, name: str) -> tuple[Size, ...] | None:
        return self.shapes.get(name)

    def node_label(self, i: int) -> str:
        node = self.model.graph.node[i]
        return f"{node.op_type} '{node.name or node.output[0]}'"


def _input_type(model: onnx.ModelProto, name: str) -> int:
    for vi in model.graph.input:
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    raise KeyError(f"no graph input named '{name}'")


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scope."""
    local = {t.name for t in graph.initializer} | {vi.name for vi in graph.input}
    used: set[str] = set()
    for node in graph.node:
        local.update(node.output)
        used.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                used |= _outer_names(sub)
    return used - local
