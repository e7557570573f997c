"""Accuracy recovered without the training code: plain L1 pruning, the activation criterion, data-aware
reconstruction (`--reconstruct`) and distillation (`onnxprune finetune`), side by side on real
pretrained models, at several fractions of MACs kept.

- digits: the shipped CNN (models/digits_cnn.onnx); calibration = the first half of
  models/digits_calib.npz (labels unused), evaluation = accuracy on the other half.
- rec: PP-OCRv4 recogniser from the rapidocr_onnxruntime wheel; text lines rendered with PIL
  (calibration and evaluation lines disjoint, different seeds), preprocessed and decoded with the
  package's own TextRecognizer.resize_norm_img and CTCLabelDecode (dictionary from the model's
  metadata); metric: character accuracy 1 - edit distance / length.  The model has dynamic height
  and width; the benchmark prunes a copy whose input is declared N x 3 x 48 x 320 (the arrays it
  feeds), so that MACs are the real ones.
- det, yolo: PP-OCRv4 det and YOLOv8n (nudenet), recall of the original's boxes at IoU 0.5 on
  rendered pages and synthetic scenes, with the packages' own pre- and post-processing.

Rows: plain L1, scaled, activation, activation + reconstruct, L1 + reconstruct, thinet (+
reconstruct), and sensitivity + reconstruct: per-group ratios from `onnxprune sensitivity
--reconstruct` (run once per model on the first --sens-samples calibration samples, scored by the
task's unlabeled loss against the original), then `prune --sensitivity --target-macs --reconstruct`.

Also reported: reconstruction time over one pass of the calibration data through the original
model (goal: at most 3x).  Run: python scripts/bench_recovery.py --models digits,rec,det,yolo
"""

from __future__ import annotations

import argparse
import glob
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402
from onnxprune.names import DATA_CRITERION_NAMES  # noqa: E402


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(model, x: np.ndarray, batch: int = 16) -> np.ndarray:
    session = _session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def one_pass_seconds(model, x: np.ndarray, batch: int = 16, clock=time.perf_counter) -> float:
    """One pass of the calibration data through the model (session made beforehand, best of 2),
    in wall time or on another `clock` (time.process_time: the process's CPU time)."""
    session = _session(model)
    name = session.get_inputs()[0].name
    best = float("inf")
    for _ in range(2):
        t = clock()
        for i in range(0, len(x), batch):
            session.run(None, {name: x[i:i + batch]})
        best = min(best, clock() - t)
    return best


# --- tasks ----------------------------------------------------------------------------------------

class Digits:
    name = "digits CNN"
    metric = "accuracy"
    batch = 16

    def __init__(self, n_calib: int, n_eval: int):
        data = np.load(ROOT / "models" / "digits_calib.npz")
        x, labels = data["x"], data["labels"]
        half = len(x) // 2
        self.model_path = ROOT / "models" / "digits_cnn.onnx"
        self.calib = x[:half][:n_calib]
        self.eval_x, self.eval_y = x[half:][:n_eval], labels[half:][:n_eval]

    def score(self, model) -> float:
        return float(np.mean(_run(model, self.eval_x, self.batch).argmax(1) == self.eval_y))

    def calib_loss(self, n: int):
        """The first `n` calibration samples and an unlabeled loss on them (see `sensitivity_file`)."""
        from onnxprune.sensitivity import top1_disagreement

        return self.calib[:n], top1_disagreement


def _fonts() -> list[str]:
    found = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf")
                   + glob.glob("/usr/share/fonts/truetype/liberation/Liberation*-Regular.ttf"))
    return [f for f in found if "Oblique" not in f and "Italic" not in f]


WORDS = ("total invoice date order number price amount street city station market garden water river "
         "north south east west room floor office phone email account bank card cash change receipt store "
         "coffee bread milk apple orange tea sugar salt paper book page chapter table window door house "
         "green black white red blue yellow small large open closed monday friday sunday january march "
         "april june july october december time hour minute second train ticket gate platform exit").split()


