"""Shared by the benchmark scripts: the benchmark models, exported once into a work folder."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ensure_exported(workdir: Path, name: str, exporter: str) -> Path:
    """Export a tests/zoo.py benchmark model once; later runs reuse the file."""
    path = Path(workdir) / f"{name}_{exporter}.onnx"
    if not path.is_file():
        sys.path.insert(0, str(REPO / "tests"))
        import zoo  # noqa: PLC0415 - torch is only needed when a model must be exported

        module, inputs = zoo.BENCH_MODELS[name]()
        zoo.export(module, inputs, path, exporter)
    return path
