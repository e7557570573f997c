"""Every criterion and allocation mode on the test models; targets met within 1%; round-to respected;
plans round-trip (write, read, apply gives an identical model); applying the same options twice gives
byte-identical output; global ranking prunes more from layers with small importance than uniform
does; protect_ends / ignore; user-supplied importance; bad options."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import onnxprune
import zoo
from onnxprune.plan import resolve
from conftest import case_by_id, check_runnable, float_params, input_feeds, load_full, run_cli

REPRESENTATIVE = ["resnet-dynamo", "mobilenetv3-legacy", "densenet-dynamo_noopt", "fixture-tf_cnn", "fixture-paddle_cnn"]
CRITERIA = ["l1", "l2", "bn", "fpgm", "lamp", "random", "scaled", "activation", "apoz", "wanda"]
MODES = {"uniform": {"ratio": 0.3}, "global": {"ratio": 0.3, "global_ranking": True}, "threshold": {"threshold": 0.5}}
TARGET_MODELS = ["resnet-dynamo", "mobilenetv2-dynamo", "vgg-dynamo", "fixture-tf_cnn"]


@pytest.fixture(scope="module")
def loaded(case_path):
    """case id -> PrunableModel, loaded once per module (plans and results are fresh objects)."""
    cache: dict[str, onnxprune.PrunableModel] = {}

    def get(case_id: str) -> onnxprune.PrunableModel:
        if case_id not in cache:
            cache[case_id] = onnxprune.load(case_path(case_by_id(case_id)))
        return cache[case_id]

    return get


@pytest.fixture(scope="module")
def calibration(loaded, tmp_path_factory):
    """case id -> .npz of random calibration inputs (batch 8) keyed by input name."""
    root = tmp_path_factory.mktemp("calibration")

    def get(case_id: str):
        path = root / f"{case_id}.npz"
        if not path.exists():
            np.savez(path, **input_feeds(loaded(case_id).model, 8, seed=1))
        return path

    return get


def path_of(case_path, case_id: str):
    return case_path(case_by_id(case_id))


def removed(plan: onnxprune.Plan) -> dict[int, int]:
    return {g.id: g.channels - len(g.keep) for g in plan.groups}


def node_input_value(model: onnx.ModelProto, node_name: str, initializer: str, original: onnx.ModelProto) -> np.ndarray:
    """The value `node_name` reads (in `model`) at the input slot where `original` had `initializer`."""
    slot = next(list(n.input).index(initializer) for n in original.graph.node if (n.name or n.output[0]) == node_name)
    node = next(n for n in model.graph.node if (n.name or n.output[0]) == node_name)
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[slot]))


# --------------------------------------------------------------------------- criteria x modes


@pytest.mark.parametrize("case_id", REPRESENTATIVE)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("criterion", CRITERIA)
def test_criterion_and_mode(case_id, mode, criterion, loaded, calibration, tmp_path):
    pm = loaded(case_id)
    assert pm.groups, f"{case_id} has no prunable group"
    data = calibration(case_id) if criterion in ("activation", "apoz", "wanda") else None
    options = MODES[mode]
    plan = pm.plan(criterion=criterion, data=data, **options)
    scores = pm.importance(criterion, data)
    gone = removed(plan)
    if mode == "threshold":
        for gp in plan.groups:
            dropped = sorted(set(range(gp.channels)) - set(gp.keep))
            assert np.all(scores[gp.id][dropped] <= 0.5), f"group {gp.id} removed a channel scoring above the threshold"
    elif mode == "uniform":
        for gp in plan.groups:
            assert gone[gp.id] <= int(0.3 * gp.channels)
        assert sum(gone.values()) > 0
    else:
        total = sum(g.channels for g in plan.groups)
        assert 0 < sum(gone.values()) <= int(0.3 * total)
        assert all(gone[gp.id] <= int(0.9 * gp.channels) for gp in plan.groups)
    result = pm.apply(plan, data)
    out = tmp_path / "pruned.onnx"
    onnxprune.save(result.model, out)
    pruned = check_runnable(pm.model, out)
    assert result.after.params == float_params(pruned)
    if sum(gone.values()):
        assert result.after.params < result.before.params


# --------------------------------------------------------------------------- targets


def _target_cases():
    for case_id in TARGET_MODELS:
        for kind in ("target_macs", "target_params"):
            for target in (0.3, 0.5, 0.7):
                for mode in ("global", "uniform"):
                    yield pytest.param(case_id, kind, target, mode, id=f"{case_id}-{kind}-{target}-{mode}")


def removed_fractions(plan) -> dict[int, float]:
    return {g.id: g.removed / g.channels for g in plan.groups}


@pytest.mark.parametrize("case_id, kind, target, mode", list(_target_cases()))
def test_target_met_from_below_globally_or_uniformly(case_id, kind, target, mode, loaded):
    """Both meet a target from below as closely as whole channels allow (within 5% on these small
    test models, whose groups have 8 to 64 channels): --global gives channels back until none fits
    under the target; uniform (the default) keeps every group's removed fraction within one channel
    of every other's."""
    pm = loaded(case_id)
    result = pm.prune("l1", **{kind: target}, global_ranking=mode == "global")
    key = "macs" if kind == "target_macs" else "params"
    achieved = getattr(result.after, key) / getattr(result.before, key)
    assert target * 0.95 <= achieved <= target * 1.01, f"{kind}={target}: achieved {achieved:.4f}"
    if mode == "global" and achieved < 0.99 * target:
        keep = resolve(result.plan, pm.depgraph)
        for gid, mask in keep.items():
            for channel in np.nonzero(~mask)[0][:1]:
                trial = {g: m.copy() for g, m in keep.items()}
                trial[gid][channel] = True
                cost = getattr(pm.cost(trial), key)
                assert cost > 1.01 * target * getattr(result.before, key), f"group {gid} channel {channel} fits back"
    elif mode == "uniform":
        fractions = removed_fractions(result.plan)
        step = {g.id: 1 / g.channels for g in result.plan.groups}
        for a in fractions:
            for b in fractions:
                assert abs(fractions[a] - fractions[b]) <= max(step[a], step[b]) + 1e-9, \
                    f"uniform removed {fractions[a]:.3f} of group {a} but {fractions[b]:.3f} of group {b}"
    if key == "params":
        assert result.after.params / float_params(pm.model) == pytest.approx(achieved)


