"""Shared by the fixture generators (make_tf_fixtures.py, make_paddle_fixtures.py): the checks
every committed real-framework export must pass before it is written into tests/fixtures/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def verify_fixture(path: Path, cases: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Full onnx.checker, then onnxruntime reproduces the framework's outputs at every batch size."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for x, expected in cases:
        (got,) = session.run(None, {name: x})
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    print(f"{path.name}: {path.stat().st_size} bytes, {len(proto.graph.node)} nodes, "
          f"verified batch {', '.join(str(len(x)) for x, _ in cases)}")
