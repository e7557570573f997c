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


def node_scope(node: onnx.NodeProto) -> str | None:
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            names = []
        modules = [n for n in names[:-1] if n]
        if modules:
            return modules[-1]
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:  # legacy torch exporter: /1/body/body.0/Conv
        return "/".join(name.split("/")[1:-1]) or None
    if "/" in name:  # tf2onnx: model/layer/op
        parts = name.split("/")
        return parts[-2] if len(parts) >= 2 else None
    return None
