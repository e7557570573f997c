"""onnxprune: exact channel pruning of exported ONNX models.

Pipeline, one module per stage: load -> graph (index) -> depgraph -> groups -> importance ->
allocation -> plan -> surgery -> verify/save.  All op knowledge lives in `onnxprune.ops`.
"""

from .allocation import AllocationOptions
from .api import PrunableModel, PruneResult, load, save
from .errors import InputError, OnnxPruneError
from .plan import Plan
from .sparsity import SparsifyResult, SparsityOptions, sparsify

__version__ = "0.1.0"

__all__ = ["AllocationOptions", "InputError", "OnnxPruneError", "Plan", "PrunableModel", "PruneResult",
           "SparsifyResult", "SparsityOptions", "load", "save", "sparsify", "__version__"]
