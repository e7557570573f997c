"""Symbolic evaluation of shape tensors (the second input of Reshape and Expand).

Exporters often compute a target shape at run time: `Shape -> Gather -> Unsqueeze -> Concat` for
`x.view(x.size(0), -1)` (legacy PyTorch) or `Shape -> Gather -> Cast -> Slice -> Concat(1024)`
(tf2onnx).  Each element of such a tensor is either a constant (with the constant tensor and
position it came from, so surgery can rewrite it) or "axis a of tensor t" (which follows pruning
by itself, provided the two dims are coupled).  Anything else is not understood.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..graph import ModelIndex


class ConstEntry(NamedTuple):
    value: int
    source: str  # constant tensor holding the value
    pos: int     # flat position in that tensor


class DimEntry(NamedTuple):
    tensor: str
    axis: int
    shape_node: int  # the Shape node that read it (a constant's dims are per use)


Entry = ConstEntry | DimEntry

# Ops a shape value may flow through and stay understood (Gather and Slice only through input 0).
SHAPE_PASS_OPS = {"Cast", "Identity", "Concat", "Unsqueeze", "Squeeze", "Gather", "Slice", "Reshape", "Expand"}
SHAPE_SINKS = {("Reshape", 1), ("Expand", 1), ("Resize", 3)}


def _slice_params(index: ModelIndex, node) -> tuple[int, int, int] | None:
    attrs = {a.name: a for a in node.attribute}
    if len(node.input) >= 3:
        values = [index.const(n) if n else None for n in list(node.input[1:]) + [""] * (5 - len(node.input))]
        starts, ends, axes, steps = values[0], values[1], values[2], values[3]
        if starts is None or ends is None or (axes is not None and list(axes.reshape(-1)) != [0]):
            return None
        step = 1 if steps is None else int(steps.reshape(-1)[0])
        return int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), step
    if "starts" in attrs and "ends" in attrs:
        return int(attrs["starts"].ints[0]), int(attrs["ends"].ints[0]), 1
    return None


def eval_shape_tensor(index: ModelIndex, name: str, depth: int = 0) -> list[Entry] | None:
    """The elements of the 0-D/1-D integer tensor `name`, or None if not understood."""
    if depth > 32:
        return None
    if index.is_const(name):
        value = index.const(name)
        if value is None or value.ndim > 1 or value.dtype.kind not in "iu":
            return None
        return [ConstEntry(int(v), name, i) for i, v in enumerate(value.reshape(-1))]
    if name not in index.producer:
        return None
    node = index.model.graph.node[index.producer[name]]
    op = node.op_type
    if op == "Shape":
        shape = index.shape(node.input[0])
        if shape is None:
            return None
        attrs = {a.name: a.i for a in node.attribute}
        rank = len(shape)
        start = attrs.get("start", 0) % rank if attrs.get("start", 0) < 0 else min(attrs.get("start", 0), rank)
        end = attrs.get("end", rank)
        end = end % rank if end < 0 else min(end, rank)
        return [DimEntry(node.input[0], a, index.producer[name]) for a in range(start, end)]
    if op in ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape"):
        shape = index.shape(name)
        entries = eval_shape_tensor(index, node.input[0], depth + 1)
        return entries if entries is not None and (shape is None or len(shape) <= 1) else None
    if op == "Expand":  # broadcasting a 1-element shape vector to [1] keeps its value
        target = index.const(node.input[1])
        entries = eval_shape_tensor(index, node.input[0], depth + 1)
        if entries is None or target is None or np.any(target.reshape(-1) != 1) or target.size > 1:
            return None
        return entries
    if op == "Concat":
        parts = [eval_shape_tensor(index, n, depth + 1) for n in node.input]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op == "Gather":
        data = eval_shape_tensor(index, node.input[0], depth + 1)
        where = index.const(node.input[1])
        if data is None or where is None:
            return None
        try:
            return [data[int(i)] for i in where.reshape(-1)]
        except IndexError:
            return None
    if op == "Slice":
        data = eval_shape_tensor(index, node.input[0], depth + 1)
        params = _slice_params(index, node)
        if data is None or params is None:
            return None
        start, end, step = params
        return data[slice(start, end, step)] if step != 0 else None
    return None


def shape_value_escapes(index: ModelIndex, name: str, depth: int = 0) -> str | None:
    """Where the value of shape tensor `name` is used for something other than a Reshape/Expand
    target (through understood ops only); None if nowhere."""
    if depth > 32:
        return "a long chain of shape computations"
    if name in index.graph_outputs:
        return "a graph output"
    for node_i, slot in index.consumers.get(name, []):
        node = index.model.graph.node[node_i]
        if (node.op_type, slot) in SHAPE_SINKS:
            continue
        if node.op_type in SHAPE_PASS_OPS and (slot == 0 or node.op_type in ("Concat",)):
            escape = shape_value_escapes(index, node.output[0], depth + 1)
            if escape:
                return escape
            continue
        return index.node_label(node_i)
    return None


def refine_shapes(index: ModelIndex) -> None:
    """Fill in Reshape/Expand output sizes that shape inference left unknown but that the symbolic
    target shape gives (for example a conv bias built as Expand(0, Shape(weight)[0:1]))."""
    hints = {}
    for node in index.model.graph.node:
        if node.op_type not in ("Reshape", "Expand") or len(node.input) < 2 or not node.output:
            continue
        shape = index.shape(node.output[0])
        entries = eval_shape_tensor(index, node.input[1])
        if shape is None and entries is not None:
            shape = (None,) * len(entries)
        if shape is None or entries is None or len(entries) != len(shape):
            continue
        refined = []
        for size, entry in zip(shape, entries):
            if not isinstance(size, int):
                if isinstance(entry, ConstEntry) and entry.value > 1:
                    size = entry.value
                elif isinstance(entry, DimEntry):
                    source = index.shape(entry.tensor)
                    if source is not None and isinstance(source[entry.axis], int):
                        size = source[entry.axis]
            refined.append(size)
        if tuple(refined) != index.shape(node.output[0]):
            hints[node.output[0]] = tuple(refined)
    if hints:
        index.reinfer_with(hints)


def rewrite_const_entries(ctx, entries, skip=lambda pos, value: False) -> None:
    """Write the new size of each pruned output axis into the constant its target-shape element came from.

    A constant that is this node's own input but is also read elsewhere (exporters deduplicate
    identical shape constants, so two flatten heads can share one `[-1, 512]`) gets a copy for this
    node: editing it in place would change the other reader's shape too."""
    out_shape = ctx.out_shape(0)
    edits: dict[str, dict[int, int]] = {}
    for pos, entry in enumerate(entries):
        if not isinstance(entry, ConstEntry) or entry.value <= 0 or skip(pos, entry.value):
            continue
        new = ctx.new_size(ctx.out_dim(0, pos), out_shape[pos] if isinstance(out_shape[pos], int) else entry.value)
        if new != entry.value:
            edits.setdefault(entry.source, {})[entry.pos] = new
    for source, changes in edits.items():
        slot = next((s for s, name in enumerate(ctx.node.input) if name == source), None)
        if slot is not None and ctx.index.consumers.get(source) != [(ctx.i, slot)]:
            value = ctx.index.const(source).copy()
            flat = value.reshape(-1)
            for pos, new in changes.items():
                flat[pos] = new
            ctx.set_const(slot, value)
            continue
        for pos, new in changes.items():
            ctx.writer.set_const_element(source, pos, new)
