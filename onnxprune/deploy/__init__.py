"""Deployment helpers after pruning: ncnn export (pnnx + ncnn), onnxslim simplification,
onnxruntime static quantization and side-by-side latency benchmarks.

pnnx, ncnn and onnxslim are optional extras (`pip install 'onnxprune[deploy]'`): onnxprune imports
and prunes without them, and each command that needs one says which package to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import InputError


def require(module: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or fail with one line saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module
        raise InputError(f"{purpose} needs the optional package '{package}' "
                         f"(pip install {package}, or pip install 'onnxprune[deploy]')") from None
