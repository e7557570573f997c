"""Nodes onnxprune itself inserts into a model (the rest of the code never names an op)."""

from __future__ import annotations

from typing import NamedTuple

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


def bias_add_node(x: str, bias: str, out: str, name: str) -> onnx.NodeProto:
    """`out = x + bias`: the bias reconstruction attaches to a layer that has none."""
    return helper.make_node("Add", [x, bias], [out], name=name)


def layer_norm_over_width_nodes(x: str, scale: str, bias: str | None, consts: "LayerNormConstants", out: str,
                                prefix: str, epsilon: float) -> list[onnx.NodeProto]:
    """LayerNormalization over the last axis of `x` whose statistics run over the original width
    N although `x` holds only N' of its channels (the others were exactly zero): `x` is padded
    back to N with zeros, normalised by an ordinary LayerNormalization (gamma and beta padded with
    zeros: the padded channels are sliced off again) and the N' kept channels are sliced out.
    The removed channels count as the zeros they were in the mean and the variance, so removing
    dead channels keeps every output; and LayerNormalization, Pad and Slice are ops every runtime
    and converter implements natively (ncnn's pnnx among them), unlike a decomposition.
    `consts` names the constants: the pads of `x` and of gamma/beta, and the Slice bounds."""
    t = lambda name: f"{prefix}{name}"  # noqa: E731
    nodes = [helper.make_node("Pad", [x, consts.pads], [t("padded")], mode="constant"),
             helper.make_node("Pad", [scale, consts.scale_pads], [t("scale")], mode="constant")]
    inputs = [t("padded"), t("scale")]
    if bias:
        nodes.append(helper.make_node("Pad", [bias, consts.bias_pads], [t("bias")], mode="constant"))
        inputs.append(t("bias"))
    nodes.append(helper.make_node("LayerNormalization", inputs, [t("normalized")], axis=-1, epsilon=epsilon))
    nodes.append(helper.make_node("Slice", [t("normalized"), consts.starts, consts.ends, consts.axes], [out]))
    for k, node in enumerate(nodes):
        node.name = f"{prefix}{k}"
    return nodes


def _renamed_copy(node: onnx.NodeProto, output: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.output[0] = output
    return copy


def scaled_mean_nodes(mean: onnx.NodeProto, kept_fraction: str, prefix: str) -> list[onnx.NodeProto]:
    """The ReduceMean `mean` over N' channels, times N'/N: the mean over the original N channels
    when the removed ones were zero (same output name)."""
    pruned = f"{prefix}pruned_mean"
    nodes = [_renamed_copy(mean, pruned),
             helper.make_node("Mul", [pruned, kept_fraction], [mean.output[0]], name=f"{prefix}scale")]
    nodes[1].metadata_props.extend(mean.metadata_props)
    return nodes


def variance_over_width_nodes(var: onnx.NodeProto, mean: str, kept_fraction: str, removed_fraction: str,
                              prefix: str) -> list[onnx.NodeProto]:
    """The ReduceMean `var` of (x - mean)^2 over N' channels rewritten to the original width N:
    k * var' + (1 - k) * mean^2 (each removed zero channel adds mean^2), k = N'/N (same output name)."""
    t = lambda name: f"{prefix}{name}"  # noqa: E731
    nodes = [_renamed_copy(var, t("pruned_var")),
             helper.make_node("Mul", [t("pruned_var"), kept_fraction], [t("kept_var")]),
             helper.make_node("Mul", [mean, mean], [t("mean_squared")]),
             helper.make_node("Mul", [t("mean_squared"), removed_fraction], [t("removed_var")]),
             helper.make_node("Add", [t("kept_var"), t("removed_var")], [var.output[0]])]
    for k, node in enumerate(nodes[1:]):
        node.name = f"{prefix}{k}"
        node.metadata_props.extend(var.metadata_props)
    return nodes


class LayerNormConstants(NamedTuple):
    """Names of the (int64) constants `layer_norm_over_width_nodes` reads."""

    pads: str
    scale_pads: str
    bias_pads: str | None
    starts: str
    ends: str
    axes: str