def test_uniform_target_with_rounding_stays_uniform():
    """The digits CNN at 50% of MACs with round_to 8: the uniform refill used to re-rank channels
    by raw score (32->24, 64->40, 64->56, 64->48, the same as --global); now every group loses the
    same fraction within one 8-channel step."""
    pm = onnxprune.load(Path(__file__).parent.parent / "models" / "digits_cnn.onnx")
    plan = pm.plan(target_macs=0.5, round_to=8)
    fractions = removed_fractions(plan)
    for a in plan.groups:
        for b in plan.groups:
            assert abs(fractions[a.id] - fractions[b.id]) <= max(8 / a.channels, 8 / b.channels) + 1e-9, fractions
    assert all(len(g.keep) % 8 == 0 for g in plan.groups), [len(g.keep) for g in plan.groups]
    assert plan.summary["macs"][1] <= 0.505 * plan.summary["macs"][0]


@pytest.mark.parametrize("kind", ["target_macs", "target_params"])
def test_unreachable_target_says_what_is_reachable(kind, loaded, case_path, tmp_path, capsys):
    pm = loaded("resnet-dynamo")
    with pytest.raises(onnxprune.InputError) as info:
        pm.plan(**{kind: 0.001})
    message = str(info.value)
    assert "reachable" in message and re.search(r"\d+(\.\d+)?%", message), message
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "prune", path_of(case_path, "resnet-dynamo"), "-o", out, f"--{kind.replace('_', '-')}", "0.001")
    assert code == 2 and "reachable" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# --------------------------------------------------------------------------- round_to


