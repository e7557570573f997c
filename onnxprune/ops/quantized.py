"""Quantization ops.  Channel pruning through them is not supported yet: they pin everything they
touch (the default), and their presence marks the model as quantized, which `load` refuses
(prune the float model, then quantize)."""

from __future__ import annotations

import onnx

from .base import OpRule
from .registry import model_opset, register, rule_for


@register("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
          "DynamicQuantizeLinear")
class QuantizedOp(OpRule):
    quantized = True


@register("QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearSigmoid",
          "QLinearLeakyRelu", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", domain="com.microsoft")
class MicrosoftQuantizedOp(OpRule):
    quantized = True


def is_quantized(model: onnx.ModelProto) -> bool:
    """The model contains quantization ops."""
    opset = model_opset(model)
    return any(rule_for(n, opset).quantized for n in model.graph.node)
