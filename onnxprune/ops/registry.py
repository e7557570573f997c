"""The op-rule registry: op type -> rule.  Supporting a new op is one `@register` entry plus a test."""

from __future__ import annotations

import onnx

from .base import OpRule

REGISTRY: dict[str, OpRule] = {}
UNKNOWN = OpRule()


def register(*op_types: str):
    """Class decorator: instantiate the rule once and file it under each op type."""

    def wrap(cls: type[OpRule]) -> type[OpRule]:
        rule = cls()
        for op_type in op_types:
            if op_type in REGISTRY:
                raise RuntimeError(f"op rule for {op_type} registered twice")
            REGISTRY[op_type] = rule
        return cls

    return wrap


def rule_for(node: onnx.NodeProto) -> OpRule:
    """The rule for `node`; custom-domain ops get the pin-everything rule."""
    if node.domain not in ("", "ai.onnx"):
        return UNKNOWN
    return REGISTRY.get(node.op_type, UNKNOWN)
