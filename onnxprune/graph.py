"""A read-only index over a loaded model: who produces and consumes each tensor, which tensors are
constants (initializers or Constant nodes) and what shape every tensor has after onnx shape
inference.  Every later stage asks questions through this index instead of walking the proto."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import numpy_helper, shape_inference

Size = int | str | None
"""A dimension: a known int, a symbolic name, or None when unknown."""


STRIP_ABOVE_ELEMENTS = 4096
"""Initializers with more elements than this are handed to shape inference without their data."""


CACHE_ABOVE_BYTES = 1 << 24
"""Constants larger than this are decoded again on each use instead of cached: every cached value
is a second copy of its weight (protobuf hands out raw_data as a fresh bytes object), which for a
multi-GB model would double the memory; decoding one weight again costs a memcpy."""


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


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-infer a copy of `model` (data propagation on, so Reshape targets resolve).  Only the
    returned graph's value_info, inputs and outputs are meant to be read: large initializers of
    the returned model carry no data (see `weightless_copy`)."""
    try:
        return shape_inference.infer_shapes(weightless_copy(model), check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        # A model whose graph alone cannot be serialised; fall back to declared shapes.
        return model


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
    external: dict[str, np.ndarray] = field(default_factory=dict)
    """The data of initializers that are stubs in `model` (memory-mapped external data, see
    load.map_external); `const` reads them without a copy."""

    @classmethod
    def build(cls, model: onnx.ModelProto, external: dict[str, np.ndarray] | None = None) -> "ModelIndex":
        index = cls(model=model, external=external or {})
        graph = model.graph
        index.initializers = {t.name: t for t in graph.initializer}
        for i, node in enumerate(graph.node):
            for name in node.output:
                if name:
                    index.producer[name] = i
            for slot, name in enumerate(node.input):
                if name:
                    index.consumers.setdefault(name, []).append((i, slot))
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                index.constant_nodes[node.output[0]] = i
            for attr in node.attribute:  # names used inside subgraphs are consumed by this node
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    for outer in _outer_names(sub):
                        index.consumers.setdefault(outer, []).append((i, -1))
        index._read_shapes(infer_shapes(model))
        for name, tensor in index.initializers.items():
            index.shapes[name] = tuple(int(d) for d in tensor.dims)
            index.elem_types[name] = tensor.data_type
        for name, node_i in index.constant_nodes.items():
            value = index.const(name)
            if value is not None:
                index.shapes[name] = tuple(value.shape)
        return index

    def _read_shapes(self, inferred: onnx.ModelProto) -> None:
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            if vi.type.tensor_type.elem_type:
                self.elem_types[vi.name] = vi.type.tensor_type.elem_type
            shape = _shape_of(vi)
            if shape is not None and (vi.name not in self.shapes or None not in shape):
                self.shapes[vi.name] = shape

    def reinfer_with(self, hints: dict[str, tuple[Size, ...]]) -> None:
        """Run shape inference again, seeded with sizes worked out by onnxprune, so that tensors
        downstream of a Reshape that onnx could not follow get shapes too."""
        graph = self.model.graph
        added = 0
        for name, shape in hints.items():
            if name in self.elem_types and name not in self.graph_outputs:
                graph.value_info.append(onnx.helper.make_tensor_value_info(name, self.elem_types[name], list(shape)))
                added += 1
        try:
            self._read_shapes(infer_shapes(self.model))
        finally:
            for _ in range(added):
                graph.value_info.pop()
        self.shapes.update(hints)

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
    def _const_cache(self) -> dict[str, np.ndarray]:
        return {}

    def is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, or None if `name` is computed at run time."""
        if name in self._const_cache:
            return self._const_cache[name]
        value = None
        if name in self.external:
            return self.external[name]  # a view of the mapped file: nothing to cache
        if name in self.initializers:
            value = numpy_helper.to_array(self.initializers[name])
        elif name in self.constant_nodes:
            node = self.model.graph.node[self.constant_nodes[name]]
            attr = node.attribute[0] if len(node.attribute) == 1 else None
            if attr is not None and attr.name == "value":
                value = numpy_helper.to_array(attr.t)
            elif attr is not None and attr.name in ("value_float", "value_int"):
                value = np.array(onnx.helper.get_attribute_value(attr))
            elif attr is not None and attr.name in ("value_floats", "value_ints"):
                value = np.array(onnx.helper.get_attribute_value(attr))
        elif name in self.producer:
            value = self._fold(name)
        if value is not None and value.nbytes <= CACHE_ABOVE_BYTES:
            self._const_cache[name] = value
        return value

    FOLDABLE = {"Cast", "Concat", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Gather", "Slice",
                "Mul", "Add", "Sub", "Div", "Neg", "Shape", "Range", "ConstantOfShape", "Expand", "CastLike"}

    def _fold(self, name: str, depth: int = 0) -> np.ndarray | None:
        """Evaluate a small node whose inputs are all constants (exporters build axes and shape
        vectors that way) with onnx's reference evaluator."""
        node = self.model.graph.node[self.producer[name]]
        if node.op_type not in self.FOLDABLE or node.domain not in ("", "ai.onnx") or depth > 8:
            return None
        if node.op_type == "Shape":
            shape = self.shape(node.input[0])
            if shape is None or not all(isinstance(s, int) for s in shape):
                return None
        if node.op_type == "CastLike":  # only the dtype of the second input matters
            value, target = self.const(node.input[0]), self.elem_types.get(node.input[1])
            if value is None or not target:
                return None
            return value.astype(onnx.helper.tensor_dtype_to_np_dtype(target))
        inputs = {}
        for n in node.input:
            if not n or node.op_type == "Shape":
                continue
            value = self.const(n) if n in self._const_cache or self.is_const(n) or n not in self.producer else self._fold(n, depth + 1)
            if value is None or value.size > 4096:
                return None
            inputs[n] = value
        if node.op_type == "Shape":
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            end = next((a.i for a in node.attribute if a.name == "end"), None)
            return np.array(self.shape(node.input[0]), dtype=np.int64)[start:end]
        from onnx.reference import ReferenceEvaluator

        graph = onnx.helper.make_graph(
            [node], "fold", [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                             for n, v in inputs.items()],
            [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o])
        mini = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import))
        try:
            results = ReferenceEvaluator(mini).run(None, inputs)
        except Exception:  # noqa: BLE001 - anything the evaluator cannot do is simply not folded
            return None
        value = np.asarray(results[list(node.output).index(name)])
        self._const_cache[name] = value
        return value

    def shape(self, name: str) -> tuple[Size, ...] | None:
        return self.shapes.get(name)

    def node_label(self, i: int) -> str:
        node = self.model.graph.node[i]
        return f"{node.op_type} '{node.name or node.output[0]}'"


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
