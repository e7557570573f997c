"""ThiNet selection (onnxprune.thinet, `--criterion thinet`): the Gram matrix of per-channel
contributions it accumulates is the one of the contributions computed directly; the greedy order
is ThiNet's; it finds channels whose contributions cancel, which the activation criterion
cannot; scores are deterministic and 0 for dead channels; the command line records it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.api import PrunableModel
from onnxprune.ops import NodeContext
from onnxprune.thinet import ThinetOptions, _Consumer, greedy_order, greedy_scores

ROOT = Path(__file__).resolve().parents[1]
F = TensorProto.FLOAT


def _model(nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, x_shape)],
                              [helper.make_tensor_value_info("y", F, y_shape)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def cancelling_pair() -> onnx.ModelProto:
    """x (3 channels) -> conv1 1x1 -> h (4 channels) -> conv2 3x3 -> y (1 channel).  h0 = h1 = 2 x0
    are the largest activations, but conv2 reads them with +k/4 and -k/4: their contributions
    cancel exactly.  h2 = 0.8 x1 and h3 = 0.8 x2 are smaller, read with k."""
    w1 = np.zeros((4, 3, 1, 1))
    w1[0, 0] = w1[1, 0] = 2.0
    w1[2, 1] = w1[3, 2] = 0.8
    kernel = np.random.default_rng(0).standard_normal((3, 3))
    w2 = np.stack([s * kernel for s in (0.25, -0.25, 1.0, 1.0)])[None]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    return _model(nodes, {"w1": w1, "w2": w2, "b2": np.array([0.3])}, ["N", 3, 8, 8], ["N", 1, 8, 8])


def test_greedy_finds_the_cancelling_pair_that_activation_magnitude_keeps():
    model = cancelling_pair()
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    pm = PrunableModel(model)
    removed = {}
    errors = {}
    for criterion in ("activation", "thinet"):
        plan = pm.plan(criterion, {"x": x}, ratio=0.5)
        (group,) = [g for g in plan.groups if g.removed]
        removed[criterion] = sorted(set(range(group.channels)) - set(group.keep))
        pruned = pm.apply(plan).model
        errors[criterion] = np.abs(_run(pruned, x) - _run(model, x)).max() / np.abs(_run(model, x)).max()
    assert removed == {"activation": [2, 3], "thinet": [0, 1]}
    assert errors["thinet"] < 1e-5 < 0.1 < errors["activation"]  # the pair's removal changes nothing


def _grouped_chain() -> onnx.ModelProto:
    """x -> conv1 (3 -> 6, 3x3) -> h -> conv2 (6 -> 4, 3x3, group 2, stride 2, pad 1) -> y."""
    rng = np.random.default_rng(2)
    inits = {"w1": rng.standard_normal((6, 3, 3, 3)), "b1": rng.standard_normal(6),
             "w2": rng.standard_normal((4, 3, 3, 3)), "b2": rng.standard_normal(4)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"], name="conv2", group=2, strides=[2, 2], pads=[1, 1, 1, 1])]
    return _model(nodes, inits, ["N", 3, 7, 7], ["N", 4, 4, 4])


@pytest.mark.parametrize("centered", [False, True])
def test_gram_is_that_of_the_contributions_computed_directly(centered):
    """G_ij = sum over every output position and channel of z_i z_j, z_c = conv2 on h with only
    channel c (no bias): the streamed (X^T X) * (W W^T) block sums give exactly that, batch by
    batch (grouped conv: channels of different groups do not interact)."""
    model = _grouped_chain()
    x = np.random.default_rng(3).standard_normal((10, 3, 7, 7)).astype(np.float32)
    pm = PrunableModel(model)
    index = pm.depgraph.index
    conv2 = next(i for i, n in enumerate(model.graph.node) if n.name == "conv2")
    view = NodeContext(index, conv2).rule.linear_view(NodeContext(index, conv2))
    consumer = _Consumer(view, index.const("w2"), 6, ThinetOptions())
    h = ort.InferenceSession(_with_h(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(["h"], {"x": x})[0]
    rng = np.random.default_rng(0)
    for part in np.array_split(h, 3):  # streamed: three batches
        consumer.add(part, (len(part), 4, 4, 4), 16, rng)  # 16 positions = all of the 4x4 output
    no_bias = _model([helper.make_node("Conv", ["x", "w2"], ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1])],
                     {"w2": index.const("w2")}, ["N", 6, 7, 7], ["N", 4, 4, 4])
    z = []
    for c in range(6):
        only = np.zeros_like(h)
        only[:, c] = h[:, c]
        z.append(_run(no_bias, only).reshape(-1).astype(np.float64))
    z = np.stack(z)
    if centered:
        out = _run(no_bias, h)
        per_position = out.shape[0] * 16
        z = z.reshape(6, len(h), 4, 16) - z.reshape(6, len(h), 4, 16).sum(axis=(1, 3), keepdims=True) / per_position
        z = z.reshape(6, -1)
    expected = z @ z.T / len(h)  # per calibration sample
    got = consumer.result(centered)
    assert consumer.n == len(h) * 16
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
    assert np.all(got[:3, 3:] == 0) and np.all(got[3:, :3] == 0)


@pytest.mark.parametrize("matmul", [False, True], ids=["gemm", "matmul-add"])
def test_gram_of_a_dense_consumer(matmul):
    """A Gemm (transB, PyTorch's Linear) or MatMul + Add reading h: z_c(s, o) = h_c(s) W[o, c], so
    G = (h^T h) * (W^T W); the criterion's group Gram for h is that (up to the sampled rows: all)."""
    from onnxprune.thinet import group_grams
    from test_recovery import gemm_chain

    model = gemm_chain(matmul)
    x = np.random.default_rng(6).standard_normal((24, 8)).astype(np.float32)
    pm = PrunableModel(model)
    grams = group_grams(pm.depgraph, {"x": x}, ThinetOptions(batch=8))
    (gid,) = [g.id for g in pm.depgraph.prunable_groups]
    h = ort.InferenceSession(_with_h(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(["h"], {"x": x})[0]
    w = pm.depgraph.index.const("d2.w").astype(np.float64)
    w = w if matmul else w.T  # as [in, out]
    expected = (h.T.astype(np.float64) @ h) * (w @ w.T) / len(h)  # per calibration sample
    np.testing.assert_allclose(grams[gid], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _with_h(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_tensor_value_info("h", F, None))
    return copy


def test_greedy_order_is_thinets():
    """Each step adds the channel that raises 1^T G_SS 1 least, and the reported errors are those."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((7, 30))
    z[3] = -z[1] + 0.01 * rng.standard_normal(30)
    gram = z @ z.T
    order, error = greedy_order(gram)
    err = lambda s: float(np.ones(len(s)) @ gram[np.ix_(s, s)] @ np.ones(len(s)))  # noqa: E731
    for t in range(7):
        chosen = list(order[:t])
        best = min((j for j in range(7) if j not in chosen), key=lambda j: err(chosen + [j]))
        assert np.isclose(err(chosen + [best]), err(chosen + [order[t]]))
        assert np.isclose(error[t], err(list(order[:t + 1])))
    scores = greedy_scores(gram)
    assert list(np.argsort(scores)) == list(order)  # the order is the ranking
    assert np.isclose(scores.max(), 1.0, atol=1e-6)  # removing everything: the whole error


def test_scores_deterministic_and_dead_channels_zero():
    """conv1's filter 2 is zero and it has no bias: that channel is dead and scores exactly 0; two
    runs on the same data give the same scores."""
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((5, 3, 3, 3))
    w1[2] = 0
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    model = _model(nodes, {"w1": w1, "w2": rng.standard_normal((4, 5, 3, 3)), "b2": rng.standard_normal(4)},
                   ["N", 3, 9, 9], ["N", 4, 9, 9])
    x = rng.standard_normal((12, 3, 9, 9)).astype(np.float32)
    first = PrunableModel(model).importance("thinet", {"x": x})
    second = PrunableModel(model).importance("thinet", {"x": x})
    (gid,) = first
    assert first[gid][2] == 0 and np.all(np.delete(first[gid], 2) > 0)
    np.testing.assert_array_equal(first[gid], second[gid])
    plan = PrunableModel(model).plan("thinet", {"x": x}, threshold=0)
    assert plan.options["criterion"] == "thinet"
    (group,) = plan.groups
    assert sorted(set(range(5)) - set(group.keep)) == [2]


def test_thinet_needs_data():
    from onnxprune.errors import InputError

    with pytest.raises(InputError, match="--criterion thinet needs calibration data"):
        PrunableModel(cancelling_pair()).plan("thinet", ratio=0.5)


def test_cli_thinet(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(ROOT / "models" / "digits_cnn.onnx"),
                               "-o", str(tmp_path / "p.onnx"), "--target-macs", "0.5", "--criterion", "thinet", *args],
                              capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})

    out = cli()
    assert out.returncode == 2 and "--criterion thinet needs calibration data" in out.stderr
    assert not (tmp_path / "p.onnx").exists()
    out = cli("--data", str(ROOT / "models" / "digits_calib.npz"), "--plan-out", str(tmp_path / "plan.json"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "plan.json").read_text())["options"]["criterion"] == "thinet"
    onnx.checker.check_model(onnx.load(tmp_path / "p.onnx"), full_check=True)
    summary = json.loads(out.stdout)
    assert summary["quality"]["top1_agreement"] > 0.8  # digits at 50% of MACs, no reconstruction
