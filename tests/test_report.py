"""`onnxprune report`: a self-contained HTML page, checked as HTML and rendered in a real headless
browser (Debian's chromium) when one is installed.

The browser test runs when `chromium` (or `chromium-browser`) is on PATH; without one it is
skipped, and fails instead when ONNXPRUNE_REQUIRE_BROWSER=1 (CI installs chromium and sets it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from onnxprune.sensitivity import Sensitivity, group_colours, group_label

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
LAYERS = ("features.0", "features.3", "features.7", "head.1", "head.3")


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A plan from a (short) sensitivity analysis of the digits CNN, and the report of it."""
    tmp = tmp_path_factory.mktemp("report")
    sens = tmp / "sens.json"
    assert run_cli("sensitivity", SAMPLE, "--data", CALIB, "--ratios", "0.25,0.5,0.75", "-o", sens).returncode == 0
    out = run_cli("prune", SAMPLE, "-o", tmp / "pruned.onnx", "--sensitivity", sens, "--target-macs", "0.5",
                  "--plan-out", tmp / "plan.json")
    assert out.returncode == 0, out.stderr
    report = tmp / "report.html"
    out = run_cli("report", SAMPLE, tmp / "pruned.onnx", "--plan", tmp / "plan.json", "--sensitivity", sens,
                  "--data", CALIB, "--runs", "5", "-o", report, "--png-dir", tmp / "png")
    assert out.returncode == 0, out.stderr
    return {"dir": tmp, "sens": sens, "plan": tmp / "plan.json", "report": report}


class Checker(HTMLParser):
    """Collects tags, text and attribute values; fails on unbalanced non-void tags."""

    VOID = {"meta", "br", "img", "rect", "line", "circle", "polyline", "path", "input", "link", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(v or "" for _, v in attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(v or "" for _, v in attrs)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_report_html_is_self_contained_and_names_the_layers(made):
    page = made["report"].read_text()
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors and checker.stack == [], (checker.errors, checker.stack)
    text = " ".join(checker.text)
    for layer in LAYERS:
        assert layer in text, layer
    assert not re.search(r"https?://", page), "the page refers to the network"
    assert "script" not in checker.tags and "link" not in checker.tags and "img" not in checker.tags
    assert checker.tags.count("svg") == 2  # channels per layer, sensitivity curves
    for heading in ("Summary", "Quality on the data", "Channels per layer before and after", "Groups", "Sensitivity"):
        assert heading in text
    assert "graph input 'x'" in text and "graph output 'logits'" in text  # why the blocked groups are blocked
    plan = json.loads(made["plan"].read_text())
    for group in plan["groups"]:  # channels kept per group, as the plan says
        kept = len(group["keep"])
        assert f"{kept} ({kept / group['channels']:.0%})" in text
    assert re.search(r"accuracy \(labels in the data\)", text) and "99.44%" in text
    assert re.search(r"\d\.\d{3} ms", text)  # measured latency


def test_png_dir_holds_the_same_figures(made):
    from PIL import Image

    for name in ("channels.png", "sensitivity.png"):
        image = Image.open(made["dir"] / "png" / name)
        assert image.format == "PNG" and image.size[0] > 500
        assert len(set(image.convert("RGB").getdata())) > 50, f"{name} is nearly blank"


def test_report_of_the_plan_alone_applies_it_in_memory(made, tmp_path: Path):
    out = run_cli("report", SAMPLE, "--plan", made["plan"], "--runs", "3", "-o", tmp_path / "r.html")
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "r.html").read_text()
    assert "applied to digits_cnn.onnx" in page and "\u2192" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_report_without_matplotlib_still_works_and_png_dir_is_refused(tmp_path: Path):
    """matplotlib made unimportable: the page is written; --png-dir is refused at the start (exit 2)."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('matplotlib blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = run_cli("report", SAMPLE, "--runs", "3", "-o", tmp_path / "r.html", env=env)
    assert out.returncode == 0, out.stderr
    assert "features.7" in (tmp_path / "r.html").read_text()
    out = run_cli("report", SAMPLE, "--runs", "3", "-o", tmp_path / "s.html", "--png-dir", tmp_path / "png", env=env)
    assert out.returncode == 2 and "--png-dir needs matplotlib" in out.stderr
    assert not (tmp_path / "s.html").exists() and not (tmp_path / "png").exists()


def test_sensitivity_colours_stay_distinct_beyond_ten_groups_and_labels_are_origin_names(made):
    for n in (4, 10, 11, 25, 60):
        colours = group_colours(n)
        assert len(set(colours)) == n
    sens = Sensitivity.read(made["sens"])
    labels = [group_label(sens, g) for g in sorted(sens.groups)]
    assert labels[0] == "features.0, features.3 (32 ch)", labels
    assert not any(label.startswith("group ") for label in labels)


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_a_headless_browser(made, tmp_path: Path):
    browser = _browser()
    if browser is None:
        if os.environ.get("ONNXPRUNE_REQUIRE_BROWSER") == "1":
            pytest.fail("ONNXPRUNE_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install -y chromium)")
        pytest.skip("no chromium on PATH (set ONNXPRUNE_REQUIRE_BROWSER=1 to make this a failure)")
    from PIL import Image

    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2000",
                               made["report"].resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    pixels = np.asarray(image).reshape(-1, 3)
    colours = {tuple(p) for p in pixels[:: 7]}
    non_white = float(np.mean(np.any(pixels < 240, axis=1)))
    assert len(colours) > 200, f"only {len(colours)} distinct colours: blank or unstyled page"
    assert non_white > 0.05, f"only {non_white:.1%} of the page is not white"
    # the bar chart's blue and the sensitivity curves' tab10 colours are on the page
    for colour in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
        assert np.any(np.all(np.abs(pixels.astype(int) - colour) <= 6, axis=1)), f"colour {colour} not rendered"
