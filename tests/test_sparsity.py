"""Fine-grained magnitude sparsity: the rules (per layer, Han et al., global), which weights they
touch, compact sparse storage, the masks' way back to PyTorch (alone and after channel pruning),
and the command line's bad input."""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.plan import Plan
from onnxprune.sparsity import magnitude_masks, to_sparse
from onnxprune.torch import apply_masks, apply_plan

from conftest import run_cli, session
import zoo

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
sys.path.insert(0, str(ROOT / "scripts"))
import digits  # noqa: E402


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.load(MODELS / "digits_calib.npz")["x"]


def digits_module() -> torch.nn.Module:
    module = digits.make_model()
    module.load_state_dict(torch.load(MODELS / "digits_cnn.pt"))
    return module.eval()


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def mixed_model() -> onnx.ModelProto:
    """conv -> depthwise conv -> pool -> MatMul(S) -> Relu -> MatMul(S, shared) -> MatMul(Transpose(G)):
    a depthwise conv, an initializer used twice and a weight behind a Transpose."""
    rng = np.random.default_rng(0)
    inits = {"A": rng.standard_normal((4, 4, 3, 3)), "DW": rng.standard_normal((4, 1, 3, 3)),
             "S": rng.standard_normal((4, 4)), "G": rng.standard_normal((3, 4))}
    nodes = [helper.make_node("Conv", ["x", "A"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "DW"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=4),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "S"], ["m1"], name="fc1"),
             helper.make_node("Relu", ["m1"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "S"], ["m2"], name="fc2"),
             helper.make_node("Transpose", ["G"], ["GT"], name="gt"),
             helper.make_node("MatMul", ["m2", "GT"], ["y"], name="fc3")]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# --- the rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.5, 0.75, 0.9])
def test_each_layer_reaches_the_sparsity_and_only_masked_weights_change(target: float):
    model = onnxprune.load(MODELS / "digits_cnn.onnx")
    original = {t.name: numpy_helper.to_array(t) for t in model.model.graph.initializer}
    result = onnxprune.sparsify(model, sparsity=target)
    assert [l.name for l in result.layers] == ["features.0.weight", "features.3.weight", "features.7.weight",
                                               "head.1.weight", "head.3.weight"]
    for layer in result.layers:
        assert abs(layer.sparsity - target) <= 0.005, layer
    after = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for name, before in original.items():
        mask = result.masks.get(name, np.ones(before.shape, bool))
        assert np.array_equal(after[name][mask], before[mask]) and not after[name][~mask].any()
        if name in result.masks:  # the zeroed weights are the smallest ones
            assert np.abs(before[~mask]).max() <= np.abs(before[mask]).min()
    assert {t.name: numpy_helper.to_array(t) for t in model.model.graph.initializer}.keys() == original.keys()
    assert all(np.array_equal(numpy_helper.to_array(t), original[t.name]) for t in model.model.graph.initializer)


def test_ties_at_the_threshold_go_in_index_order():
    weight = np.array([[2.0, 1.0, -1.0], [1.0, 3.0, -1.0]], dtype=np.float32)
    mask = magnitude_masks({"w": weight}, sparsity=0.5)["w"]
    assert mask.tolist() == [[True, False, False], [False, True, True]]


def test_han_threshold_matches_a_hand_computation():
    weight = np.array([[-3.0, -1.0, 0.5], [2.0, 0.2, 1.0]], dtype=np.float32)
    mean = (-3.0 - 1.0 + 0.5 + 2.0 + 0.2 + 1.0) / 6                        # -0.05
    std = math.sqrt(sum((v - mean) ** 2 for v in (-3.0, -1.0, 0.5, 2.0, 0.2, 1.0)) / 6)
    assert std == pytest.approx(1.595567, abs=1e-6)
    # quality 0.5: threshold 0.798 -> 0.5 and 0.2 go; quality 0.63: threshold 1.005 -> 1.0 and -1.0 too
    assert magnitude_masks({"w": weight}, quality=0.5)["w"].tolist() == [[True, True, False], [True, False, True]]
    assert magnitude_masks({"w": weight}, quality=0.63)["w"].tolist() == [[True, False, False], [True, False, False]]
    assert magnitude_masks({"w": weight}, quality=0.0)["w"].all()


