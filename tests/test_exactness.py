"""The whole engine, end to end through the CLI, on every zoo export and every framework fixture.

a. Dead-channel exactness: plant dead channels (zero producing filters and their biases / BN affine
   parameters), prune with `--threshold 0`, and require that exactly the planted channels go, that
   the output is valid and has the same I/O signature, and that outputs are unchanged (rel. 1e-5)
   at batch 2 and 3.
b. Partial pruning (random ratio, global L1): valid, runnable, same output shapes, fewer parameters.
c. Coverage: which models have prunable groups, and blocked groups say why.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune
from conftest import (ALL_CASES, FIXTURE_CASES, FLOAT_TYPES, Case, check_runnable, constant_float_params, float_params, input_feeds, io_signature, load_full, rel_error,
                      run_cli, session)
from onnxprune.ops import BN_SCALE, OUT, PARAM

PLANT_FRACTION = 0.25
BIAS_OPS = ("Conv", "ConvTranspose", "Gemm", "Add")

# Lower bounds on the number of prunable groups (what the engine finds today); a drop is a regression.
MIN_PRUNABLE_GROUPS = {
    "resnet": 4, "densenet": 2, "mobilenetv2": 5, "mobilenetv3": 7, "resnext": 6, "shufflenet": 3, "vgg": 5,
    "unet": 6, "prelu_layerscale": 3, "convnext_ln": 2, "tf_cnn": 4, "tf_gap": 4, "paddle_cnn": 4, "paddle_gap": 4,
}
# Known limitation: without the optimizer, the exporter writes ConvNeXt's LayerNorm/Linear MLP in a form
# whose channels are all blocked.  Not asserted to stay that way (an improvement must not fail CI).
NO_GROUPS_OK = {"convnext_ln-dynamo_noopt"}


# --------------------------------------------------------------------------- planting dead channels


def _const_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _store_const(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(value, name))
            return
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.CopyFrom(numpy_helper.from_array(value, name))
                    return
    raise AssertionError(f"constant {name} not found")


def _kills(model: onnx.ModelProto, group, dim) -> bool:
    """Members whose slices are zeroed: producing weights and the bias-like parameters after them."""
    role = group.roles.get(dim)
    op = model.graph.node[dim.use].op_type
    if role in (OUT, BN_SCALE):
        return True
    if role == PARAM and op in BIAS_OPS:
        return True
    if role == PARAM and op == "LayerNormalization":  # gamma and beta: a LayerNorm writes beta - mean/std * gamma
        return True
    if role is None and op == "Transpose":  # a weight transposed at run time (dynamo without optimize): the
        return True                         # MatMul reads it as an activation, on both of its sides
    return role == PARAM and op == "BatchNormalization" and dim.slot == 2  # beta


def plant_dead_channels(pm: onnxprune.PrunableModel, seed: int = 0) -> tuple[onnx.ModelProto, dict[int, set[int]]]:
    """A copy of the model with ~25% of every prunable group's channels dead; {group id: channels}."""
    model = onnx.ModelProto()
    model.CopyFrom(pm.model)
    rng = np.random.default_rng(seed)
    originals = _const_values(model)
    edited: dict[str, np.ndarray] = {}
    planted: dict[int, set[int]] = {}
    for group in pm.groups:
        chosen = set(rng.choice(group.n_channels, size=max(1, int(PLANT_FRACTION * group.n_channels)), replace=False).tolist())
        for dim in group.dims:  # never kill every channel of one member (a Concat input): the engine keeps one
            own = set(np.unique(group.classes[dim]).tolist())
            if own <= chosen:
                chosen.discard(min(own))
        if not chosen:
            continue
        planted[group.id] = chosen
        for dim in group.const_dims:
            if not _kills(model, group, dim):
                continue
            value = edited.setdefault(dim.tensor, originals[dim.tensor].copy())
            index = [slice(None)] * value.ndim
            index[dim.axis] = np.nonzero(np.isin(group.classes[dim], sorted(chosen)))[0]
            value[tuple(index)] = 0
    for name, value in edited.items():
        _store_const(model, name, value)
    return model, planted


def _const_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    return shapes


