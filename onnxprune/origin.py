"""What an ONNX node tells about the layer it came from in the origin framework.

The plan records, for every member, the *scope* of its node: the dotted module path for PyTorch
(the dynamo exporter's `pkg.torch.onnx.name_scopes` metadata), the legacy exporter's scope chain
(`1/body/body.0` from the node name `/1/body/body.0/Conv`: each part relative to an enclosing
module), the layer name for tf2onnx (`model/layer/convolution`).  The
hand-back uses it when an initializer name is not a parameter name (folded BatchNorm, legacy
`onnx::Conv_12` names)."""

from __future__ import annotations

import ast

import onnx


def _dynamo_scopes(node: onnx.NodeProto) -> list[str] | None:
    """The module paths enclosing a node, outermost first, from the dynamo exporter's metadata
    (None when it has none; [] when it cannot be read)."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if not scopes:
        return None
    try:
        names = ast.literal_eval(scopes)
    except (ValueError, SyntaxError):
        return []
    return [n for n in names[:-1] if n]


def node_scope(node: onnx.NodeProto) -> str | None:
    modules = _dynamo_scopes(node)
    if modules:
        return modules[-1]
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:  # legacy torch exporter: /1/body/body.0/Conv
        return "/".join(name.split("/")[1:-1]) or None
    if "/" in name:  # tf2onnx: model/layer/op
        parts = name.split("/")
        return parts[-2] if len(parts) >= 2 else None
    return None


def scope_chain(node: onnx.NodeProto) -> list[str]:
    """The origin-framework layers enclosing a node, outermost first, each as `node_scope` spells
    it (dynamo: `['blocks', 'blocks.0', 'blocks.0.attn']` from its metadata; legacy:
    `['blocks', 'blocks/blocks.0', 'blocks/blocks.0/attn']` from `/blocks/blocks.0/attn/MatMul`);
    empty when the node names no layer.  Block removal uses it to find the one layer that computes
    a residual branch (onnxprune.blocks)."""
    modules = _dynamo_scopes(node)
    if modules is not None:
        return modules
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:
        parts = name.split("/")[1:-1]
        return ["/".join(parts[:k + 1]) for k in range(len(parts))]
    return []


_GENERATED_WEIGHT = ("onnx::", "val_", "const_", "_val_")
"""Initializer name prefixes that exporters generate (legacy torch's `onnx::Conv_12`, dynamo's
`val_3`, tf2onnx's `const_fold_opt__9`): they name no layer."""


def _weight_layer(name: str) -> str | None:
    """The layer an initializer name belongs to: `features.0.weight` -> `features.0` (PyTorch
    state_dict key), `conv2d_0.w_0` -> `conv2d_0` (Paddle), `model/conv/kernel:0` -> `conv`
    (tf2onnx: the model's name, then the layer's)."""
    if not name or name.startswith(_GENERATED_WEIGHT):
        return None
    if "/" in name:
        parts = name.split("/")
        return parts[1] if len(parts) >= 3 else None
    head, dot, tail = name.rpartition(".")
    if dot and head and (tail in ("weight", "bias") or tail[:2] in ("w_", "b_")):
        return head
    return None


def _legacy_path(scope: str) -> str:
    """The legacy exporter's scope chain as one module path: each part is relative to the one
    before or extends it (`layer1/layer1.0/conv1` -> `layer1.0.conv1`, `1/body/body.0` -> `1.body.0`)."""
    path: list[str] = []
    for part in scope.split("/"):
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def scope_path(scope: str | None) -> str | None:
    """A scope as a module path for tables (the legacy chain `1/body` reads `1.body`)."""
    return _legacy_path(scope) if scope and "/" in scope else scope


def layer_name(node: onnx.NodeProto, initializers=()) -> str | None:
    """The origin-framework layer a person knows this node by, for tables and plots: the module
    owning its first weight (a BatchNorm-folded conv is named after its conv, not the BatchNorm the
    dynamo metadata names), else the exporter's scope (dynamo metadata, the legacy chain as a
    dotted path, tf2onnx's layer), else None (show the ONNX node name)."""
    for name in node.input:
        if name in initializers:
            layer = _weight_layer(name)
            if layer:
                return layer
            break
    meta = {p.key: p.value for p in node.metadata_props}
    if meta.get("pkg.torch.onnx.name_scopes"):
        return node_scope(node)
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:
        return _legacy_path("/".join(name.split("/")[1:-1])) or None
    if name.count("/") >= 2:  # tf2onnx: model/layer/op...
        return name.split("/")[1]
    return None


def display_name(node: str, origin: str | None) -> str:
    """What a table shows: the origin name, else the ONNX node name."""
    return origin or node


def group_origins(nodes, uses, origins: dict[str, str | None]) -> list[str]:
    """The origin-framework names of the graph nodes at positions `uses` (a group's layers), in
    graph order (producers first), the ONNX node name where there is none; each name once."""
    chosen = [nodes[u] for u in sorted(uses)]
    return list(dict.fromkeys(origins.get(n.name or n.output[0]) or n.name or n.output[0] for n in chosen))


def alias_consumers(index, node_id: int) -> list[int]:
    """The nodes that really consume an alias's output (through chains of aliases), in graph order."""
    from .ops import is_alias

    found, todo, seen = set(), [node_id], set()
    while todo:
        current = index.model.graph.node[todo.pop()]
        for output in current.output:
            for consumer, _slot in index.consumers.get(output, []):
                if consumer in seen:
                    continue
                seen.add(consumer)
                if is_alias(index.model.graph.node[consumer]):
                    todo.append(consumer)
                else:
                    found.add(consumer)
    return sorted(found)


def member_scope(index, node_id: int) -> str | None:
    """The scope a plan member records for its node: the node's own, or for an alias (the legacy
    exporter's Identity in front of a deduplicated initializer, which has no scope) the scope of
    the node(s) that really consume it, when they all name the same layer; else None (the
    hand-back then refuses to guess, naming the member)."""
    from .ops import is_alias

    node = index.model.graph.node[node_id]
    if not is_alias(node):
        return node_scope(node)
    scopes = {node_scope(index.model.graph.node[c]) for c in alias_consumers(index, node_id)}
    return scopes.pop() if len(scopes) == 1 else None
