"""All knowledge of individual ONNX ops lives in this package: one rule per op family.

Each rule says how channel indices map between a node's inputs and outputs (`couple`), whether an
output channel is exactly zero when its inputs are (`zero`, for dead-channel detection), and how to
fix attributes and shape constants after slicing (`rewrite`).  Ops without a rule pin every tensor
they touch, so they are never pruned through.
"""

from . import conv, elementwise, layout, linear, norm, spatial  # noqa: F401  (they fill the registry)
from .base import BN_SCALE, IN, OUT, PARAM, Coupling, Dim, Edge, NodeContext, OpRule, RewriteContext, ZeroView
from .elementwise import is_alias
from .registry import REGISTRY, register, rule_for

__all__ = ["BN_SCALE", "IN", "OUT", "PARAM", "Coupling", "Dim", "Edge", "NodeContext", "OpRule",
           "RewriteContext", "ZeroView", "REGISTRY", "is_alias", "register", "rule_for"]
