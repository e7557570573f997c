"""The residual stream through LayerNorm (ViT, BERT with its MLM head, GPT-2; both torch exporters):
dead residual channels removed exactly under threshold 0 (statistics rewritten over the original
width), a channel whose LayerNorm gamma or beta is non-zero is not dead, random residual prunes
valid, embedding tables and tied output projections follow the residual group, and the opt-in
inexact mode (`inexact_layernorm`) is off by default and changes outputs only when asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

pytest.importorskip("transformers")

import onnxprune  # noqa: E402
from onnxprune.ops import IN, OUT, Dim  # noqa: E402
from test_transformers import RTOL, exports, plant, run  # noqa: E402,F401  (exports: the shared fixture)

WIDTH = {"vit": 48, "gpt2": 32, "bert_mlm": 32}
CASES = [("vit", "dynamo"), ("vit", "legacy"), ("gpt2", "dynamo"), ("gpt2", "legacy"), ("bert_mlm", "dynamo"),
         ("bert_mlm", "legacy")]
DECOMPOSED = [("gpt2", "legacy-opset16"), ("bert_mlm", "legacy-opset16")]
LN = "LayerNormalization"


def layer_norms(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == LN]


def residual_group(m: onnxprune.PrunableModel):
    """The prunable group holding the channel axis of the first LayerNorm's input."""
    node = layer_norms(m.model)[0]
    rank = len(m.index.shape(node.input[0]))
    dim = Dim(node.input[0], rank - 1)
    return next((g for g in m.groups if dim in g.dims), None)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= RTOL * max(float(np.max(np.abs(a))), 1e-30)


