"""The command line on the shipped sample model: inspect, prune, apply, and bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_help_explains_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("inspect", "prune", "apply"):
        assert command in out.stdout
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and len(sub.stdout) > 200


def test_inspect_json_reports_groups_and_costs(sample: Path):
    out = run_cli("inspect", sample, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    prunable = [g for g in info["groups"] if g["prunable"]]
    blocked = [g for g in info["groups"] if not g["prunable"]]
    assert [g["channels"] for g in prunable] == [32, 64, 64, 64]
    assert {g["blocked"] for g in blocked} == {"graph input 'x'", "graph output 'logits'"}
    assert info["params"] == sum(layer["params"] for layer in info["layers"])
    assert info["macs"] == sum(layer["macs"] for layer in info["layers"]) > 1_000_000
    assert 0 < info["prunable_macs"] <= 1


def test_prune_writes_verified_model_and_plan(sample: Path, tmp_path: Path):
    before = digest(tmp_path)
    out = run_cli("prune", sample, "-o", tmp_path / "out" / "p.onnx", "--target-macs", "0.5", "--data", CALIB,
                  "--plan-out", tmp_path / "out" / "p.plan.json", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert abs(summary["macs"][1] / summary["macs"][0] - 0.5) <= 0.005
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"p.onnx", "p.onnx.data", "p.plan.json"}
    onnx.checker.check_model(str(tmp_path / "out" / "p.onnx"))
    x = np.load(CALIB)["x"][:5]
    session = ort.InferenceSession(str(tmp_path / "out" / "p.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x})[0].shape == (5, 10)
    assert digest(tmp_path) == before  # the input folder is untouched


def test_threshold_zero_on_a_trained_model_removes_nothing_and_is_exact(sample: Path, tmp_path: Path):
    out = run_cli("prune", sample, "-o", tmp_path / "t0.onnx", "--threshold", "0", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["channels_removed"] == 0 and summary["exact"] and summary["max_rel_error"] <= 1e-5


def test_apply_plan_roundtrip_is_byte_identical(sample: Path, tmp_path: Path):
    first = run_cli("prune", sample, "-o", tmp_path / "a" / "m.onnx", "--ratio", "0.4", "--plan-out", tmp_path / "plan.json")
    assert first.returncode == 0, first.stderr
    second = run_cli("apply", sample, tmp_path / "plan.json", "-o", tmp_path / "b" / "m.onnx")
    assert second.returncode == 0, second.stderr
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_output_onto_input_is_refused(sample: Path):
    before = digest(sample.parent)
    out = run_cli("prune", sample, "-o", sample, "--ratio", "0.3")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "overwrite" in out.stderr
    assert digest(sample.parent) == before


BAD_MODELS = {
    "not_onnx": (lambda d: (d / "m.onnx").write_text("this is not a model\n"), "not an ONNX model"),
    "empty": (lambda d: (d / "m.onnx").write_bytes(b""), "file is empty"),
    "truncated": (lambda d: (d / "m.onnx").write_bytes(SAMPLE.read_bytes()[:4000]), "not an ONNX model"),
    "missing": (lambda d: None, "no such file"),
}


def _external_variant(folder: Path, location: str) -> None:
    model = onnx.load(str(SAMPLE), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(folder / "m.onnx"))


BAD_MODELS.update({
    "external_data_missing": (lambda d: _external_variant(d, "gone.data"), "external data file 'gone.data' is missing"),
    "external_data_escapes": (lambda d: _external_variant(d, "../outside.data"), "escapes the model's folder"),
    "external_data_absolute": (lambda d: _external_variant(d, "/etc/passwd"), "absolute path"),
})


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
@pytest.mark.parametrize("command", ["inspect", "prune"])
def test_bad_input_gives_one_clear_line(case: str, command: str, tmp_path: Path):
    make, message = BAD_MODELS[case]
    make(tmp_path)
    model = tmp_path / "m.onnx"
    before = digest(tmp_path)
    args = [command, model] + (["-o", tmp_path / "out.onnx", "--ratio", "0.3"] if command == "prune" else [])
    out = run_cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert str(model) in lines[0] and message in lines[0]
    assert digest(tmp_path) == before  # nothing written, input untouched


def test_symlinked_external_data_outside_the_folder_is_refused(tmp_path: Path):
    outside = tmp_path / "outside"
    inside = tmp_path / "inside"
    outside.mkdir()
    inside.mkdir()
    shutil.copy(ROOT / "models" / "digits_cnn.onnx.data", outside / "w.data")
    (inside / "w.data").symlink_to(outside / "w.data")
    _external_variant(inside, "w.data")
    out = run_cli("inspect", inside / "m.onnx")
    assert out.returncode == 2 and "outside the model's folder" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.0"], "outside [0, 1)"),
    (["--ratio", "-0.1"], "outside [0, 1)"),
    (["--ratio", "0.3", "--threshold", "0"], "choose one of"),
    (["--round-to", "0", "--ratio", "0.2"], "at least 1"),
    (["--target-macs", "0.0001"], "least reachable"),
    ([], "say how much to prune"),
    (["--criterion", "activation", "--ratio", "0.3"], "needs calibration data"),
])
def test_bad_options_write_nothing(sample: Path, tmp_path: Path, args: list[str], message: str):
    out = run_cli("prune", sample, "-o", tmp_path / "out.onnx", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_calibration_data_of_wrong_shape_or_dtype(sample: Path, tmp_path: Path):
    np.savez(tmp_path / "wrong_shape.npz", x=np.zeros((4, 1, 9, 8), np.float32))
    np.savez(tmp_path / "wrong_dtype.npz", x=np.zeros((4, 1, 8, 8), np.float64))
    for name, message in (("wrong_shape.npz", "size 9 on axis 2"), ("wrong_dtype.npz", "dtype float64")):
        out = run_cli("prune", sample, "-o", tmp_path / "o.onnx", "--ratio", "0.2", "--criterion", "activation", "--data", tmp_path / name)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert not (tmp_path / "o.onnx").exists()


def test_plan_for_another_model_names_the_first_mismatch(sample: Path, tmp_path: Path):
    made = run_cli("prune", sample, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--plan-out", tmp_path / "plan.json")
    assert made.returncode == 0, made.stderr
    doc = json.loads((tmp_path / "plan.json").read_text())
    doc["groups"][0]["members"][0]["initializer"] = "no.such.weight"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    out = run_cli("apply", sample, tmp_path / "bad.json", "-o", tmp_path / "q.onnx")
    assert out.returncode == 2
    assert "no.such.weight" in out.stderr and not (tmp_path / "q.onnx").exists()


def test_weights_out_holds_the_pruned_weights_by_original_name(sample: Path, tmp_path: Path):
    out = run_cli("prune", sample, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--weights-out", tmp_path / "w.npz")
    assert out.returncode == 0, out.stderr
    weights = np.load(tmp_path / "w.npz")
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    original = onnx.load(str(sample), load_external_data=False)
    assert set(weights.files) == {t.name for t in original.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for tensor in pruned.graph.initializer:
        if tensor.name in weights.files:
            assert np.array_equal(weights[tensor.name], onnx.numpy_helper.to_array(tensor))
    assert weights["head.1.weight"].shape[1] < 64 * 16  # the flatten head lost input features


def test_output_onto_the_input_data_file_is_refused(sample: Path):
    before = digest(sample.parent)
    out = run_cli("prune", sample, "-o", sample.with_name(sample.name + ".data"), "--ratio", "0.3")
    assert out.returncode == 2 and "refusing to overwrite the input model" in out.stderr
    assert digest(sample.parent) == before


def test_sensitivity_labels_file_problems_are_bad_input(sample: Path, tmp_path: Path):
    missing = run_cli("sensitivity", sample, "--data", CALIB, "--labels", tmp_path / "none.npy", "--metric", "accuracy",
                      "-o", tmp_path / "s.json")
    assert missing.returncode == 2 and "no such labels file" in missing.stderr
    np.save(tmp_path / "x.npy", np.load(CALIB)["x"])
    no_labels = run_cli("sensitivity", sample, "--data", tmp_path / "x.npy", "--metric", "accuracy", "-o", tmp_path / "s.json")
    assert no_labels.returncode == 2 and "needs labels" in no_labels.stderr
    np.save(tmp_path / "short.npy", np.zeros(3, np.int64))
    short = run_cli("sensitivity", sample, "--data", CALIB, "--labels", tmp_path / "short.npy", "--metric", "accuracy",
                    "-o", tmp_path / "s.json")
    assert short.returncode == 2 and "3 labels for 360 samples" in short.stderr
    assert not (tmp_path / "s.json").exists()