def test_global_ranking_ranks_all_layers_together():
    result = onnxprune.sparsify(MODELS / "digits_cnn.onnx", sparsity=0.8, global_ranking=True)
    assert abs(result.totals["sparsity"] - 0.8) <= 0.005
    spread = [l.sparsity for l in result.layers]
    assert max(spread) - min(spread) > 0.2  # layers of small weights lose more
    original = {t.name: numpy_helper.to_array(t) for t in result.original.graph.initializer}
    every = np.concatenate([np.abs(original[l.name]).ravel() for l in result.layers])
    kept = np.concatenate([result.masks[l.name].ravel() for l in result.layers])
    assert every[~kept].max() <= every[kept].min()


def test_weight_selection_depthwise_shared_transposed_ends_and_ignore():
    model = mixed_model()
    result = onnxprune.sparsify(model, sparsity=0.5)
    assert {l.name: l.nodes for l in result.layers} == {"A": ["conv"], "S": ["fc1", "fc2"], "G": ["fc3"]}
    assert result.masks["S"].shape == (4, 4) and (~result.masks["S"]).sum() == 8  # shared: masked once
    assert result.masks["G"].shape == (3, 4)                                        # on the initializer, not the Transpose
    assert "DW" in {l.name for l in onnxprune.sparsify(model, sparsity=0.5, include_depthwise=True).layers}
    assert [l.name for l in onnxprune.sparsify(model, sparsity=0.5, protect_ends=True).layers] == ["S"]
    assert [l.name for l in onnxprune.sparsify(model, sparsity=0.5, ignore=["^S$", "fc3"]).layers] == ["A"]


# --- compact storage -------------------------------------------------------------------------

def test_sparse_format_loads_in_onnxruntime_with_identical_outputs(sample: Path, calib: np.ndarray, tmp_path: Path):
    result = onnxprune.sparsify(sample, sparsity=0.9, data=MODELS / "digits_calib.npz")
    result.save(tmp_path / "dense.onnx")
    result.save(tmp_path / "sparse.onnx", format="sparse")
    stored = onnx.load(str(tmp_path / "sparse.onnx"))
    assert len(stored.graph.sparse_initializer) == 5 and not {t.name for t in stored.graph.initializer} & set(result.masks)
    for sparse in stored.graph.sparse_initializer:  # linearised COO: one int64 per non-zero
        assert sparse.indices.data_type == TensorProto.INT64 and len(sparse.indices.dims) == 1
    feeds = {"x": calib}
    dense_out = session(tmp_path / "dense.onnx").run(None, feeds)
    sparse_out = session(tmp_path / "sparse.onnx").run(None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(dense_out, sparse_out))
    sizes = result.sizes()
    assert sizes["sparse"][0] < 0.4 * sizes["dense"][0] and sizes["dense_zeros"][1] < 0.2 * sizes["dense"][1]
    assert (tmp_path / "sparse.onnx").stat().st_size == sizes["sparse"][0]


def test_sparse_storage_is_skipped_where_it_would_be_larger():
    weight = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    weight[0, 0] = 0  # 1/12 sparse: 11 * 12 bytes > 12 * 4 bytes
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert not to_sparse(model, {"W"}).graph.sparse_initializer


# --- masks back to PyTorch ---------------------------------------------------------------------

def test_masks_from_a_dynamo_export_apply_to_the_module_by_state_dict_key(tmp_path: Path):
    module, example = zoo.MODELS["resnet"]()
    path = zoo.export(module, example, tmp_path / "resnet.onnx", "dynamo")
    result = onnxprune.sparsify(path, sparsity=0.7)
    assert set(result.masks) <= dict(module.named_parameters()).keys()
    apply_masks(module, result.masks)
    with torch.no_grad():
        ours = module(*example).numpy()
    theirs = session(result.model).run(None, {"x": example[0].numpy()})[0]
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-3)], ids=["adam", "sgd"])
def test_masks_survive_optimizer_steps(make_optimizer, tmp_path: Path, calib: np.ndarray):
    result = onnxprune.sparsify(MODELS / "digits_cnn.onnx", sparsity=0.75)
    result.write_masks(tmp_path / "masks.npz")
    masks = dict(np.load(tmp_path / "masks.npz"))
    module = digits_module()
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    handle = apply_masks(module, masks)
    with torch.no_grad():  # BN folding scales whole output channels, so the zeros carry over exactly
        ours = module(torch.from_numpy(calib)).numpy()
    theirs = session(result.model).run(None, {"x": calib})[0]
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    optimizer = make_optimizer(module.parameters())
    module.train()
    for step in range(3):
        optimizer.zero_grad()
        module(torch.from_numpy(calib[:32])).logsumexp(1).mean().backward()
        optimizer.step()
    params = dict(module.named_parameters())
    for name, mask in masks.items():
        assert not params[name].detach().numpy()[~mask].any(), name
        assert not torch.equal(params[name].detach()[torch.from_numpy(mask)], before[name][torch.from_numpy(mask)])
    handle.remove()


