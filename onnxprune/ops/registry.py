"""The op-rule registry: (domain, op type) -> rules by opset range.  Supporting a new op is one
`@register` entry plus a test row.

A rule is filed for an opset range (onnxslim's `register_fusion_pattern(min_opset, max_opset)`
idea): when an op's semantics change between opsets in a way a rule does not handle, the rule
says so by its range, and a node outside every range gets the pin-everything rule."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .base import OpRule

DEFAULT_DOMAINS = ("", "ai.onnx")
ANY_OPSET = (1, 10_000)


@dataclass(frozen=True)
class Registered:
    rule: OpRule
    min_opset: int
    max_opset: int


REGISTRY: dict[tuple[str, str], list[Registered]] = {}
UNKNOWN = OpRule()


def register(*op_types: str, domain: str = "", min_opset: int = ANY_OPSET[0], max_opset: int = ANY_OPSET[1]):
    """Class decorator: instantiate the rule once and file it under each op type for the opsets
    [min_opset, max_opset] of `domain` (the default ONNX domain unless given)."""

    def wrap(cls: type[OpRule]) -> type[OpRule]:
        rule = cls()
        for op_type in op_types:
            entries = REGISTRY.setdefault((domain, op_type), [])
            if any(e.min_opset <= max_opset and min_opset <= e.max_opset for e in entries):
                raise RuntimeError(f"op rule for {op_type} registered twice for overlapping opsets")
            entries.append(Registered(rule, min_opset, max_opset))
        return cls

    return wrap


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in DEFAULT_DOMAINS else node.domain


def rule_for(node: onnx.NodeProto, opset: int) -> OpRule:
    """The rule for `node` in a model of default-domain `opset`; ops without a rule for that
    opset, custom-domain ops without a rule included, get the pin-everything rule."""
    for entry in REGISTRY.get((_domain(node), node.op_type), ()):
        if entry.min_opset <= opset <= entry.max_opset:
            return entry.rule
    return UNKNOWN


def is_known(node: onnx.NodeProto) -> bool:
    """A rule exists for this op (in some opset)."""
    return (_domain(node), node.op_type) in REGISTRY


def op_label(node: onnx.NodeProto) -> str:
    """'Conv', or 'com.example::Mystery' for a custom-domain op."""
    domain = _domain(node)
    return f"{domain}::{node.op_type}" if domain else node.op_type


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset a model imports."""
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    return 1