@pytest.mark.parametrize("case_id", ["resnet-dynamo", "mobilenetv2-dynamo", "densenet-dynamo_noopt", "fixture-tf_cnn"])
@pytest.mark.parametrize("mode", ["uniform", "global", "threshold", "target_macs"])
@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to(case_id, mode, round_to, loaded):
    pm = loaded(case_id)
    options = {"threshold": 1.0} if mode == "threshold" else dict(MODES[mode]) if mode in MODES else {"target_macs": 0.5}
    if case_id == "fixture-tf_cnn" and round_to == 8 and mode == "target_macs":
        # its MACs sit in two 8-channel groups that round_to 8 cannot shrink: refused, saying why
        with pytest.raises(onnxprune.InputError, match="reachable"):
            pm.plan(criterion="l1", round_to=round_to, **options)
        return
    plan = pm.plan(criterion="l1", round_to=round_to, **options)
    for gp in plan.groups:
        kept = len(gp.keep)
        assert kept % round_to == 0 or kept == gp.channels, f"group {gp.id}: keeps {kept} of {gp.channels}"
    assert any(len(gp.keep) < gp.channels for gp in plan.groups)
    pm.apply(plan)  # verified by the engine (checker, onnxruntime, shapes)


# --------------------------------------------------------------------------- plans


