"""The README's Quick-start install path, without torch: a fresh venv, `pip install` of this
repository (its declared dependencies only), then inspect, prune and quantize the sample model.

The test install brings torch, and torch brings sympy, networkx and more; so a dependency that only
torch provides (sympy, for onnxruntime's quantization tools) would pass every other test and still
crash a user's first `onnxprune quantize`.  This test is the one place that sees that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_install_without_torch(tmp_path):
    source = tmp_path / "src"  # a clean copy: no build folders or egg-info of the developer's checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__", "out"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)], capture_output=True, text=True,
                             env=env, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, env=env)
    assert probe.stdout.strip() == "True", "torch came with the plain install; this test would hide missing dependencies"
    exe = env_dir / "bin" / "onnxprune"
    model, calib = source / "models" / "digits_cnn.onnx", source / "models" / "digits_calib.npz"
    commands = [
        ["inspect", model],
        ["prune", model, "-o", tmp_path / "pruned.onnx", "--target-macs", "0.5", "--round-to", "8", "--data", calib],
        ["quantize", tmp_path / "pruned.onnx", "-o", tmp_path / "int8.onnx", "--data", calib, "--runs", "3"],
    ]
    for command in commands:
        run = subprocess.run([str(exe), *map(str, command)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert run.returncode == 0, f"{command[0]}: {run.stderr[-2000:]}"
    assert (tmp_path / "int8.onnx").is_file()
