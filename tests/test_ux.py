"""What a user reads: origin-framework layer names, quality after a prune, score distributions,
plan validation, and summaries that say what was done (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.origin import layer_name
from onnxprune.quality import Quality, compare

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
FIXTURES = ROOT / "tests" / "fixtures"


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


# --------------------------------------------------------------------------- origin names

DIGITS_LAYERS = {"node_Conv_51": "features.0", "node_Conv_53": "features.3", "node_Conv_55": "features.7",
                 "node_linear": "head.1", "node_linear_1": "head.3"}


def test_inspect_names_layers_as_the_origin_framework_does(sample: Path):
    """The dynamo export's convs carry the folded BatchNorm's scope (features.1); the table names
    the conv after its own weight (features.0.weight -> features.0), the ONNX node beside it."""
    info = json.loads(run_cli("inspect", sample, "--json").stdout)
    assert {l["node"]: l["origin"] for l in info["layers"]} == DIGITS_LAYERS
    assert [g["origins"] for g in info["groups"] if g["prunable"]] == [
        ["features.0", "features.3"], ["features.3", "features.7"], ["features.7", "head.1"], ["head.1", "head.3"]]
    text = run_cli("inspect", sample).stdout
    assert "features.7                               Conv" in text and "node_Conv_55" in text


def test_prune_table_and_json_show_origin_names(sample: Path, tmp_path: Path):
    out = run_cli("prune", sample, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--json")
    assert out.returncode == 0, out.stderr
    layers = json.loads(out.stdout)["layers"]
    assert {l["node"]: l["origin"] for l in layers} == DIGITS_LAYERS
    text = run_cli("prune", sample, "-o", tmp_path / "q.onnx", "--ratio", "0.5").stdout
    assert "head.1" in text and "32 -> 16" in text


@pytest.mark.parametrize("fixture, expected", [
    ("tf_cnn", {"Conv__45": "stem_conv_1", "tf_cnn_1/dw_conv_1/depthwise": "dw_conv_1", "tf_cnn_1/fc1_1/MatMul": "fc1_1"}),
    ("paddle_cnn", {"Conv.0": "conv2d_0", "BatchNormalization.0": "batch_norm2d_0", "MatMul.0": "linear_0"}),
])
def test_tf2onnx_and_paddle2onnx_layer_names(fixture: str, expected: dict):
    info = onnxprune.load(FIXTURES / f"{fixture}.onnx").inspect()
    origins = {l["node"]: l["origin"] for l in info["layers"]}
    assert {k: origins[k] for k in expected} == expected


def test_legacy_scope_chain_becomes_a_module_path():
    init = {"onnx::Conv_239"}
    node = onnx.helper.make_node("Conv", ["x", "onnx::Conv_239"], ["y"], name="/layer1/layer1.0/conv1/Conv")
    assert layer_name(node, init) == "layer1.0.conv1"
    node = onnx.helper.make_node("Conv", ["x", "onnx::Conv_7"], ["y"], name="/1/body/body.0/Conv")
    assert layer_name(node, {"onnx::Conv_7"}) == "1.body.0"
    assert layer_name(onnx.helper.make_node("Relu", ["x"], ["y"], name="relu_7")) is None


# --------------------------------------------------------------------------- quality

def test_prune_with_labelled_data_reports_accuracy_before_and_after(sample: Path, tmp_path: Path):
    out = run_cli("prune", sample, "-o", tmp_path / "p.onnx", "--target-macs", "0.5", "--data", CALIB, "--json")
    assert out.returncode == 0, out.stderr
    q = json.loads(out.stdout)["quality"]
    labels = np.load(CALIB)["labels"]
    import onnxruntime as ort

    x = np.load(CALIB)["x"]
    before = ort.InferenceSession(str(sample)).run(None, {"x": x})[0]
    after = ort.InferenceSession(str(tmp_path / "p.onnx")).run(None, {"x": x})[0]
    assert q["samples"] == len(labels) == 360
    assert q["accuracy_before"] == pytest.approx(np.mean(before.argmax(1) == labels))
    assert q["accuracy_after"] == pytest.approx(np.mean(after.argmax(1) == labels))
    assert q["top1_agreement"] == pytest.approx(np.mean(before.argmax(1) == after.argmax(1)))
    assert q["rel_error"] == pytest.approx(np.abs(before - after).max() / np.abs(before).max(), rel=1e-5)
    assert q["accuracy_after"] < q["accuracy_before"]  # 50% of MACs without fine-tuning costs accuracy
    text = run_cli("prune", sample, "-o", tmp_path / "t.onnx", "--target-macs", "0.5", "--data", CALIB).stdout
    assert f"accuracy original {q['accuracy_before']:.2%} -> pruned {q['accuracy_after']:.2%}" in text


def test_apply_reports_quality_and_none_without_data(sample: Path, tmp_path: Path):
    assert run_cli("prune", sample, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--plan-out", tmp_path / "plan.json").returncode == 0
    with_data = json.loads(run_cli("apply", sample, tmp_path / "plan.json", "-o", tmp_path / "a.onnx", "--data", CALIB, "--json").stdout)
    assert with_data["quality"]["samples"] == 360 and with_data["quality"]["accuracy_after"] is not None
    without = json.loads(run_cli("apply", sample, tmp_path / "plan.json", "-o", tmp_path / "b.onnx", "--json").stdout)
    assert without["quality"] is None


def test_quality_of_a_non_classifier_output_has_no_top1():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((4, 3, 8, 8))
    q = compare(maps, maps * 1.1)
    assert q.top1_agreement is None and q.accuracy_before is None
    assert q.rel_error == pytest.approx(0.1 * np.abs(maps).max() / np.abs(maps).max())
    logits = rng.standard_normal((6, 5))
    q = compare(logits, logits, np.argmax(logits, 1))
    assert isinstance(q, Quality) and q.top1_agreement == 1.0 and q.accuracy_before == q.accuracy_after == 1.0


def test_quantize_reports_the_same_quality(tmp_path: Path):
    out = run_cli("quantize", SAMPLE, "-o", tmp_path / "q.onnx", "--data", CALIB, "--runs", "3", "--json")
    assert out.returncode == 0, out.stderr
    fidelity = json.loads(out.stdout)["fidelity"]
    assert set(fidelity) == set(Quality.__dataclass_fields__)
    assert fidelity["samples"] == 360 and fidelity["accuracy_before"] == pytest.approx(0.9944, abs=1e-4)


# --------------------------------------------------------------------------- honest options

def test_inspect_scores_show_the_distribution_threshold_compares(sample: Path):
    info = json.loads(run_cli("inspect", sample, "--scores", "--json").stdout)
    stats = {s["group"]: s for s in info["scores"]["groups"]}
    scores = onnxprune.load(sample).importance("l1")
    assert set(stats) == set(scores)
    for gid, s in scores.items():
        assert stats[gid]["min"] == pytest.approx(s.min()) and stats[gid]["max"] == pytest.approx(s.max())
        assert stats[gid]["median"] == pytest.approx(np.median(s)) and stats[gid]["zeros"] == int(np.sum(s == 0))
    text = run_cli("inspect", sample, "--scores").stdout
    assert "median" in text and "features.0, features.3" in text


def test_inspect_scores_count_dead_channels(tmp_path: Path):
    """Two filters of the first conv zeroed (weight rows and bias): two dead channels, score 0."""
    model = onnx.load(str(SAMPLE))
    conv = next(n for n in model.graph.node if n.name == "node_Conv_51")
    for t in model.graph.initializer:
        if t.name in conv.input[1:]:
            values = onnx.numpy_helper.to_array(t).copy()
            values[[1, 5]] = 0
            t.CopyFrom(onnx.numpy_helper.from_array(values, t.name))
    onnx.save(model, str(tmp_path / "dead.onnx"))
    info = json.loads(run_cli("inspect", tmp_path / "dead.onnx", "--scores", "--json").stdout)
    first = next(s for s in info["scores"]["groups"] if s["channels"] == 32)
    assert first["zeros"] == 2 and first["min"] == 0


@pytest.mark.parametrize("keep, message", [
    ([0.5, 1], "keep entry 0.5 is not a channel index"),
    ([1, 1, 2], "channel 1 is listed more than once"),
    ([0, 99], "channel 99 is out of range 0..31"),
    ([True, 2], "keep entry True is not a channel index"),
    ([], "keep is empty"),
])
def test_plan_keep_is_validated_on_read(sample: Path, tmp_path: Path, keep: list, message: str):
    assert run_cli("prune", sample, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--plan-out", tmp_path / "plan.json").returncode == 0
    doc = json.loads((tmp_path / "plan.json").read_text())
    doc["groups"][0]["keep"] = keep
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    out = run_cli("apply", sample, tmp_path / "bad.json", "-o", tmp_path / "q.onnx")
    assert out.returncode == 2, out.stderr
    assert f"group {doc['groups'][0]['id']}: {message}" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def test_plan_keep_in_any_order_is_sorted(sample: Path, tmp_path: Path):
    assert run_cli("prune", sample, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--plan-out", tmp_path / "plan.json").returncode == 0
    doc = json.loads((tmp_path / "plan.json").read_text())
    doc["groups"][0]["keep"] = doc["groups"][0]["keep"][::-1]
    plan = onnxprune.Plan.from_json(json.dumps(doc))
    assert plan.groups[0].keep == sorted(doc["groups"][0]["keep"])


def test_ratio_zero_says_nothing_was_removed(sample: Path, tmp_path: Path):
    out = run_cli("prune", sample, "-o", tmp_path / "p.onnx", "--ratio", "0")
    assert out.returncode == 0, out.stderr
    assert "nothing removed" in out.stdout and "dead channels" not in out.stdout
    assert "channels removed: 0" in out.stdout


@pytest.mark.parametrize("sparsity, stored", [("0.5", 0), ("0.75", 5)])
def test_sparse_format_says_what_it_stored(sample: Path, tmp_path: Path, sparsity: str, stored: int):
    out = run_cli("sparsify", sample, "-o", tmp_path / "s.onnx", "--sparsity", sparsity, "--format", "sparse")
    assert out.returncode == 0, out.stderr
    written = onnx.load(str(tmp_path / "s.onnx"))
    assert len(written.graph.sparse_initializer) == stored
    if stored:
        assert f"{stored} of 5 sparsified weights stored as sparse initializers" in out.stdout
    else:
        assert "stored dense: none of the 5 sparsified weights" in out.stdout and "(sparse)" not in out.stdout
    summary = json.loads(run_cli("sparsify", sample, "-o", tmp_path / "j.onnx", "--sparsity", sparsity, "--format",
                                 "sparse", "--json").stdout)
    assert len(summary["stored_sparse"]) == stored


def test_alias_scope_is_its_consumers_when_they_name_one_layer():
    """The legacy exporter's Identity in front of a deduplicated initializer has no scope of its
    own: the plan member takes its consumer's; two consumers in different layers leave it None."""
    from onnx import TensorProto, helper

    from onnxprune.graph import ModelIndex
    from onnxprune.origin import member_scope

    def model(consumers: list[str]) -> ModelIndex:
        nodes = [helper.make_node("Identity", ["slope"], ["alias"], name="Identity_0")]
        nodes += [helper.make_node("PRelu", ["x", "alias"], [f"y{i}"], name=f"/{c}/PRelu") for i, c in enumerate(consumers)]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 4]) for i in range(len(consumers))],
                                  [onnx.numpy_helper.from_array(np.ones(4, np.float32), "slope")])
        return ModelIndex.build(helper.make_model(graph))

    assert member_scope(model(["act1"]), 0) == "act1"
    assert member_scope(model(["act1", "act1"]), 0) == "act1"
    assert member_scope(model(["act1", "act2"]), 0) is None
    # tables name the alias after its consumer's layer, not 'Identity_0'
    assert onnxprune.PrunableModel(model(["act1"]).model).origins()["Identity_0"] == "act1"
    assert onnxprune.PrunableModel(model(["act1", "act2"]).model).origins()["Identity_0"] is None


def test_layers_without_channels_show_a_dash_not_none(tmp_path: Path, sample: Path):
    """BatchNormalization, PRelu and alias rows have no output-channel count: '-', not 'None -> None'."""
    out = run_cli("prune", FIXTURES / "paddle_cnn.onnx", "-o", tmp_path / "p.onnx", "--ratio", "0.5")
    assert out.returncode == 0, out.stderr
    assert "None" not in out.stdout and "batch_norm2d_0" in out.stdout
