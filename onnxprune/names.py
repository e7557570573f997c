"""Names the command line offers before anything heavy is imported.

`onnxprune --help` must not import onnx, onnxruntime or networkx, so the choices of
`--criterion` live here; `onnxprune.importance.CRITERIA` holds the functions under the same names
(tests/test_startup.py checks that the two agree).
"""

from __future__ import annotations

CRITERION_NAMES = ("l1", "l2", "bn", "fpgm", "lamp", "random", "scaled")
"""Weight-based criteria (onnxprune.importance.CRITERIA)."""

DATA_CRITERION_NAMES = ("activation", "apoz", "wanda", "thinet")
"""Criteria measured with onnxruntime on calibration data."""