@pytest.mark.parametrize("case_id", ["resnet-dynamo", "fixture-tf_cnn"])
def test_plan_round_trip_and_determinism(case_id, case_path, tmp_path, capsys):
    model = path_of(case_path, case_id)
    runs = {}
    for run in ("a", "b"):
        out = tmp_path / run / "pruned.onnx"
        code, _, err = run_cli(capsys, "prune", model, "-o", out, "--ratio", "0.3", "--plan-out", tmp_path / run / "plan.json")
        assert code == 0, err
        runs[run] = out
    applied = tmp_path / "c" / "pruned.onnx"
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "a" / "plan.json", "-o", applied)
    assert code == 0, err
    files = ["pruned.onnx"] + (["pruned.onnx.data"] if onnxprune.load(model).loaded.had_external_data else [])
    for name in files:
        reference = (tmp_path / "a" / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() == reference, f"same prune twice: {name} differs"
        assert (tmp_path / "c" / name).read_bytes() == reference, f"prune vs apply(plan): {name} differs"
    assert (tmp_path / "a" / "plan.json").read_bytes() == (tmp_path / "b" / "plan.json").read_bytes()
    check_runnable(load_full(model), applied)


def test_hand_edited_plan_keeps_exactly_those_channels(case_path, tmp_path, capsys):
    model = path_of(case_path, "resnet-dynamo")
    code, _, err = run_cli(capsys, "prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--plan-out", tmp_path / "plan.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "plan.json").read_text())
    edited = {}
    for group in doc["groups"]:
        if len(group["keep"]) >= 3:
            group["keep"] = group["keep"][1:-1]  # drop the first and the last kept channel
            edited[group["id"]] = group
    assert edited
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    out = tmp_path / "edited.onnx"
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "edited.json", "-o", out)
    assert code == 0, err
    original, pruned = load_full(model), check_runnable(load_full(model), out)
    originals = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    for group in edited.values():
        for member in group["members"]:
            channels = np.arange(member["size"]) if member["channel_of"] is None else np.asarray(member["channel_of"])
            idx = np.nonzero(np.isin(channels, group["keep"]))[0]
            expected = np.take(originals[member["initializer"]], idx, axis=member["axis"])
            got = node_input_value(pruned, member["node"], member["initializer"], original)
            assert got.shape[member["axis"]] == len(idx)
            if got.shape == expected.shape:  # a member may also lose channels of another group on another axis
                np.testing.assert_array_equal(got, expected)
            else:
                assert got.shape[member["axis"]] == expected.shape[member["axis"]]


def test_plan_from_another_model_is_refused(case_path, tmp_path, capsys):
    source, other = path_of(case_path, "resnet-dynamo"), path_of(case_path, "vgg-dynamo")
    code, _, err = run_cli(capsys, "prune", source, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--plan-out", tmp_path / "plan.json")
    assert code == 0, err
    plan = onnxprune.Plan.read(tmp_path / "plan.json")
    out = tmp_path / "wrong.onnx"
    code, stdout, err = run_cli(capsys, "apply", other, tmp_path / "plan.json", "-o", out)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("onnxprune: error:")
    first = plan.groups[0].members[0]
    other_inits = {t.name for t in load_full(other).graph.initializer}
    assert first.initializer not in other_inits
    assert f"group {plan.groups[0].id}" in err and first.initializer in err, err
    assert not out.exists() and not out.with_name(out.name + ".data").exists()
    with pytest.raises(onnxprune.InputError):
        onnxprune.load(other).apply(plan)


# --------------------------------------------------------------------------- global vs uniform


class ThreeConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


def _export_three_convs(path, exporter: str, c2_scale: float):
    torch.manual_seed(0)
    module = ThreeConvs().eval()
    with torch.no_grad():
        module.c2.weight.mul_(c2_scale)
        module.c2.bias.mul_(c2_scale)
    return zoo.export(module, (torch.randn(2, 3, 16, 16),), path, exporter), module.c2.weight.detach().numpy()


@pytest.fixture(scope="module", params=["dynamo", "legacy"])
def small_layer_model(request, tmp_path_factory):
    """ThreeConvs with c2's weights (and bias) scaled by 0.01, and the same model unscaled:
    {scale: (path, c2 weight)}."""
    root = tmp_path_factory.mktemp(f"small_{request.param}")
    return {scale: _export_three_convs(root / f"m{scale}.onnx", request.param, scale) for scale in (0.01, 1.0)}


def _group_of_weight(pm: onnxprune.PrunableModel, weight: np.ndarray) -> int:
    for group in pm.groups:
        for dim in group.dims_with_role("out"):
            value = pm.index.const(dim.tensor)
            if value.shape == weight.shape and np.allclose(value, weight):
                return group.id
    raise AssertionError("no prunable group produced by the scaled conv")


def test_global_ranking_prunes_small_layer_more(small_layer_model):
    """With raw scores (normalize="none") a layer whose weights are small overall loses more."""
    removed_from_c2 = {}
    for scale, (path, weight) in small_layer_model.items():
        pm = onnxprune.load(path)
        gid = _group_of_weight(pm, weight)
        removed_from_c2[scale] = (removed(pm.plan(criterion="l1", ratio=0.3))[gid],
                                  removed(pm.plan(criterion="l1", ratio=0.3, global_ranking=True, normalize="none"))[gid])
    uniform, global_ = removed_from_c2[0.01]
    assert global_ > uniform, f"global removed {global_}, uniform {uniform}"
    # ... and because c2 is small: the same model with c2 unscaled loses fewer of c2's channels
    assert global_ > removed_from_c2[1.0][1], f"scaled: {removed_from_c2[0.01]}, unscaled: {removed_from_c2[1.0]}"


def test_global_ranking_prunes_low_importance_channels_more(small_layer_model):
    """Relative importance: a layer where most filters are tiny loses more channels under global ranking."""
    path, weight = small_layer_model[0.01]
    model = onnx.load(str(path))
    pm = onnxprune.load(path)
    gid = _group_of_weight(pm, weight)
    name = next(d.tensor for d in pm.depgraph.groups[gid].dims_with_role("out"))
    for t in model.graph.initializer:
        if t.name == name:
            value = numpy_helper.to_array(t).copy() * 100  # undo the layer-wide scaling, then shrink 12 of 16 filters
            value[4:] *= 0.01
            t.CopyFrom(numpy_helper.from_array(value, name))
    pm = onnxprune.PrunableModel(model)
    uniform = removed(pm.plan(criterion="l1", ratio=0.3))
    global_ = removed(pm.plan(criterion="l1", ratio=0.3, global_ranking=True))
    assert uniform[gid] == int(0.3 * 16)
    assert global_[gid] > uniform[gid], f"global removed {global_[gid]}, uniform {uniform[gid]}"
    assert sum(global_.values()) <= int(0.3 * sum(g.n_channels for g in pm.groups))


# --------------------------------------------------------------------------- protect_ends / ignore / custom


def _weighted_nodes(model: onnx.ModelProto) -> list[int]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i, n in enumerate(model.graph.node)
            if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits]


@pytest.mark.parametrize("case_id", ["resnet-dynamo", "mobilenetv3-legacy", "fixture-paddle_cnn"])
def test_protect_ends(case_id, loaded):
    pm = loaded(case_id)
    weighted = _weighted_nodes(pm.model)
    ends = {weighted[0], weighted[-1]}
    protected = {g.id for g in pm.groups if any(d.use in ends for d in g.dims_with_role("out"))}
    assert protected, "the first layer's output channels should be a prunable group"
    plan = pm.plan(criterion="l1", ratio=0.5, protect_ends=True)
    for gp in plan.groups:
        if gp.id in protected:
            assert gp.keep == list(range(gp.channels)), f"protected group {gp.id} lost channels"
    assert any(len(gp.keep) < gp.channels for gp in plan.groups if gp.id not in protected)
    unprotected = pm.plan(criterion="l1", ratio=0.5)
    assert any(len(gp.keep) < gp.channels for gp in unprotected.groups if gp.id in protected)


@pytest.mark.parametrize("by", ["initializer", "node"])
def test_ignore_regex(by, loaded, case_path, tmp_path, capsys):
    case_id = "resnet-dynamo"
    pm = loaded(case_id)
    target = pm.groups[1]
    dim = target.dims_with_role("out")[0]
    name = dim.tensor if by == "initializer" else pm.model.graph.node[dim.use].name
    pattern = f"^{re.escape(name)}$"
    plan = pm.plan(criterion="l1", ratio=0.5, ignore=[pattern])
    ignored = {g.id for g in pm.groups
               if any(re.search(pattern, n) for d in g.const_dims for n in (d.tensor, pm.model.graph.node[d.use].name))}
    assert target.id in ignored and len(ignored) < len(pm.groups)
    for gp in plan.groups:
        if gp.id in ignored:
            assert gp.keep == list(range(gp.channels))
        else:
            assert len(gp.keep) < gp.channels
    # the same through the CLI
    code, _, err = run_cli(capsys, "prune", path_of(case_path, case_id), "-o", tmp_path / "o.onnx", "--ratio", "0.5",
                           "--criterion", "l1", "--ignore", pattern, "--plan-out", tmp_path / "plan.json")
    assert code == 0, err
    cli_plan = onnxprune.Plan.read(tmp_path / "plan.json")
    assert [g.keep for g in cli_plan.groups] == [g.keep for g in plan.groups]


def test_user_supplied_importance(loaded):
    pm = loaded("resnet-dynamo")
    seen = []

    def ascending(dg, group) -> np.ndarray:
        seen.append(group.id)
        return np.arange(group.n_channels, dtype=np.float64) + 1  # channel k scores k + 1: low indices go first

    plan = pm.plan(criterion=ascending, ratio=0.5)
    assert sorted(set(seen)) == sorted(g.id for g in pm.groups)
    for gp in plan.groups:
        n_keep = gp.channels - int(0.5 * gp.channels)
        assert gp.keep == list(range(gp.channels - n_keep, gp.channels)), f"group {gp.id}"
    assert plan.options["criterion"] == "ascending"
    pm.apply(plan)


# --------------------------------------------------------------------------- bad options


BAD_OPTIONS = {
    "ratio-1.0": ({"ratio": 1.0}, ["--ratio", "1.0"]),
    "ratio-negative": ({"ratio": -0.1}, ["--ratio=-0.1"]),
    "ratio-and-threshold": ({"ratio": 0.3, "threshold": 0.1}, ["--ratio", "0.3", "--threshold", "0.1"]),
    "round-to-0": ({"ratio": 0.3, "round_to": 0}, ["--ratio", "0.3", "--round-to", "0"]),
}


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_bad_options(name, loaded, case_path, tmp_path, capsys):
    api_options, cli_options = BAD_OPTIONS[name]
    with pytest.raises(onnxprune.InputError):
        loaded("resnet-dynamo").plan(**api_options)
    out = tmp_path / "out.onnx"
    code, stdout, err = run_cli(capsys, "prune", path_of(case_path, "resnet-dynamo"), "-o", out, *cli_options, "--plan-out", tmp_path / "plan.json")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("onnxprune: error: options:"), err
    assert not out.exists() and not (tmp_path / "plan.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_console_script_exit_code(case_path, tmp_path):
    """The installed entry point (a real process) maps a bad option to exit code 2 and one stderr line."""
    out = tmp_path / "out.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(path_of(case_path, "fixture-tf_cnn")),
                           "-o", str(out), "--ratio", "1.0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_threshold_respects_max_ratio():
    """--threshold 5 (above every mean-normalised l1 score of the digits CNN) used to cut every
    group to 1 channel; it stops at --max-ratio like the other strategies."""
    pm = onnxprune.load(Path(__file__).parent.parent / "models" / "digits_cnn.onnx")
    for max_ratio in (0.9, 0.5):
        plan = pm.plan(threshold=5, max_ratio=max_ratio)
        assert {g.id: g.removed for g in plan.groups} == {g.id: int(max_ratio * g.channels) for g in plan.groups}
