"""Nothing lost: outputs appear only complete and verified, inputs are never modified, `-o` onto
the input needs --overwrite, external data lands beside the new model, and output is deterministic."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune.verify
from conftest import check_runnable, input_feeds, run_cli, session

ROOT = Path(__file__).resolve().parents[1]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_failed_verification_writes_nothing(sample: Path, tmp_path: Path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise onnxprune.errors.OnnxPruneError("internal error: verification failed (test); nothing written")

    monkeypatch.setattr(onnxprune.verify, "verify", fail)
    before = digest(sample.parent)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli(capsys, "prune", sample, "-o", out / "p.onnx", "--ratio", "0.3")
    assert code == 1
    assert err == "onnxprune: internal error: verification failed (test); nothing written\n"
    assert list(out.iterdir()) == []  # no output, no temporary leftovers
    assert digest(sample.parent) == before


@pytest.mark.parametrize("external", [True, False])
def test_crash_mid_save_leaves_nothing(sample: Path, tmp_path: Path, capsys, monkeypatch, external: bool):
    """Writing the model file gets part of the way, then fails (a full disk, a kill)."""
    write_bytes = Path.write_bytes

    def crash(self, data):
        write_bytes(self, data[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", crash)
    if not external:
        onnx.save(onnx.load(str(sample)), str(sample.parent / "inline.onnx"))
        sample = sample.parent / "inline.onnx"
    before = digest(sample.parent)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli(capsys, "prune", sample, "-o", out / "p.onnx", "--ratio", "0.3")
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err
    assert list(out.iterdir()) == []
    assert digest(sample.parent) == before


def test_overwrite_replaces_the_input_correctly(sample: Path, tmp_path: Path, capsys):
    original = onnx.load(str(sample))
    code, _, err = run_cli(capsys, "prune", sample, "-o", sample, "--ratio", "0.3")
    assert code == 2 and err == f"onnxprune: error: {sample}: refusing to overwrite the input model (use --overwrite)\n"
    code, _, err = run_cli(capsys, "prune", sample, "-o", tmp_path / "expected.onnx", "--ratio", "0.3")
    assert code == 0, err
    code, _, err = run_cli(capsys, "prune", sample, "-o", sample, "--ratio", "0.3", "--overwrite")
    assert code == 0, err
    assert {p.name for p in sample.parent.iterdir()} == {"digits_cnn.onnx", "digits_cnn.onnx.data"}  # no leftovers
    assert sample.with_name("digits_cnn.onnx.data").read_bytes() == (tmp_path / "expected.onnx.data").read_bytes()
    assert onnx.load(str(sample)).graph == onnx.load(str(tmp_path / "expected.onnx")).graph  # only the data file's name differs
    check_runnable(original, sample)


def test_external_data_is_written_beside_the_new_model(sample: Path, tmp_path: Path, capsys):
    before = digest(sample.parent)
    code, _, err = run_cli(capsys, "prune", sample, "-o", tmp_path / "new" / "p.onnx", "--ratio", "0.3")
    assert code == 0, err
    assert {p.name for p in (tmp_path / "new").iterdir()} == {"p.onnx", "p.onnx.data"}
    header = onnx.load(str(tmp_path / "new" / "p.onnx"), load_external_data=False)
    locations = {e.value for t in header.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"p.onnx.data"}
    assert digest(sample.parent) == before
    check_runnable(onnx.load(str(sample)), tmp_path / "new" / "p.onnx")


def test_same_input_and_options_give_identical_bytes(sample: Path, tmp_path: Path, capsys):
    outputs = []
    for k in range(2):
        code, _, err = run_cli(capsys, "prune", sample, "-o", tmp_path / f"a{k}" / "p.onnx", "--ratio", "0.3", "--criterion", "random")
        assert code == 0, err
        outputs.append(digest(tmp_path / f"a{k}"))
    for k in range(2):
        done = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(sample), "-o", str(tmp_path / f"b{k}" / "p.onnx"),
                               "--ratio", "0.3", "--criterion", "random"], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        outputs.append(digest(tmp_path / f"b{k}"))
    assert all(o == outputs[0] for o in outputs)


def test_models_over_the_protobuf_limit_go_through_files(sample: Path, tmp_path: Path, capsys, monkeypatch):
    """Above 2 GB protobuf cannot serialise: the checker and onnxruntime then read a temporary copy
    with external data (from 256 MB on).  The limit is lowered so the small sample takes that
    route, and serialising anything with weights fails as it would above 2 GB."""
    import onnxprune.runtime

    monkeypatch.setattr(onnxprune.runtime, "FILE_ROUTE_ABOVE", 1000)
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", _refuse_large_serialisation(onnx.ModelProto.SerializeToString))
    code, _, err = run_cli(capsys, "prune", sample, "-o", tmp_path / "p.onnx", "--ratio", "0.3")
    assert code == 0, err
    monkeypatch.undo()
    original = onnx.load(str(sample))
    check_runnable(original, tmp_path / "p.onnx")
    feeds = input_feeds(original, 2)
    assert [a.shape for a in session(original).run(None, feeds)] == [b.shape for b in session(tmp_path / "p.onnx").run(None, feeds)]


def _refuse_large_serialisation(serialise):
    """SerializeToString that fails, as protobuf does above 2 GB, for anything holding weights."""
    def guarded(self, *args, **kwargs):
        if any(len(t.raw_data) > 4096 for t in getattr(self, "graph", onnx.GraphProto()).initializer):
            raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB (test)")
        return serialise(self, *args, **kwargs)
    return guarded


def test_input_never_modified_even_when_everything_succeeds(sample: Path, tmp_path: Path, capsys):
    before = digest(sample.parent)
    mtimes = {p.name: p.stat().st_mtime_ns for p in sample.parent.iterdir()}
    for args in (["--threshold", "0"], ["--ratio", "0.5", "--global"], ["--target-macs", "0.6"]):
        code, _, err = run_cli(capsys, "prune", sample, "-o", tmp_path / "o.onnx", *args)
        assert code == 0, err
    assert digest(sample.parent) == before
    assert {p.name: p.stat().st_mtime_ns for p in sample.parent.iterdir()} == mtimes
    assert np.isfinite(session(tmp_path / "o.onnx").run(None, input_feeds(onnx.load(str(sample)), 2))[0]).all()
