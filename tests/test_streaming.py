"""The pruned model written as it goes (onnxprune.staging): the same model as the in-memory path,
external data preserved, nothing left behind when anything fails, and runs with --data that read
the original's weights only from its memory map.  Peak memory is measured by
scripts/bench_large_model.py, never here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune
import onnxprune.verify
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.staging import StagedOutput

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def calibration(tmp_path: Path, sample: Path) -> Path:
    model = onnx.load(str(sample), load_external_data=False)
    vi = model.graph.input[0]
    dims = [d.dim_value or 8 for d in vi.type.tensor_type.shape.dim]
    dims[0] = 16
    path = tmp_path / "calib.npz"
    np.savez(path, **{vi.name: np.random.default_rng(0).random(dims, dtype=np.float32)})
    return path


def tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def header_without_data(path: Path) -> bytes:
    """The model file with every initializer's data and location cleared: what must match when
    only the layout of the data file differs."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.ClearField("external_data")
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model.SerializeToString()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_streamed_equals_in_memory(sample: Path, tmp_path: Path):
    model = onnxprune.load(sample, mapped=True)
    plan = model.plan(ratio=0.4, criterion="l2", round_to=4)
    memory = tmp_path / "memory" / "out.onnx"
    model.apply(plan).save(memory)
    streamed = tmp_path / "streamed" / "out.onnx"
    pruning = model.surgery(plan, output=streamed)
    assert pruning.staged is not None and not streamed.exists()  # nothing at the target before saving
    stubs = [t for t in pruning.model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert stubs and not any(t.raw_data for t in stubs)  # the pruned weights are not held in memory
    pruning.verify().save(streamed)
    assert leftovers(streamed.parent) == ["out.onnx", "out.onnx.data"]  # external data preserved, staging gone
    assert header_without_data(streamed) == header_without_data(memory)
    a, b = tensors(streamed), tensors(memory)
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


def test_cli_prune_writes_as_it_goes_and_matches_the_api(sample: Path, tmp_path: Path, monkeypatch):
    put = []
    original_put = StagedOutput.put
    monkeypatch.setattr(StagedOutput, "put", lambda self, *a, **k: put.append(a[0]) or original_put(self, *a, **k))
    out = tmp_path / "cli" / "out.onnx"
    assert main(["prune", str(sample), "-o", str(out), "--ratio", "0.4", "--criterion", "l2", "--round-to", "4", "--json"]) == 0
    assert put, "the command line should stream the pruned weights"
    model = onnxprune.load(sample)
    reference = tmp_path / "api" / "out.onnx"
    model.apply(model.plan(ratio=0.4, criterion="l2", round_to=4)).save(reference)
    assert header_without_data(out) == header_without_data(reference)
    a, b = tensors(out), tensors(reference)
    assert all(np.array_equal(a[k], b[k]) for k in b) and list(a) == list(b)
    assert leftovers(out.parent) == ["out.onnx", "out.onnx.data"]


def test_failed_verification_leaves_nothing(sample: Path, tmp_path: Path, monkeypatch):
    def broken(*args, **kwargs):
        raise OnnxPruneError("internal error: made to fail; nothing written")

    monkeypatch.setattr(onnxprune.verify, "verify", broken)
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    assert main(["prune", str(sample), "-o", str(out), "--ratio", "0.4"]) == 1
    assert leftovers(out.parent) == []  # no model, no data file, no staging folder
    assert leftovers(sample.parent) == ["digits_cnn.onnx", "digits_cnn.onnx.data"]


def test_failed_write_leaves_nothing(sample: Path, tmp_path: Path, monkeypatch):
    def full_disk(self, model):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StagedOutput, "write_header", full_disk)
    model = onnxprune.load(sample, mapped=True)
    plan = model.plan(ratio=0.4)
    out = tmp_path / "out" / "pruned.onnx"
    with pytest.raises(OSError):
        model.surgery(plan, output=out)
    assert leftovers(out.parent) == []


def test_existing_output_is_kept_until_the_new_one_is_complete(sample: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "out" / "pruned.onnx"
    assert main(["prune", str(sample), "-o", str(out), "--ratio", "0.2", "--json"]) == 0
    before = out.read_bytes(), out.with_name(out.name + ".data").read_bytes()
    monkeypatch.setattr(onnxprune.verify, "verify", lambda *a, **k: (_ for _ in ()).throw(OnnxPruneError("made to fail")))
    assert main(["prune", str(sample), "-o", str(out), "--ratio", "0.5", "--json"]) == 1
    assert (out.read_bytes(), out.with_name(out.name + ".data").read_bytes()) == before
    assert leftovers(out.parent) == ["pruned.onnx", "pruned.onnx.data"]


def test_weights_and_simplify_read_the_staged_data(sample: Path, tmp_path: Path):
    out = tmp_path / "out" / "pruned.onnx"
    model = onnxprune.load(sample, mapped=True)
    plan = model.plan(ratio=0.4)
    result = model.surgery(plan, output=out).verify()
    staged = result.weights()
    expected = {k: v for k, v in onnxprune.load(sample).apply(plan).weights().items()}
    assert list(staged) == list(expected) and all(np.array_equal(staged[k], expected[k]) for k in expected)
    result.materialize()  # what --simplify does first: the model in memory, nothing staged
    assert result.staged is None and all(t.data_location != onnx.TensorProto.EXTERNAL for t in result.model.graph.initializer)
    result.save(out)
    assert leftovers(out.parent) == ["pruned.onnx", "pruned.onnx.data"]


def test_data_runs_read_the_original_only_through_its_map(sample: Path, tmp_path: Path, calibration: Path):
    """With --data (activation criterion, reconstruction, quality) the original's external data is
    never loaded into memory: the eager loader is made to fail, and the runs still succeed."""
    code = f"""
import sys
from onnx import external_data_helper
def refuse(*args, **kwargs):
    raise AssertionError("the original's weights were read eagerly")
external_data_helper.load_external_data_for_model = refuse
from onnxprune.cli import main
sys.exit(main(sys.argv[1:]))
"""
    for extra in ([], ["--reconstruct"]):
        out = tmp_path / f"out{len(extra)}" / "pruned.onnx"
        done = subprocess.run([sys.executable, "-c", code, "prune", str(sample), "-o", str(out), "--ratio", "0.4",
                               "--data", str(calibration), "--json", *extra], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout)
        assert summary["quality"] is not None
        assert leftovers(out.parent) == ["pruned.onnx", "pruned.onnx.data"]
        onnx.checker.check_model(str(out), full_check=True)
