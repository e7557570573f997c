"""All knowledge of individual ONNX ops lives in this package: one rule per op family.

Each rule (see base.OpRule) says how channel indices map between a node's inputs and outputs
(`couple`), whether an output channel is exactly zero when its inputs are (`zero`, for dead-channel
detection), what the node computes from constants and shape vectors (`fold`, `shape_entries`),
which inputs are weights (`weights`), what it costs (`macs`), and how to fix attributes and shape
constants after slicing (`rewrite`).  Ops without a rule pin every tensor they touch, so they are
never pruned through.  values.py is the one evaluator of constants and shape vectors; build.py makes
the nodes onnxprune inserts.
"""

from . import attention, conv, elementwise, layout, linear, norm, quantized, recurrent, spatial  # noqa: F401  (they fill the registry)
from .base import (BN_SCALE, IN, OUT, PARAM, Coupling, Dim, Edge, NodeContext, OpRule, RewriteContext, RewriteOptions, Role,
                   WeightSlot, ZeroView)
from .elementwise import is_alias
from .registry import REGISTRY, model_opset, op_label, register, rule_for

__all__ = ["BN_SCALE", "IN", "OUT", "PARAM", "Coupling", "Dim", "Edge", "NodeContext", "OpRule",
           "RewriteContext", "RewriteOptions", "Role", "WeightSlot", "ZeroView", "REGISTRY", "is_alias", "model_opset", "op_label", "register", "rule_for"]
