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

Also reported: reconstruction time over one pass of the calibration data through the original
model (goal: at most 3x).  Run: python scripts/bench_recovery.py --models digits,rec
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


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(model, x: np.ndarray, batch: int = 16) -> np.ndarray:
    session = _session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def one_pass_seconds(model, x: np.ndarray, batch: int = 16) -> float:
    """One pass of the calibration data through the model (session made beforehand, best of 2)."""
    session = _session(model)
    name = session.get_inputs()[0].name
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            session.run(None, {name: x[i:i + batch]})
        best = min(best, time.perf_counter() - t)
    return best


# --- tasks ----------------------------------------------------------------------------------------

class Digits:
    name = "digits CNN"
    metric = "accuracy"

    def __init__(self, n_calib: int, n_eval: int):
        data = np.load(ROOT / "models" / "digits_calib.npz")
        x, labels = data["x"], data["labels"]
        half = len(x) // 2
        self.model_path = ROOT / "models" / "digits_cnn.onnx"
        self.calib = x[:half][:n_calib]
        self.eval_x, self.eval_y = x[half:][:n_eval], labels[half:][:n_eval]

    def score(self, model) -> float:
        return float(np.mean(_run(model, self.eval_x).argmax(1) == self.eval_y))


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
        eval_images, self.eval_texts = render_lines(n_eval, seed=2)
        self.eval_x = prepare(eval_images)

    def score(self, model) -> float:
        texts = [t.strip() for t, _ in self.decode(_run(model, self.eval_x))]
        return float(np.mean([max(0.0, 1 - edit_distance(p, t) / len(t)) for p, t in zip(texts, self.eval_texts)]))


# --- rows -----------------------------------------------------------------------------------------

def distill(pruned: onnx.ModelProto, original_path: Path, name: str, calib: np.ndarray, minutes: float):
    from onnxprune.finetune import FinetuneOptions, finetune

    teacher = onnxprune.load(original_path).model
    return finetune(pruned, teacher, {name: calib}, FinetuneOptions(epochs=1000, lr=1e-4, minutes=minutes)).model


def bench(task, fractions: list[float], distill_minutes: float, methods: str = "all") -> list[dict]:
    rows = []
    original = task.model_path
    baseline = task.score(original)
    t_pass = one_pass_seconds(original, task.calib)
    print(f"\n{task.name}: baseline {task.metric} {baseline:.4f}; one calibration pass ({len(task.calib)} samples) {t_pass:.2f} s", flush=True)
    rows.append({"model": task.name, "macs": 1.0, "method": "original", "score": baseline})
    pm = onnxprune.load(original)
    name = pm.index.model.graph.input[0].name
    feeds = {name: task.calib}
    for fraction in fractions:
        rows_wanted = (("plain L1", "l1", False), ("scaled", "scaled", False), ("activation", "activation", False),
                       ("activation + reconstruct", "activation", True), ("L1 + reconstruct", "l1", True))
        if methods != "all":
            rows_wanted = [r for r in rows_wanted if r[0] in methods.split(",")]
        for label, criterion, reconstruct in rows_wanted:
            plan = pm.plan(criterion, feeds if criterion == "activation" else None, target_macs=fraction)
            t = time.perf_counter()
            result = pm.apply(plan, feeds if reconstruct else None, reconstruct=reconstruct)
            seconds = time.perf_counter() - t
            macs = result.after.macs / result.before.macs
            row = {"model": task.name, "macs": macs, "method": label, "score": task.score(result.model)}
            if reconstruct:
                rec = result.recovery
                row["reconstruct_s"] = rec.reconstruction.seconds
                row["ratio_to_pass"] = rec.reconstruction.seconds / t_pass
                row["dropped"] = rec.reconstructed is None
            print(_fmt_row(row), flush=True)
            rows.append(row)
            if reconstruct and criterion == "activation" and distill_minutes > 0:
                try:
                    model = distill(result.model, original, name, task.calib, distill_minutes)
                    row2 = {"model": task.name, "macs": macs, "method": f"activation + reconstruct + distill ({distill_minutes:g} min)",
                            "score": task.score(model)}
                except ImportError as exc:
                    row2 = {"model": task.name, "macs": macs, "method": f"distill skipped: {exc}", "score": float("nan")}
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
    parser.add_argument("--calib", type=int, default=256, help="calibration samples (rec: lines)")
    parser.add_argument("--eval", type=int, default=256, help="evaluation samples (rec: lines)")
    parser.add_argument("--distill-minutes", type=float, default=0, help="CPU minutes of distillation per row (0: none)")
    parser.add_argument("--methods", default="all", help="comma-separated row labels to run (default: all)")
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for key in args.models.split(","):
            task = Digits(args.calib, args.eval) if key == "digits" else Rec(args.calib, args.eval, folder)
            bench(task, fractions, args.distill_minutes, args.methods)


if __name__ == "__main__":
    main()