def test_prune_then_sparsify_hands_both_files_back_to_pytorch(sample: Path, tmp_path: Path, calib: np.ndarray, capsys):
    code, _, err = run_cli(capsys, "prune", sample, "-o", tmp_path / "pruned.onnx", "--target-macs", "0.5",
                           "--plan-out", tmp_path / "plan.json")
    assert code == 0, err
    code, out, err = run_cli(capsys, "sparsify", tmp_path / "pruned.onnx", "-o", tmp_path / "final.onnx",
                             "--sparsity", "0.75", "--masks-out", tmp_path / "masks.npz", "--format", "sparse")
    assert code == 0, err
    assert "features.3.weight" in out and "identical" in out
    module = digits_module()
    apply_plan(module, Plan.read(tmp_path / "plan.json"), (torch.from_numpy(calib[:2]),))
    apply_masks(module, dict(np.load(tmp_path / "masks.npz")))
    with torch.no_grad():
        ours = module(torch.from_numpy(calib)).numpy()
    theirs = session(tmp_path / "final.onnx").run(None, {"x": calib})[0]
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


# --- command line --------------------------------------------------------------------------------

def test_cli_json_reports_layers_sizes_and_writes_masks(sample: Path, tmp_path: Path, capsys):
    import json

    before = folder_digest(sample.parent)
    code, out, err = run_cli(capsys, "sparsify", sample, "-o", tmp_path / "out" / "s.onnx", "--quality", "1.0",
                             "--masks-out", tmp_path / "out" / "m.npz", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert {l["name"] for l in summary["layers"]} == set(np.load(tmp_path / "out" / "m.npz").files)
    assert set(summary["sizes"]) == {"dense", "dense_zeros", "sparse"} and summary["totals"]["zeros"] > 0
    assert folder_digest(sample.parent) == before  # input untouched


@pytest.mark.parametrize("options, message", [
    (["--sparsity", "1.0"], "outside [0, 1)"),
    (["--sparsity", "75"], "outside [0, 1)"),
    (["--sparsity", "-0.1"], "outside [0, 1)"),
    (["--quality", "-1"], "negative"),
    (["--sparsity", "0.5", "--quality", "1"], "one of --sparsity"),
    ([], "one of --sparsity"),
    (["--sparsity", "0.5", "--ignore", "("], "not a valid regular expression"),
    (["--sparsity", "0.5", "--ignore", "."], "no prunable weights"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(sample: Path, capsys, options, message):
    before = folder_digest(sample.parent)
    code, out, err = run_cli(capsys, "sparsify", sample, "-o", sample.parent / "out.onnx",
                             "--masks-out", sample.parent / "m.npz", *options)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert folder_digest(sample.parent) == before


def test_readme_sparsity_example_runs(tmp_path: Path, monkeypatch):
    import os
    import re

    section = (ROOT / "README.md").read_text().split("## Fine-grained sparsity", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    os.symlink(MODELS, tmp_path / "models")
    (tmp_path / "out").mkdir()
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the documented example itself
    assert (tmp_path / "out" / "digits_sparse.onnx").exists() and set(np.load(tmp_path / "out" / "digits_masks.npz").files) == set(namespace["result"].masks)
    assert (~namespace["masks"]["w"]).sum() == round(0.9 * 64 * 32)


def test_cli_refuses_a_model_without_weights(tmp_path: Path, capsys):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "relu.onnx")
    code, _, err = run_cli(capsys, "sparsify", tmp_path / "relu.onnx", "-o", tmp_path / "out.onnx", "--sparsity", "0.5")
    assert code == 2 and "relu.onnx: no prunable weights" in err
    assert not (tmp_path / "out.onnx").exists()
