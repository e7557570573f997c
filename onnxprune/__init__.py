"""onnxprune: exact channel pruning of exported ONNX models.

Pipeline, one module per stage: load -> graph (index) -> depgraph -> groups -> importance ->
allocation -> plan -> surgery -> verify/save.  All op knowledge lives in `onnxprune.ops`.

The public names are imported on first use (PEP 562): `import onnxprune` alone, and the command
line's `--help`, must not pay for onnx, onnxruntime and networkx (about a second of imports).
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {"AllocationOptions": "allocation", "InputError": "errors", "OnnxPruneError": "errors", "Plan": "plan",
            "PrunableModel": "api", "PruneResult": "api", "load": "api", "save": "api",
            "SparsifyResult": "sparsity", "SparsityOptions": "sparsity", "sparsify": "sparsity"}

__all__ = sorted(_EXPORTS) + ["__version__"]


def _export(name: str):
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


class _Package(types.ModuleType):
    """`onnxprune.load` and `onnxprune.save` name both API functions and submodules (load.py,
    save.py).  Importing a submodule binds it as an attribute of the package, which would hide
    the function once the API is imported lazily; as properties, the functions always win (the
    submodules stay reachable with `from onnxprune.load import ...`)."""

    load = property(lambda self: _export("load"), lambda self, value: None)
    save = property(lambda self: _export("save"), lambda self, value: None)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
    value = _export(name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


sys.modules[__name__].__class__ = _Package
