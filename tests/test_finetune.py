"""Distillation without the training code (onnxprune.finetune): the loss falls, and the ONNX graph
that comes back is the pruned graph with only its weights changed.  The torch executor it runs on
(onnxprune.ops.torch_exec) computes what onnxruntime computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")  # an optional extra; CI installs it

import onnxprune  # noqa: E402
from onnxprune.finetune import FinetuneOptions, finetune  # noqa: E402
from onnxprune.graph import ModelIndex  # noqa: E402
from onnxprune.ops.torch_exec import GraphModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    data = np.load(ROOT / "models" / "digits_calib.npz")
    pm = onnxprune.load(ROOT / "models" / "digits_cnn.onnx")
    pruned = pm.apply(pm.plan("l1", target_macs=0.5)).model
    return pruned, data["x"], data["labels"]


def _structure(model: onnx.ModelProto) -> bytes:
    """The model without the values of its weights (names, dtypes and dims stay)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        dims, name, dtype = list(tensor.dims), tensor.name, tensor.data_type
        tensor.Clear()
        tensor.name, tensor.data_type = name, dtype
        tensor.dims.extend(dims)
    return copy.SerializeToString()


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_executor_matches_onnxruntime(digits):
    pruned, x, _ = digits
    net = GraphModule(pruned, ModelIndex.build(pruned), set())
    with torch.no_grad():
        got = net(x=torch.from_numpy(x[:16]))[0].numpy()
    expected = _run(pruned, x[:16])
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_loss_falls_and_only_weights_change(digits):
    pruned, x, labels = digits
    teacher = onnxprune.load(ROOT / "models" / "digits_cnn.onnx").model
    result = finetune(pruned, teacher, {"x": x[:96]}, FinetuneOptions(epochs=3, lr=1e-3, batch_size=16))
    assert result.steps == 3 * 6
    assert result.losses[-1] < 0.5 * result.first_loss, (result.first_loss, result.losses)
    assert _structure(result.model) == _structure(pruned)  # same graph, same names, dtypes and shapes
    before = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    assert changed and changed <= set(result.trained)
    # closer to the teacher on samples it did not train on
    held_out = x[96:]
    teacher_out = _run(teacher, held_out)
    err = lambda m: np.linalg.norm(_run(m, held_out) - teacher_out)  # noqa: E731
    assert err(result.model) < err(pruned)


def test_held_out_samples_choose_the_epoch_written(digits):
    """An eighth of the samples is not trained on; the epoch with the lowest loss on them is the
    one written.  A learning rate far too high makes every epoch worse than the untrained
    student: the student comes back unchanged (kept_epoch 0) rather than a damaged model."""
    pruned, x, _ = digits
    teacher = onnxprune.load(ROOT / "models" / "digits_cnn.onnx").model
    good = finetune(pruned, teacher, {"x": x[:96]}, FinetuneOptions(epochs=3, lr=1e-3, batch_size=16))
    assert len(good.holdout_losses) == 4 and good.kept_epoch == int(np.argmin(good.holdout_losses)) > 0
    bad = finetune(pruned, teacher, {"x": x[:96]}, FinetuneOptions(epochs=2, lr=10.0, batch_size=16))
    assert min(bad.holdout_losses[1:]) > bad.holdout_losses[0], bad.holdout_losses
    assert bad.kept_epoch == 0 and bad.model is pruned
    everything = finetune(pruned, teacher, {"x": x[:96]}, FinetuneOptions(epochs=1, lr=10.0, batch_size=16, holdout=0))
    assert everything.kept_epoch is None and everything.holdout_losses == [] and everything.steps == 6
    assert _structure(everything.model) == _structure(pruned) and everything.model is not pruned


def test_cli_finetune(digits, tmp_path):
    pruned, x, _ = digits
    onnx.save(pruned, tmp_path / "pruned.onnx")
    np.savez(tmp_path / "calib.npz", x=x[:48])
    out = subprocess.run([sys.executable, "-m", "onnxprune.cli", "finetune", str(tmp_path / "pruned.onnx"),
                          "--teacher", str(ROOT / "models" / "digits_cnn.onnx"), "--data", str(tmp_path / "calib.npz"),
                          "-o", str(tmp_path / "out.onnx"), "--epochs", "2", "--lr", "1e-3", "--json"],
                         capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["after"]["rel_error"] < summary["before"]["rel_error"]
    assert _structure(onnx.load(tmp_path / "out.onnx")) == _structure(pruned)


def test_executor_on_pp_ocr_rec():
    """The real-model case: PP-OCRv4 rec (weights in Constant nodes, opset 12 Softmax, Slice,
    ReduceMean, HardSigmoid, ...) runs in the executor as in onnxruntime."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime", reason="PP-OCR models ship in the rapidocr_onnxruntime wheel")
    path = Path(rapidocr.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    model = onnx.load(path)
    x = np.random.default_rng(0).random((1, 3, 48, 320), dtype=np.float32)
    net = GraphModule(model, ModelIndex.build(model), set())
    with torch.no_grad():
        got = net(x=torch.from_numpy(x))[0].numpy()
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_executor_on_yolov8n():
    """YOLOv8n as shipped in the nudenet wheel (ultralytics export: Split in every C2f block,
    the DFL head's Softmax and Conv) runs in the executor as in onnxruntime."""
    nudenet = pytest.importorskip("nudenet", reason="YOLOv8n ships in the nudenet wheel")
    path = Path(nudenet.__file__).parent / "320n.onnx"
    model = onnx.load(path)
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    net = GraphModule(model, ModelIndex.build(model), set())
    with torch.no_grad():
        got = net(images=torch.from_numpy(x))[0].numpy()
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_executor_on_pp_ocr_det():
    """PP-OCRv4 det (DB head: ConvTranspose, Resize, HardSigmoid) runs in the executor as in
    onnxruntime on a printed page, where its probability map is far from 0 and 1."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime", reason="PP-OCR models ship in the rapidocr_onnxruntime wheel")
    from realmodels import text_page

    path = Path(rapidocr.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    model = onnx.load(path)
    page = text_page()[:320, :320].astype(np.float32) / 255
    x = ((page - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()
    net = GraphModule(model, ModelIndex.build(model), set())
    with torch.no_grad():
        got = net(x=torch.from_numpy(x))[0].numpy()
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert expected.max() > 0.9  # text found: the comparison is not between two all-zero maps
    assert np.abs(got - expected).max() <= 1e-3  # float32 sums in another order, through a sigmoid
    assert np.array_equal(got > 0.3, expected > 0.3)  # the text mask DBPostProcess draws boxes from