def expected_float_params(model: onnx.ModelProto, pm: onnxprune.PrunableModel, keep: dict[int, np.ndarray]) -> int:
    """Float initializer elements after keeping `keep`: each initializer is stored once per distinct
    slicing its uses need (a `Shape` use reads only sizes and needs no copy of its own)."""
    per_use: dict[tuple[str, int, int], dict[int, tuple]] = {}
    for group in pm.groups:
        for dim in group.const_dims:
            per_use.setdefault((dim.tensor, dim.use, dim.slot), {})[dim.axis] = tuple(group.kept_elements(dim, keep[group.id]).tolist())
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        uses = [(i, k) for i, node in enumerate(model.graph.node) for k, name in enumerate(node.input)
                if name == tensor.name and node.op_type != "Shape"]
        specs = {tuple(sorted(per_use.get((tensor.name, i, k), {}).items())) for i, k in uses} or {()}
        for spec in specs:
            sizes = dict((axis, len(idx)) for axis, idx in spec)
            total += int(np.prod([sizes.get(a, d) for a, d in enumerate(tensor.dims)]))
    return total + constant_float_params(model)  # the zoo's Constant nodes hold scalars, never sliced


@pytest.fixture
def planted_model(case, case_path, tmp_path):
    """(original PrunableModel, planted model path, planted PrunableModel, planted channels)."""
    original = onnxprune.load(case_path(case))
    model, planted = plant_dead_channels(original)
    path = tmp_path / "planted.onnx"
    onnxprune.save(model, path, external_data=original.loaded.had_external_data)
    return original, path, onnxprune.load(path), planted


# --------------------------------------------------------------------------- a. exactness


@pytest.mark.parametrize("fixture", FIXTURE_CASES, ids=lambda c: c.id)
def test_fixture_reproduces_framework_output(fixture, case_path):
    path = case_path(fixture)
    data = np.load(path.with_suffix(".npz"))
    sess = session(path)
    (out,) = sess.run(None, {sess.get_inputs()[0].name: data["x"]})
    np.testing.assert_allclose(out, data["y"], rtol=1e-4, atol=1e-4 * float(np.abs(data["y"]).max()))


def test_dead_channels_removed_exactly(case, planted_model, tmp_path, capsys):
    original, planted_path, pm, planted = planted_model
    if case.id not in NO_GROUPS_OK:
        assert planted, f"{case.id}: no prunable group to plant dead channels in"

    # the engine sees exactly the planted channels as dead
    scores = pm.importance("l1")
    assert set(scores) == {g.id for g in pm.groups}
    found = {gid: set(np.nonzero(s == 0)[0].tolist()) for gid, s in scores.items()}
    assert {k: v for k, v in found.items() if v} == planted

    out, plan_path = tmp_path / "out" / "pruned.onnx", tmp_path / "plan.json"
    code, stdout, stderr = run_cli(capsys, "prune", planted_path, "-o", out, "--threshold", "0", "--json", "--plan-out", plan_path)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["exact"] is True
    assert summary["channels_removed"] == sum(len(v) for v in planted.values())

    # the plan removes exactly the planted channels
    plan = onnxprune.Plan.read(plan_path)
    assert {gp.id for gp in plan.groups} == {g.id for g in pm.groups}
    for gp in plan.groups:
        assert set(range(gp.channels)) - set(gp.keep) == planted.get(gp.id, set()), f"group {gp.id}"

    # valid, same signature, runnable at batch 2 and 3
    planted_model_proto = load_full(planted_path)
    pruned = check_runnable(planted_model_proto, out)
    assert io_signature(pruned) == io_signature(original.model)

    # every weight use is sliced to exactly the kept elements of its groups.  Nodes keep their
    # names; a LayerNorm on pruned channels is rewritten into several nodes (padded back to the
    # original width, normalised, sliced), the one writing its output under its name
    pruned_nodes = {n.name: n for n in pruned.graph.node}
    assert set(pruned_nodes) >= {n.name for n in planted_model_proto.graph.node}
    rewritten = {n.name for n in planted_model_proto.graph.node if pruned_nodes[n.name].op_type != n.op_type}
    assert all(planted_model_proto.graph.node[i].op_type == "LayerNormalization" for i, n in
               enumerate(planted_model_proto.graph.node) if n.name in rewritten)
    assert len(pruned.graph.node) == len(planted_model_proto.graph.node) + 4 * len(rewritten)  # Pad x3, LayerNorm, Slice
    shapes = _const_shapes(pruned)
    read = {name for n in pruned.graph.node for name in n.input}
    keep = {gp.id: np.isin(np.arange(gp.channels), gp.keep) for gp in plan.groups}
    for group in pm.groups:
        for dim in group.const_dims:
            original = planted_model_proto.graph.node[dim.use]
            node = pruned_nodes[original.name]
            name = node.input[dim.slot] if original.name not in rewritten else \
                next(c for c in (f"{original.input[dim.slot]}__{original.name}", original.input[dim.slot]) if c in read)
            shape = shapes[name]
            assert shape[dim.axis] == len(group.kept_elements(dim, keep[group.id])), f"{dim} at {node.name}"

    # parameter counts, counted independently of the engine: every float constant shrinks to its
    # kept elements, with one copy per distinct slicing its (non-Shape) uses need, and nothing else
    before, after = float_params(planted_model_proto), float_params(pruned)
    assert summary["params"] == [before, after]
    assert after == expected_float_params(planted_model_proto, pm, keep)  # the rewrite adds int64 pads and bounds only
    assert (after < before) == bool(planted)

    # outputs unchanged at batch 2 and 3
    sess_a, sess_b = session(planted_model_proto), session(out)
    for batch in (2, 3):
        feeds = input_feeds(planted_model_proto, batch, seed=10 + batch)
        for a, b in zip(sess_a.run(None, feeds), sess_b.run(None, feeds)):
            assert a.shape == b.shape
            assert rel_error(a, b) <= 1e-5, f"batch {batch}: relative error {rel_error(a, b):.2e}"


