"""The iterative prune-recover loop (onnxprune.iterative, `onnxprune iterate`) and feature
distillation through the kept channels (onnxprune.finetune: kept_channels, compose, features)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.errors import InputError
from onnxprune.finetune import FinetuneOptions, compose, finetune, kept_channels
from onnxprune.iterative import IterativeOptions, iterate, step_targets
from onnxprune.plan import resolve

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits():
    data = np.load(ROOT / "models" / "digits_calib.npz")
    return data["x"], data["labels"]


def test_step_targets_end_at_the_target_and_shrink():
    for schedule in ("linear", "geometric"):
        targets = step_targets(0.4, 3, schedule)
        assert targets[-1] == pytest.approx(0.4) and all(a > b for a, b in zip([1.0] + targets, targets))
    assert step_targets(0.4, 3, "linear") == pytest.approx([0.8, 0.6, 0.4])
    ratios = np.array(step_targets(0.4, 3, "geometric")) / np.array([1.0] + step_targets(0.4, 3, "geometric")[:-1])
    assert ratios == pytest.approx([0.4 ** (1 / 3)] * 3)


def test_compose_maps_into_the_first_model():
    outer = {"a": {1: np.array([0, 2, 3, 5])}}
    inner = {"a": {1: np.array([1, 3])}, "b": {0: np.array([0])}}
    out = compose(outer, inner)
    assert out["a"][1].tolist() == [2, 5] and out["b"][0].tolist() == [0]


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_k_steps_reach_the_target_macs_and_run(digits):
    x, labels = digits
    model = onnxprune.load(MODEL)
    result = iterate(model, {"x": x[:160]}, IterativeOptions(target_macs=0.5, steps=3), labels[:160])
    assert [s.step for s in result.steps] == [1, 2, 3]
    assert all(s.accuracy is not None and s.accuracy > 0.5 for s in result.steps)  # labels add accuracy to the report
    for step, target in zip(result.steps, step_targets(0.5, 3)):
        assert abs(step.macs - target) <= 0.01, (step.macs, target)  # every step lands on its target within 1%
    assert result.steps[-1].macs < result.steps[0].macs
    onnx.checker.check_model(result.model, full_check=True)
    out = _run(result.model, x[160:])
    assert out.shape == (len(x) - 160, 10) and np.all(np.isfinite(out))
    assert np.mean(out.argmax(1) == labels[160:]) > 0.5  # still a digits classifier (chance: 0.1)
    # the channels the loop kept map every narrowed tensor back into the original
    pruned = onnx.shape_inference.infer_shapes(result.model)
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in pruned.graph.value_info}
    assert result.kept
    for name, axes in result.kept.items():
        for axis, idx in axes.items():
            assert len(idx) == dims[name][axis] and np.all(np.diff(idx) > 0)


def test_feature_distillation_runs_and_loss_falls(digits):
    x, _ = digits
    model = onnxprune.load(MODEL)
    plan = model.plan("l1", target_macs=0.5)
    pruned = model.apply(plan).model
    kept = kept_channels(model.depgraph, resolve(plan, model.depgraph))
    assert "relu_2" in kept  # a pruned feature: compared through its kept channels
    features = {"relu_2": kept["relu_2"], "relu_1": kept.get("relu_1", {})}
    result = finetune(pruned, model.model, {"x": x[:96]}, FinetuneOptions(epochs=3, lr=1e-3, features=features))
    assert result.losses[-1] < 0.5 * result.first_loss, (result.first_loss, result.losses)
    # without the kept channels the pruned feature's shape does not match: one clear refusal
    with pytest.raises(InputError, match="relu_2.*--plan"):
        finetune(pruned, model.model, {"x": x[:16]}, FinetuneOptions(epochs=1, features={"relu_2": {}}))
    with pytest.raises(InputError, match="no tensor 'nowhere'"):
        finetune(pruned, model.model, {"x": x[:16]}, FinetuneOptions(epochs=1, features={"nowhere": {}}))


def test_iterative_with_distillation_and_features(digits):
    x, _ = digits
    options = IterativeOptions(target_macs=0.6, steps=2, reconstruct=False, distill=FinetuneOptions(epochs=2, lr=1e-3),
                               features=["relu_2"])
    result = iterate(onnxprune.load(MODEL), {"x": x[:96]}, options)
    assert abs(result.steps[-1].macs - 0.6) <= 0.01
    assert np.all(np.isfinite(_run(result.model, x[96:])))


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_cli_iterate(digits, tmp_path):
    x, labels = digits
    np.savez(tmp_path / "calib.npz", x=x[:120], labels=labels[:120])
    out = _cli("iterate", MODEL, "--target-macs", "0.6", "--steps", "2", "--data", tmp_path / "calib.npz",
               "-o", tmp_path / "out.onnx", "--json")
    assert out.returncode == 0, out.stderr
    steps = json.loads(out.stdout)["steps"]
    assert len(steps) == 2 and abs(steps[-1]["macs"] - 0.6) <= 0.01
    onnx.checker.check_model(str(tmp_path / "out.onnx"))
    bad = _cli("iterate", MODEL, "--target-macs", "1.5", "--data", tmp_path / "calib.npz", "-o", tmp_path / "bad.onnx")
    assert bad.returncode == 2 and "--target-macs" in bad.stderr and not (tmp_path / "bad.onnx").exists()
    bad = _cli("iterate", MODEL, "--target-macs", "0.5", "--features", "relu_2", "--data", tmp_path / "calib.npz",
               "-o", tmp_path / "bad.onnx")
    assert bad.returncode == 2 and "--distill-epochs" in bad.stderr


def test_cli_finetune_features_through_the_plan(digits, tmp_path):
    x, _ = digits
    np.savez(tmp_path / "calib.npz", x=x[:48])
    pruned, plan = tmp_path / "pruned.onnx", tmp_path / "plan.json"
    assert _cli("prune", MODEL, "--target-macs", "0.5", "--criterion", "l1", "-o", pruned, "--plan-out", plan).returncode == 0
    args = ["finetune", pruned, "--teacher", MODEL, "--data", tmp_path / "calib.npz", "-o", tmp_path / "out.onnx",
            "--epochs", "2", "--lr", "1e-3", "--features", "relu_2", "--json"]
    refused = _cli(*args)
    assert refused.returncode == 2 and "--plan" in refused.stderr
    out = _cli(*args, "--plan", plan)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["after"]["rel_error"] < summary["before"]["rel_error"]
