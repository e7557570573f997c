"""Transformer criteria and compensation on the tiny exports of tests/transformer_zoo.py: the
`wanda` criterion is |W| x ||X||_2 per channel (checked against a hand computation), keeps
threshold 0 exact, needs data; `--reconstruct` compensates the attention output and MLP down
projections (GPT-2's Gemm biases, and a bias it attaches to Llama's bias-free MatMuls)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

pytest.importorskip("transformers")

import onnxprune  # noqa: E402
import transformer_zoo as tz  # noqa: E402
from onnxprune.ops import IN  # noqa: E402
from onnxprune.runtime import make_session, with_outputs  # noqa: E402
from test_transformers import RTOL, exports, head_group, plant, run  # noqa: E402,F401  (exports: the shared fixture)


def token_ids(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, tz.VOCAB, (n, tz.SEQ)).astype(np.int64)}


def layer(m: onnxprune.PrunableModel, origin: str) -> onnx.NodeProto:
    """The weight layer (a node with a constant 2-D weight) whose origin-framework layer name ends
    with `origin` (its Reshapes share the name)."""
    names = {n for n, o in m.origins().items() if o and o.endswith(origin)}
    nodes = [n for n in m.model.graph.node if (n.name or n.output[0]) in names and len(n.input) > 1
             and m.index.const(n.input[1]) is not None and m.index.const(n.input[1]).ndim == 2]
    assert len(nodes) == 1, [n.name for n in nodes]
    return nodes[0]


def test_wanda_is_weight_times_input_norm(exports):
    """For Llama's first MLP (consumed only by down_proj), wanda's score of hidden channel c is
    sum_o |W_down[c, o]| x ||x_c||_2 over every calibration position, as computed by hand."""
    m = onnxprune.load(exports("llama", "dynamo"))
    data = token_ids(8, 0)
    down = layer(m, "layers.0.mlp.down_proj")
    weight = m.index.const(down.input[1])
    group = next(g for g in m.groups if any(d.tensor == down.input[1] and m.depgraph.roles.get(d) == IN for d in g.dims))
    watched, arrays = with_outputs(m.index, [down.input[0]])
    x = make_session(watched, arrays=arrays).run([down.input[0]], data)[0].astype(np.float64)
    expected = np.sqrt((x.reshape(-1, x.shape[-1]) ** 2).sum(axis=0)) * np.abs(weight.astype(np.float64)).sum(axis=1)
    scores = m.importance("wanda", data, normalize="none")[group.id]
    assert scores.shape == (weight.shape[0],)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    activation = m.importance("activation", data, normalize="none")[group.id]
    assert not np.allclose(scores / scores.mean(), activation / activation.mean(), rtol=1e-2)


def test_wanda_threshold_zero_removes_only_dead_heads(exports):
    """A head whose q, k, v are zero scores 0 under wanda too: threshold 0 removes exactly it."""
    original = onnx.load(str(exports("gpt2", "dynamo")))
    m = onnxprune.PrunableModel(original)
    group = head_group(m)
    planted = plant(original, m, {group.id: {2}})
    pm = onnxprune.PrunableModel(planted)
    data = token_ids(8, 0)
    scores = pm.importance("wanda", data)
    assert scores[group.id][2] == 0 and np.all(scores[group.id][[0, 1, 3]] > 0)
    plan = pm.plan("wanda", data, threshold=0)
    removed = {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}
    assert removed[group.id] == {2} and not [r for gid, r in removed.items() if r and gid != group.id]
    result = pm.apply(plan, data)
    assert result.exact
    for a, b in zip(run(planted, 2, seed=3), run(result.model, 2, seed=3)):
        assert float(np.max(np.abs(a - b))) <= RTOL * float(np.max(np.abs(a)))


def test_wanda_needs_data(exports, tmp_path):
    path = exports("gpt2", "dynamo")
    with pytest.raises(onnxprune.InputError, match="wanda needs calibration data"):
        onnxprune.load(path).plan("wanda", ratio=0.3)
    out = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(path), "--criterion", "wanda", "--ratio", "0.3",
                          "-o", str(tmp_path / "out.onnx")], capture_output=True, text=True, cwd=TESTS.parent)
    assert out.returncode == 2 and "wanda needs calibration data" in out.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_reconstruct_compensates_llama_down_projection(exports):
    """Llama's down_proj has no bias: reconstruction attaches one (a new Add after the MatMul) and
    moves the removed MLP channels' mean contribution there; the model gets closer to the original
    on the calibration data, passes the checker and keeps its outputs' shapes."""
    m = onnxprune.load(exports("llama", "dynamo"))
    data = token_ids(16, 0)
    down = layer(m, "layers.0.mlp.down_proj")
    mlp = next(g for g in m.groups if any(d.tensor == down.input[1] and m.depgraph.roles.get(d) == IN for d in g.dims))
    plan = m.plan("wanda", data, ratio=0.3)
    for gp in plan.groups:  # only the MLP of layer 0
        if gp.id != mlp.id:
            gp.keep = list(range(gp.channels))
    result = m.apply(plan, data, reconstruct=True)
    fits = {f.node: f for f in result.recovery.reconstruction.layers}
    label = next(k for k in fits if (down.name or down.output[0]) in k)
    assert fits[label].fitted and fits[label].error_after < fits[label].error_before
    added = [n for n in result.model.graph.node if n.input and n.input[0] == f"{down.output[0]}/unbiased"]
    assert len(added) == 1 and added[0].output[0] == down.output[0]
    # the model as a whole: more next-token decisions agree with the original's (the metric that
    # decides whether reconstruction is kept; the max-normalised error moves by under 1% either way)
    assert result.recovery.reconstructed.top1_agreement > result.recovery.plain.top1_agreement
    onnx.checker.check_model(result.model, full_check=True)
    assert [o.shape for o in run(result.model, 3)] == [o.shape for o in run(m.model, 3)]


def test_reconstruct_refits_gpt2_attention_output_after_head_removal(exports):
    """Removing one head of GPT-2's first layer: the attention output projection (a Gemm with a
    bias) is re-fitted and gets closer to the original's output."""
    m = onnxprune.load(exports("gpt2", "dynamo"))
    data = token_ids(32, 0)
    group = head_group(m)
    plan = m.plan("wanda", data, ratio=0.3)
    for gp in plan.groups:
        if gp.id != group.id:
            gp.keep = list(range(gp.channels))
    assert len(next(gp for gp in plan.groups if gp.id == group.id).keep) == 3
    result = m.apply(plan, data, reconstruct=True)
    proj = layer(m, "h.0.attn.c_proj")
    fit = next(f for f in result.recovery.reconstruction.layers if (proj.name or proj.output[0]) in f.node)
    assert fit.fitted and fit.error_after < fit.error_before
    assert result.recovery.reconstructed.rel_error < result.recovery.plain.rel_error