def _line(rng: random.Random) -> str:
    """A short label as found on receipts and signs: a word, maybe capitalised, with a number."""
    word = rng.choice(WORDS)
    word = word.capitalize() if rng.random() < 0.4 else word.upper() if rng.random() < 0.2 else word
    number = rng.choice([str(rng.randint(0, 999)), f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}",
                         f"{rng.randint(1, 28)}/{rng.randint(1, 12)}", ""])
    sep = rng.choice([" ", ": ", " #", "-"]) if number else ""
    return (word + sep + number)[:14]


def render_lines(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`n` text lines (a word and a number, at most 14 characters) as RGB arrays."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    fonts = _fonts()
    images, texts = [], []
    for _ in range(n):
        text = _line(rng)
        size = rng.randint(26, 38)
        font = ImageFont.truetype(rng.choice(fonts), size) if fonts else ImageFont.load_default(size=size)
        left, top, right, bottom = font.getbbox(text)
        pad = rng.randint(3, 8)
        image = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), tuple(rng.randint(200, 255) for _ in range(3)))
        ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=tuple(rng.randint(0, 60) for _ in range(3)))
        images.append(np.asarray(image))
        texts.append(text)
    return images, texts


def char_accuracy(predicted: list[str], truth: list[str]) -> float:
    """Mean of 1 - edit distance / length over the lines (an empty truth: 1 if nothing is read)."""
    return float(np.mean([max(0.0, 1 - edit_distance(p, t) / max(len(t), 1)) for p, t in zip(predicted, truth)]))


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


class Rec:
    name = "PP-OCRv4 rec"
    metric = "char accuracy"
    batch = 16
    eval_seed = 2  # calibration lines: seed 1

    def __init__(self, n_calib: int, n_eval: int, folder: Path):
        import rapidocr_onnxruntime
        from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

        source = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"
        model = onnx.load(source)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        for axis, size in ((1, 3), (2, 48), (3, 320)):
            dims[axis].Clear()
            dims[axis].dim_value = size
        self.model_path = folder / "rec_48x320.onnx"
        onnx.save(model, self.model_path)
        meta = {p.key: p.value for p in model.metadata_props}
        self.decode = CTCLabelDecode(character=meta["character"].splitlines())
        recognizer = TextRecognizer.__new__(TextRecognizer)  # only its preprocessing, not its session
        recognizer.rec_image_shape = [3, 48, 320]
        prepare = lambda images: np.stack([recognizer.resize_norm_img(im, 320 / 48) for im in images]).astype(np.float32)  # noqa: E731
        self.calib = prepare(render_lines(n_calib, seed=1)[0])
        eval_images, self.eval_texts = render_lines(n_eval, seed=self.eval_seed)
        self.eval_x = prepare(eval_images)

    def texts(self, outputs: np.ndarray) -> list[str]:
        return [t.strip() for t, _ in self.decode(outputs)]

    def score(self, model) -> float:
        return char_accuracy(self.texts(_run(model, self.eval_x)), self.eval_texts)

    def calib_loss(self, n: int):
        """The first `n` calibration lines and 1 - character accuracy of the candidate's reading
        against the original's (no labels)."""
        def reading_loss(reference, candidate, labels):
            return 1.0 - char_accuracy(self.texts(candidate[0]), self.texts(reference[0]))

        return self.calib[:n], reading_loss