# --------------------------------------------------------------------------- b. partial pruning


@pytest.mark.parametrize("options", [("--ratio", "0.3", "--criterion", "random"),
                                     ("--ratio", "0.5", "--criterion", "l1", "--global")],
                         ids=["ratio0.3-random", "ratio0.5-l1-global"])
def test_partial_prune_valid(case, case_path, tmp_path, capsys, options):
    path = case_path(case)
    pm = onnxprune.load(path)
    out = tmp_path / "pruned.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", path, "-o", out, "--json", *options)
    assert code == 0, stderr
    summary = json.loads(stdout)
    original = load_full(path)
    pruned = check_runnable(original, out)
    before, after = float_params(original), float_params(pruned)
    assert summary["params"] == [before, after]
    if pm.groups:
        assert after < before
        assert summary["channels_removed"] > 0
    else:
        assert after == before


# --------------------------------------------------------------------------- c. coverage


def test_coverage_and_blocked_reasons(case, case_path, capsys):
    path = case_path(case)
    code, stdout, stderr = run_cli(capsys, "inspect", path, "--json")
    assert code == 0, stderr
    info = json.loads(stdout)
    prunable = [g for g in info["groups"] if g["prunable"]]
    blocked = [g for g in info["groups"] if not g["prunable"]]
    assert len(prunable) == len(onnxprune.load(path).groups)
    if case.id not in NO_GROUPS_OK:
        assert len(prunable) >= MIN_PRUNABLE_GROUPS[case.model], f"{case.id}: {len(prunable)} prunable groups"
    for g in prunable:
        assert g["blocked"] is None and g["channels"] > 1
    for g in blocked:
        assert isinstance(g["blocked"], str) and g["blocked"].strip(), f"group {g['id']} is blocked without a reason"
        assert g["layers"]
    assert 0 < info["params"] and 0 <= info["prunable_params"] <= 1 and 0 <= info["prunable_macs"] <= 1
    if prunable:
        assert info["prunable_params"] > 0


def test_case_list_complete():
    assert len(ALL_CASES) == 34
    assert len({c.id for c in ALL_CASES}) == 34
    assert isinstance(ALL_CASES[0], Case)


# --------------------------------------------------------------------------- d. cost accounting

_UNDERCOUNT = ("after pruning, onnx shape inference cannot re-derive some intermediate shapes (surgery drops value_info; "
               "{what}), so cost._macs counts those layers as 0 MACs in PruneResult.after / the CLI summary")
def test_cost_estimate_matches_pruned_model(case, case_path, request):
    """Targets are met on the estimate (PrunableModel.cost); the summary reports the pruned model's
    own cost.  Both must agree, or targets are missed and summaries mislead."""
    pm = onnxprune.load(case_path(case))
    plan = pm.plan(criterion="l1", ratio=0.3)
    result = pm.apply(plan)
    keep = {gp.id: np.isin(np.arange(gp.channels), gp.keep) for gp in plan.groups}
    assert pm.cost(keep) == result.after
    assert result.after.params == float_params(result.model)
