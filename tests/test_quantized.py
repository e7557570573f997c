"""Quantized models are pruned directly: integer weights are sliced with their per-channel scales
and zero points, nothing is re-quantized.  Exactness: pruning equals the original with the removed
channels made dead (their integer filter rows and biases zeroed), to float precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from conftest import run_cli

MODELS = Path(__file__).resolve().parents[1] / "models"
CHANNELS = 8


def _qdq_net(activation_qdq: bool) -> onnx.ModelProto:
    """conv1 (int8 weights, per-channel scales) -> Relu [-> QuantizeLinear/DequantizeLinear] -> conv2."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-100, 100, (CHANNELS, 3, 3, 3)).astype(np.int8), "w1_q"),
             numpy_helper.from_array((rng.random(CHANNELS) * 0.01 + 0.005).astype(np.float32), "w1_scale"),
             numpy_helper.from_array(np.zeros(CHANNELS, np.int8), "w1_zp"),
             numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(rng.integers(-100, 100, (4, CHANNELS, 3, 3)).astype(np.int8), "w2_q"),
             numpy_helper.from_array(np.float32(0.01), "w2_scale"),
             numpy_helper.from_array(np.float32(0.05), "a_scale"), numpy_helper.from_array(np.uint8(0), "a_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1"], name="dq_w1", axis=0),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    feed = "r1"
    if activation_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["r1", "a_scale", "a_zp"], ["r1_q"], name="q_r1"),
                  helper.make_node("DequantizeLinear", ["r1_q", "a_scale", "a_zp"], ["r1_dq"], name="dq_r1")]
        feed = "r1_dq"
    nodes += [helper.make_node("DequantizeLinear", ["w2_q", "w2_scale"], ["w2"], name="dq_w2"),
              helper.make_node("Conv", [feed, "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _made_dead(model: onnx.ModelProto, channels: list[int]) -> onnx.ModelProto:
    dead = onnx.ModelProto()
    dead.CopyFrom(model)
    for t in dead.graph.initializer:
        if t.name in ("w1_q", "b1"):
            value = numpy_helper.to_array(t).copy()
            value[channels] = 0
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    return dead


@pytest.mark.parametrize("activation_qdq", [False, True], ids=["weights", "weights+activations"])
def test_qdq_pruned_equals_original_made_dead(activation_qdq):
    model = _qdq_net(activation_qdq)
    pm = onnxprune.PrunableModel(model)
    group = next(g for g in pm.groups if g.n_channels == CHANNELS)
    plan = pm.plan(ratio=0.5, criterion="l1")
    keep = next(gp.keep for gp in plan.groups if gp.channels == CHANNELS)
    removed = sorted(set(range(CHANNELS)) - set(keep))
    assert len(removed) == CHANNELS // 2 and group.prunable
    pruned = pm.apply(plan).model
    onnx.checker.check_model(pruned, full_check=True)
    assert _init(pruned, "w1_q").dtype == np.int8 and _init(pruned, "w1_q").shape[0] == len(keep)
    np.testing.assert_array_equal(_init(pruned, "w1_scale"), _init(model, "w1_scale")[keep])  # not re-quantized
    assert _init(pruned, "w2_q").shape[1] == len(keep)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(pruned, x), _run(_made_dead(model, removed), x), rtol=1e-5, atol=1e-6)


def test_dead_channels_of_a_quantized_weight_are_found():
    model = _made_dead(_qdq_net(False), [1, 5])
    result = onnxprune.PrunableModel(model).prune(threshold=0)
    assert result.exact and _init(result.model, "w1_q").shape[0] == CHANNELS - 2
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, x), _run(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["qdq", "qoperator", "dynamic"])
def test_onnxruntime_quantized_digits_model_prunes(fmt, tmp_path, capsys):
    """The shipped digits CNN quantized by onnxruntime (static QDQ, static QOperator, dynamic)
    prunes through the CLI: smaller, valid, still runs, integer weights stay integer."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = tmp_path / f"digits_{fmt}.onnx"
    if fmt == "dynamic":
        quantize_dynamic(str(MODELS / "digits_cnn.onnx"), str(quantized), weight_type=QuantType.QInt8)
    else:
        code, _, err = run_cli(capsys, "quantize", str(MODELS / "digits_cnn.onnx"), "-o", str(quantized), "--data",
                               str(MODELS / "digits_calib.npz"), "--per-channel", "--format", fmt, "--runs", "3")
        assert code == 0, err
    before = onnx.load(str(quantized))
    out = tmp_path / "pruned.onnx"
    code, text, err = run_cli(capsys, "prune", str(quantized), "-o", str(out), "--ratio", "0.3", "--json")
    assert code == 0, err
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    ints_before = sum(numpy_helper.to_array(t).size for t in before.graph.initializer if t.data_type == TensorProto.INT8)
    ints_after = sum(numpy_helper.to_array(t).size for t in pruned.graph.initializer if t.data_type == TensorProto.INT8)
    assert 0 < ints_after < ints_before
    x = np.load(MODELS / "digits_calib.npz")["x"][:4]
    assert _run(pruned, x).shape == _run(before, x).shape
