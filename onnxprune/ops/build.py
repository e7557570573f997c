"""Nodes onnxprune itself inserts into a model (the rest of the code never names an op)."""

from __future__ import annotations

import onnx
from onnx import helper


def channel_mask_nodes(tensor: str, mask: str, index: str, shape: str, out: str) -> list[onnx.NodeProto]:
    """`out = tensor * reshape(mask[index], shape)`: a per-channel mask (one value per group
    channel) spread over one axis of `tensor` (`index` maps the axis's elements to channels,
    `shape` is all ones but -1 on that axis)."""
    elements, spread = f"{out}_elem", f"{out}_bcast"
    return [helper.make_node("Gather", [mask, index], [elements]),
            helper.make_node("Reshape", [elements, shape], [spread]),
            helper.make_node("Mul", [tensor, spread], [out])]


def identity_node(source: str, out: str, name: str) -> onnx.NodeProto:
    """`out = source` (block removal: a removed residual sum that was a graph output keeps its name)."""
    return helper.make_node("Identity", [source], [out], name=name)