def with_values(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in values:
            t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_dead_residual_channels_exact(exports, case):
    """Residual channels zero in every producer (embeddings, output projections, biases) and in
    every LayerNorm's gamma and beta are exactly what threshold 0 removes; the LayerNorms are
    rewritten to divide by the original width, and outputs stay the same on real inputs."""
    model, exporter = case
    original = onnx.load(str(exports(model, exporter)))
    m = onnxprune.PrunableModel(original)
    group = residual_group(m)
    assert group is not None and group.n_channels == WIDTH[model]
    chans = {1, WIDTH[model] - 2}
    planted = plant(original, m, {group.id: chans})
    pm = onnxprune.PrunableModel(planted)
    plan = pm.plan(threshold=0)
    assert "inexact_layernorm" not in plan.options and not any("layernorm" in w.lower() for w in plan.warnings)
    removed = {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}
    assert removed[group.id] == chans
    assert all(not r for gid, r in removed.items() if gid != group.id)
    result = pm.apply(plan)
    assert result.exact
    assert result.after.macs < result.before.macs
    on_residual = {n.input[0] for n in layer_norms(original) if Dim(n.input[0], len(m.index.shape(n.input[0])) - 1) in group.dims}
    assert len(on_residual) >= 5
    assert not [n for n in layer_norms(result.model) if n.input[0] in on_residual], "rewritten over the original width"
    onnx.checker.check_model(result.model, full_check=True)
    for batch in (2, 3):
        for a, b in zip(run(planted, batch, seed=batch), run(result.model, batch, seed=batch)):
            assert close(a, b)


@pytest.mark.parametrize("case", [("gpt2", "dynamo"), ("bert_mlm", "legacy")], ids="-".join)
@pytest.mark.parametrize("slot", [1, 2], ids=["gamma", "beta"])
def test_zero_input_with_live_layernorm_params_is_not_dead(exports, case, slot):
    """Zero producers alone do not make a residual channel dead: a LayerNorm writes
    -mean/std * gamma + beta there.  With one LayerNorm's gamma (or beta) left non-zero at the
    channel, threshold 0 keeps it."""
    original = onnx.load(str(exports(*case)))
    m = onnxprune.PrunableModel(original)
    group = residual_group(m)
    planted = plant(original, m, {group.id: {3}})
    identity = {n.output[0]: n.input[0] for n in original.graph.node if n.op_type == "Identity"}
    name = layer_norms(original)[-1].input[slot]
    name = identity.get(name, name)
    value = numpy_helper.to_array(next(t for t in planted.graph.initializer if t.name == name)).copy()
    assert value[3] == 0
    value[3] = 0.5
    plan = onnxprune.PrunableModel(with_values(planted, {name: value})).plan(threshold=0)
    assert 3 in next(gp for gp in plan.groups if gp.id == group.id).keep
    control = onnxprune.PrunableModel(planted).plan(threshold=0)  # with gamma and beta zero too: dead
    assert 3 not in next(gp for gp in control.groups if gp.id == group.id).keep


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_random_residual_prune_valid(exports, case):
    """Pruning 30% of live residual channels (nothing else) gives a valid, runnable model with the
    original's output shapes; it is not exact and says so."""
    model, exporter = case
    original = onnx.load(str(exports(model, exporter)))
    m = onnxprune.PrunableModel(original)
    group = residual_group(m)
    plan = m.plan(ratio=0.3, criterion="random")
    for gp in plan.groups:
        if gp.id != group.id:
            gp.keep = list(range(gp.channels))
    assert len(next(gp for gp in plan.groups if gp.id == group.id).keep) < WIDTH[model]
    result = m.apply(plan)
    assert not result.exact
    onnx.checker.check_model(result.model, full_check=True)
    for batch in (2, 3):
        a, b = run(original, batch), run(result.model, batch)
        assert [x.shape for x in a] == [x.shape for x in b]
        assert all(np.all(np.isfinite(x)) for x in b)


@pytest.mark.parametrize("case", [("gpt2", "dynamo"), ("gpt2", "legacy"), ("bert_mlm", "dynamo"), ("bert_mlm", "legacy")],
                         ids="-".join)
def test_embedding_and_tied_projection_follow(exports, case):
    """The token embedding table's column axis produces the residual channels (its Gather use is
    an OUT member of the residual group) and the tied output projection reads the same table as a
    consuming weight: in the residual group itself for GPT-2, in the MLM head's transform group
    (after its own dense layer and LayerNorm) for BERT."""
    model, _ = case
    m = onnxprune.PrunableModel(onnx.load(str(exports(*case))))
    group = residual_group(m)
    tables = {d.tensor for d in group.dims_with_role(OUT) if (m.index.shape(d.tensor) or (0,))[0] == 96}
    assert len(tables) == 1, tables
    consumers = [g for g in m.groups if any(d.tensor in tables or m.index.const(d.tensor) is not None
                                            and m.index.const(d.tensor).shape == (32, 96)
                                            and np.array_equal(m.index.const(d.tensor).T, m.index.const(next(iter(tables))))
                                            for d in g.dims_with_role(IN))]
    assert len(consumers) == 1
    assert (consumers[0] is group) == (model == "gpt2")


def test_inexact_layernorm_opt_in(exports, tmp_path):
    """Off by default (exact, above).  Asked for, it is recorded in the plan, warns, keeps plain
    LayerNormalization nodes (sliced), reports the result as not exact and changes outputs even
    though only dead channels go; a plan read back from JSON applies the same way."""
    original = onnx.load(str(exports("gpt2", "dynamo")))
    m = onnxprune.PrunableModel(original)
    group = residual_group(m)
    planted = plant(original, m, {group.id: {1, 30}})
    pm = onnxprune.PrunableModel(planted)
    exact = pm.apply(pm.plan(threshold=0))
    plan = pm.plan(threshold=0, inexact_layernorm=True)
    assert plan.options["inexact_layernorm"] is True
    assert any("inexact_layernorm" in w and "outputs change" in w for w in plan.warnings)
    result = pm.apply(plan)
    assert exact.exact and not result.exact
    assert len(layer_norms(result.model)) == len(layer_norms(original))
    assert all(numpy_helper.to_array(t).shape != (32,) for t in result.model.graph.initializer
               if t.name in {n.input[1] for n in layer_norms(result.model)})
    a, b = run(planted, 2, seed=2)[0], run(result.model, 2, seed=2)[0]
    assert a.shape == b.shape and not close(a, b)
    assert close(a, run(exact.model, 2, seed=2)[0])
    again = pm.apply(onnxprune.Plan.from_json(plan.to_json()))
    assert not again.exact and np.array_equal(run(again.model, 2, seed=2)[0], b)

    path = tmp_path / "planted.onnx"
    onnx.save(planted, str(path))
    args = [sys.executable, "-m", "onnxprune.cli", "prune", str(path), "--threshold", "0", "-o", str(tmp_path / "out.onnx")]
    plain = subprocess.run(args, capture_output=True, text=True, cwd=TESTS.parent)
    assert plain.returncode == 0, plain.stderr
    assert "inexact_layernorm" not in plain.stderr
    asked = subprocess.run(args + ["--inexact-layernorm", "--overwrite"], capture_output=True, text=True, cwd=TESTS.parent)
    assert asked.returncode == 0, asked.stderr
    assert "warning: inexact_layernorm" in asked.stderr


# --- the decomposed LayerNorm of the legacy exporter below opset 17 ------------------------------

def decomposed_residual_group(m: onnxprune.PrunableModel):
    """The group holding the channel axis of the first ReduceMean's input (the first LayerNorm)."""
    node = next(n for n in m.model.graph.node if n.op_type == "ReduceMean")
    dim = Dim(node.input[0], len(m.index.shape(node.input[0])) - 1)
    return next((g for g in m.groups if dim in g.dims), None)


@pytest.mark.parametrize("case", DECOMPOSED, ids="-".join)
def test_decomposed_layernorm_dead_residual_exact(exports, case):
    """`ReduceMean -> Sub -> Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul -> Add` (no
    LayerNormalization op at opset 16): both means are rewritten to the original width, so dead
    residual channels go exactly; a live prune is valid; a channel whose gamma is non-zero in one
    LayerNorm is not dead."""
    original = onnx.load(str(exports(*case)))
    assert not layer_norms(original)
    m = onnxprune.PrunableModel(original)
    group = decomposed_residual_group(m)
    assert group is not None and group.n_channels == 32
    chans = {1, 30}
    planted = plant(original, m, {group.id: chans})
    pm = onnxprune.PrunableModel(planted)
    plan = pm.plan(threshold=0)
    removed = {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}
    assert removed[group.id] == chans and all(not r for gid, r in removed.items() if gid != group.id)
    result = pm.apply(plan)
    assert result.exact
    onnx.checker.check_model(result.model, full_check=True)
    for batch in (2, 3):
        for a, b in zip(run(planted, batch, seed=batch), run(result.model, batch, seed=batch)):
            assert close(a, b)

    inexact = pm.apply(pm.plan(threshold=0, inexact_layernorm=True))
    assert not inexact.exact
    assert not close(run(planted, 2, seed=2)[0], run(inexact.model, 2, seed=2)[0])

    div = next(n for n in planted.graph.node if n.op_type == "Div" and n.input[0].endswith("Sub_output_0"))
    mul = next(n for n in planted.graph.node if n.op_type == "Mul" and div.output[0] in n.input)
    identity = {n.output[0]: n.input[0] for n in planted.graph.node if n.op_type == "Identity"}
    gamma = next(identity.get(i, i) for i in mul.input if i != div.output[0])
    value = numpy_helper.to_array(next(t for t in planted.graph.initializer if t.name == gamma)).copy()
    assert value[1] == 0
    value[1] = 0.5
    keep = next(gp for gp in onnxprune.PrunableModel(with_values(planted, {gamma: value})).plan(threshold=0).groups
                if gp.id == group.id).keep
    assert 1 in keep and 30 not in keep

    live = m.plan(ratio=0.3, criterion="random")
    for gp in live.groups:
        if gp.id != group.id:
            gp.keep = list(range(gp.channels))
    pruned = m.apply(live)
    onnx.checker.check_model(pruned.model, full_check=True)
    assert [x.shape for x in run(original, 2)] == [x.shape for x in run(pruned.model, 2)]