def _fixed_input_copy(source: Path, sizes: tuple[tuple[int, int], ...], target: Path) -> Path:
    """A copy of `source` whose first input declares the sizes the benchmark feeds (axis, size),
    so that MACs are counted at the real size rather than with dynamic dims as 1."""
    model = onnx.load(source)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, size in sizes:
        dims[axis].Clear()
        dims[axis].dim_value = size
    onnx.save(model, target)
    return target


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (n x 4, x0 y0 x1 y1) with every box of `b` (m x 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matched(reference: list[tuple[int, np.ndarray]], candidate: list[tuple[int, np.ndarray]], iou: float = 0.5) -> int:
    """How many of one image's reference boxes (class, x0 y0 x1 y1) a candidate box of the same
    class covers at IoU >= `iou`; greedy by IoU, each candidate box matching at most one."""
    if not reference or not candidate:
        return 0
    overlap = iou_matrix([b for _, b in reference], [b for _, b in candidate])
    overlap[np.array([c for c, _ in reference])[:, None] != np.array([c for c, _ in candidate])[None, :]] = 0
    count = 0
    while overlap.size and overlap.max() >= iou:
        i, j = np.unravel_index(overlap.argmax(), overlap.shape)
        overlap[i, :] = 0
        overlap[:, j] = 0
        count += 1
    return count


def box_recall(reference: list[list], candidate: list[list], iou: float = 0.5) -> float:
    """The fraction of all reference boxes (per image lists) recovered by the candidate's boxes."""
    total = sum(len(r) for r in reference)
    return sum(matched(r, c, iou) for r, c in zip(reference, candidate)) / total if total else float("nan")


class BoxTask:
    """A detector scored by the recall of the original model's boxes (`boxes_from` turns the
    model's raw output on the evaluation images into per-image lists of (class, box))."""

    metric = "recall of original boxes @IoU0.5"
    batch = 4

    def boxes(self, model) -> list[list]:
        return self.boxes_from(_run(model, self.eval_x, self.batch), self.eval_geometry)

    def calib_loss(self, n: int):
        """The first `n` calibration images and 1 - recall of the original's boxes on them."""
        geometry = self.calib_geometry[:n]

        def box_loss(reference, candidate, labels):
            return 1.0 - box_recall(self.boxes_from(reference[0], geometry), self.boxes_from(candidate[0], geometry))

        return self.calib[:n], box_loss

    def score(self, model) -> float:
        if not hasattr(self, "reference"):
            self.reference = self.boxes(self.model_path)
        return box_recall(self.reference, self.boxes(model))


def render_pages(n: int, seed: int, size: int = 736) -> list[np.ndarray]:
    """`n` pages (RGB, size x size) of 6-12 printed lines: labels like the rec lines, one to three
    per row, in random fonts, sizes and ink."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    fonts = _fonts()
    pages = []
    for _ in range(n):
        image = Image.new("RGB", (size, size), tuple(rng.randint(215, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        y = rng.randint(10, 40)
        while True:
            font_size = rng.randint(18, 40)
            if y + font_size * 1.4 > size - 10:
                break
            font = ImageFont.truetype(rng.choice(fonts), font_size) if fonts else ImageFont.load_default(size=font_size)
            x = rng.randint(10, 80)
            for _ in range(rng.randint(1, 3)):
                text = _line(rng)
                width = font.getlength(text)
                if x + width > size - 10:
                    break
                draw.text((x, y), text, font=font, fill=tuple(rng.randint(0, 70) for _ in range(3)))
                x += int(width) + rng.randint(40, 120)
            y += int(font_size * rng.uniform(1.5, 2.4))
        pages.append(np.asarray(image))
    return pages


class Det(BoxTask):
    name = "PP-OCRv4 det"
    size = 736  # the package's limit_side_len: a page this size is fed unresized
    eval_seed = 4  # calibration pages: seed 3

    def __init__(self, n_calib: int, n_eval: int, folder: Path):
        import rapidocr_onnxruntime
        from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml

        source = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
        self.model_path = _fixed_input_copy(source, ((1, 3), (2, self.size), (3, self.size)), folder / "det_736.onnx")
        config = read_yaml(DEFAULT_CFG_PATH)["Det"]
        config["model_path"] = str(source)
        self.detector = TextDetector(config)
        self.prepare = self.detector.get_preprocess(self.size)
        self.calib = self._prepare(render_pages(n_calib, seed=3, size=self.size))
        self.eval_x = self._prepare(render_pages(n_eval, seed=self.eval_seed, size=self.size))
        self.calib_geometry, self.eval_geometry = [None] * n_calib, [None] * n_eval

    def _prepare(self, pages: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([self.prepare(page) for page in pages]).astype(np.float32)

    def boxes_from(self, maps: np.ndarray, geometry: list) -> list[list]:
        """The package's DB post-processing and box filter on each probability map (the pages are
        fed unresized: no geometry)."""
        out = []
        for prob in maps:
            quads, _ = self.detector.postprocess_op(prob[None], (self.size, self.size))
            quads = self.detector.filter_tag_det_res(quads, (self.size, self.size))
            out.append([(0, np.r_[q.min(0), q.max(0)]) for q in quads])
        return out


def _package_image(package: str, relative: str) -> np.ndarray:
    """A photo that ships inside an installed package (BGR, uint8)."""
    import importlib.util

    import cv2

    folder = Path(importlib.util.find_spec(package).origin).parent
    return cv2.imread(str(folder / relative))


def render_scenes(n: int, seed: int, size: int = 400) -> list[np.ndarray]:
    """`n` synthetic scenes (BGR, size x size): 1-3 copies of matplotlib's sample portrait at a
    random scale, flip and brightness, on a crop of scikit-learn's sample photos or a flat colour."""
    import cv2

    rng = np.random.default_rng(seed)
    portrait = _package_image("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")
    backgrounds = [_package_image("sklearn", "datasets/images/china.jpg"), _package_image("sklearn", "datasets/images/flower.jpg")]
    scenes = []
    for _ in range(n):
        if rng.random() < 0.7:
            photo = backgrounds[rng.integers(len(backgrounds))]
            y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
            canvas = photo[y:y + size, x:x + size].copy()
        else:
            canvas = np.full((size, size, 3), rng.integers(30, 225, 3), np.uint8)
        for _ in range(rng.integers(1, 4)):
            scale = rng.uniform(0.2, 0.6)
            piece = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                piece = piece[:, ::-1]
            piece = np.clip(piece * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
            h, w = min(piece.shape[0], size), min(piece.shape[1], size)
            y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            canvas[y:y + h, x:x + w] = piece[:h, :w]
        scenes.append(canvas)
    return scenes


class Yolo(BoxTask):
    name = "YOLOv8n (nudenet)"
    size = 320  # nudenet's inference_resolution
    eval_seed = 6  # calibration scenes: seed 5

    def __init__(self, n_calib: int, n_eval: int, folder: Path):
        import nudenet

        source = Path(nudenet.__file__).parent / "320n.onnx"
        self.model_path = _fixed_input_copy(source, ((1, 3), (2, self.size), (3, self.size)), folder / "yolov8n_320.onnx")
        self.calib, self.calib_geometry = self._prepare(render_scenes(n_calib, seed=5))
        self.eval_x, self.eval_geometry = self._prepare(render_scenes(n_eval, seed=self.eval_seed))

    def _prepare(self, scenes: list[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
        from nudenet.nudenet import _read_image

        blobs, geometry = [], []
        for scene in scenes:
            blob, *rest = _read_image(scene, self.size)
            blobs.append(blob)
            geometry.append(tuple(rest))
        return np.concatenate(blobs).astype(np.float32), geometry

    def boxes_from(self, outputs: np.ndarray, geometry: list[tuple]) -> list[list]:
        """nudenet's own decoding, score threshold and NMS on each image's output (`geometry`: the
        letterbox of each image, from nudenet's _read_image)."""
        from nudenet import nudenet

        labels = getattr(nudenet, "__labels")  # a module-private name, which a class body would mangle
        out = []
        for pred, (x_ratio, y_ratio, x_pad, y_pad, width, height) in zip(outputs, geometry):
            found = nudenet._postprocess([pred[None]], x_pad, y_pad, x_ratio, y_ratio, width, height, self.size, self.size)
            out.append([(labels.index(d["class"]), np.array(d["box"][:2] + [d["box"][0] + d["box"][2], d["box"][1] + d["box"][3]]))
                        for d in found])
        return out


DEFAULT_SAMPLES = {"digits": 180, "rec": 256, "det": 32, "yolo": 128}
TASKS = {"digits": lambda n_calib, n_eval, folder: Digits(n_calib, n_eval), "rec": Rec, "det": Det, "yolo": Yolo}


# --- rows -----------------------------------------------------------------------------------------

def distill(pruned: onnx.ModelProto, original_path: Path, name: str, calib: np.ndarray, minutes: float, batch: int = 16):
    from onnxprune.finetune import FinetuneOptions, finetune

    teacher = onnxprune.load(original_path).model
    options = FinetuneOptions(epochs=1000, lr=1e-4, batch_size=batch, minutes=minutes)
    return finetune(pruned, teacher, {name: calib}, options)


def sensitivity_file(task, pm, name: str, samples: int, ratios: list[float], folder: Path,
                     reconstruct: "onnxprune.recovery.ReconstructOptions | bool", t_pass: float) -> Path:
    """A sensitivity analysis with reconstruction (`onnxprune sensitivity --reconstruct`, the
    activation criterion) on the first `samples` calibration samples, scored by the task's own
    unlabeled loss against the original (`calib_loss`): box recall for the detectors, reading
    agreement for rec.  Written to (and resumed from) `folder`, so one analysis serves every fraction."""
    from onnxprune.sensitivity import Sensitivity, analyse

    fit = f"ridge{reconstruct.ridge:g}_positions{reconstruct.positions}" if hasattr(reconstruct, "ridge") else "default"
    path = folder / f"sensitivity_{type(task).__name__.lower()}_{samples}_{'_'.join(f'{r:g}' for r in ratios)}_{fit}.json"
    x, loss = task.calib_loss(samples)
    done = sum(len(g.losses) for g in Sensitivity.read(path).groups.values()) if path.exists() else 0
    t = time.perf_counter()
    analyse(pm, {name: x}, metric=loss, ratios=ratios, criterion="activation", out=path, progress=True, reconstruct=reconstruct)
    seconds = time.perf_counter() - t
    candidates = len(pm.groups) * len(ratios)
    print(f"sensitivity analysis ({path}): {candidates} candidates on {len(x)} samples, {candidates - done} measured now "
          f"in {seconds:.0f} s ({seconds / t_pass:.0f}x one calibration pass)", flush=True)
    return path


def bench(task, fractions: list[float], distill_minutes: float, methods: str = "all", plan_options: dict | None = None,
          reconstruct: "onnxprune.recovery.ReconstructOptions | bool" = True, sens_samples: int = 32,
          sens_ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5), folder: Path | None = None) -> list[dict]:
    """The rows for one task; `plan_options` go to every plan (protect_ends), `reconstruct` to
    every reconstruction row (ridge, positions); the sensitivity row's analysis runs once, on
    `sens_samples` calibration samples at `sens_ratios`, kept in `folder`."""
    rows = []
    original = task.model_path
    baseline = task.score(original)
    t_pass = one_pass_seconds(original, task.calib)
    print(f"\n{task.name}: baseline {task.metric} {baseline:.4f}; one calibration pass ({len(task.calib)} samples) {t_pass:.2f} s", flush=True)
    rows.append({"model": task.name, "macs": 1.0, "method": "original", "score": baseline})
    pm = onnxprune.load(original)
    name = pm.index.model.graph.input[0].name
    feeds = {name: task.calib}
    sens_path = None
    for fraction in fractions:
        rows_wanted = (("plain L1", "l1", False), ("scaled", "scaled", False), ("activation", "activation", False),
                       ("activation + reconstruct", "activation", True), ("L1 + reconstruct", "l1", True),
                       ("thinet", "thinet", False), ("thinet + reconstruct", "thinet", True),
                       ("sensitivity + reconstruct", "activation", True))
        if methods != "all":
            rows_wanted = [r for r in rows_wanted if r[0] in methods.split(",")]
        for label, criterion, refit in rows_wanted:
            allocation = {}
            if label.startswith("sensitivity"):
                if sens_path is None:
                    if folder is None:
                        raise ValueError("the sensitivity row needs a folder for its analysis")
                    sens_path = sensitivity_file(task, pm, name, sens_samples, list(sens_ratios), folder, reconstruct, t_pass)
                allocation = {"sensitivity": sens_path}
            plan = pm.plan(criterion, feeds if criterion in DATA_CRITERION_NAMES else None, target_macs=fraction,
                           **allocation, **(plan_options or {}))
            result = pm.apply(plan, feeds if refit else None, reconstruct=reconstruct if refit else False)
            macs = result.after.macs / result.before.macs
            row = {"model": task.name, "macs": macs, "method": label, "score": task.score(result.model)}
            if refit:
                rec = result.recovery
                row["reconstruct_s"] = rec.reconstruction.seconds
                row["ratio_to_pass"] = rec.reconstruction.seconds / t_pass
                row["dropped"] = rec.reconstructed is None
            print(_fmt_row(row), flush=True)
            rows.append(row)
            if refit and criterion == "activation" and distill_minutes > 0:
                try:
                    tuned = distill(result.model, original, name, task.calib, distill_minutes, task.batch)
                    held = tuned.holdout_losses
                    row2 = {"model": task.name, "macs": macs, "method": f"activation + reconstruct + distill ({distill_minutes:g} min; "
                            f"kept epoch {tuned.kept_epoch} of {len(tuned.losses)}, held-out loss {held[0]:.3g} -> {min(held):.3g})",
                            "score": task.score(tuned.model)}
                except ImportError as exc:
                    row2 = {"model": task.name, "macs": macs, "method": f"distill skipped: {exc}", "score": float("nan")}
                except Exception as exc:  # noqa: BLE001 - a benchmark row reports the failure and the table goes on
                    row2 = {"model": task.name, "macs": macs, "method": f"distill failed: {type(exc).__name__}: {str(exc)[:160]}",
                            "score": float("nan")}
                print(_fmt_row(row2), flush=True)
                rows.append(row2)
    return rows


def _fmt_row(row: dict) -> str:
    extra = ""
    if "reconstruct_s" in row:
        extra = f" | {row['reconstruct_s']:.1f} s ({row['ratio_to_pass']:.1f}x one pass){' [dropped: worse]' if row['dropped'] else ''}"
    return f"| {row['model']} | {row['macs']:.1%} | {row['method']} | {row['score']:.4f}{extra} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,rec")
    parser.add_argument("--fractions", default="0.9,0.75,0.5")
    parser.add_argument("--calib", type=int, help="calibration samples (default: digits 180, rec 256 lines, det 32 pages, yolo 128 scenes)")
    parser.add_argument("--eval", type=int, help="evaluation samples (default: as --calib)")
    parser.add_argument("--distill-minutes", type=float, default=0, help="CPU minutes of distillation per row (0: none)")
    parser.add_argument("--methods", default="all", help="comma-separated row labels to run (default: all)")
    parser.add_argument("--protect-ends", action="store_true", help="plan every row with --protect-ends (first and last layers kept)")
    parser.add_argument("--ridge", type=float, default=1e-3, help="reconstruction's ridge (ReconstructOptions.ridge, default 1e-3)")
    parser.add_argument("--positions", type=int, default=64,
                        help="reconstruction's sampled positions per sample and rows wanted per feature (default 64)")
    parser.add_argument("--sens-samples", type=int, default=32,
                        help="calibration samples the 'sensitivity + reconstruct' row's analysis runs on (default 32)")
    parser.add_argument("--sens-ratios", default="0.1,0.2,0.3,0.4,0.5", help="ratios that analysis measures")
    parser.add_argument("--eval-seed", type=int, help="render another evaluation set (rec, det, yolo; default seeds 2, 4, 6; "
                                                       "the calibration seeds are 1, 3, 5)")
    parser.add_argument("--workdir", type=Path, help="keep the sensitivity analyses here, to resume and reuse (default: a temporary folder)")
    args = parser.parse_args()
    from onnxprune.recovery import ReconstructOptions

    reconstruct = ReconstructOptions(ridge=args.ridge, positions=args.positions, rows_wanted=args.positions)
    plan_options = {"protect_ends": True} if args.protect_ends else {}
    fractions = [float(f) for f in args.fractions.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for key in args.models.split(","):
            n_calib = args.calib or DEFAULT_SAMPLES[key]
            if args.eval_seed is not None:
                if key == "digits":
                    parser.error("--eval-seed: the digits evaluation is the fixed second half of models/digits_calib.npz")
                if args.eval_seed in (1, 3, 5):
                    parser.error("--eval-seed: seeds 1, 3 and 5 render the calibration data")
                TASKS[key].eval_seed = args.eval_seed  # the task's class
            task = TASKS[key](n_calib, args.eval or n_calib, folder)
            if args.workdir:
                args.workdir.mkdir(parents=True, exist_ok=True)
            bench(task, fractions, args.distill_minutes, args.methods, plan_options, reconstruct, args.sens_samples,
                  tuple(float(r) for r in args.sens_ratios.split(",")), args.workdir or folder)


if __name__ == "__main__":
    main()
