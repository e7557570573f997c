"""An op rule is the one place that knows an op: no code outside onnxprune/ops/ compares op types
or names an op by its type string."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import onnxprune
from onnxprune.ops import REGISTRY

PACKAGE = Path(onnxprune.__file__).resolve().parent
OP_TYPE_TEST = re.compile(r"op_type\s*(==|!=|in\s|not\s+in\s)")


def _outside_ops() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if PACKAGE / "ops" not in p.parents]
    assert len(files) > 20  # the scan really covers the package
    return files


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_no_op_type_comparisons_outside_ops():
    offenders = [f"{p.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
                 for p in _outside_ops() for n, line in enumerate(p.read_text().splitlines(), 1) if OP_TYPE_TEST.search(line)]
    assert not offenders, "op types compared outside onnxprune/ops/:\n" + "\n".join(offenders)


def test_no_op_type_strings_outside_ops():
    op_types = {op for _, op in REGISTRY}
    assert {"Conv", "Gemm", "LSTM", "Shape", "Constant"} <= op_types
    offenders = []
    for path in _outside_ops():
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs and node.value in op_types:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not offenders, "op type strings outside onnxprune/ops/:\n" + "\n".join(offenders)


def test_the_scan_would_catch_a_leak(tmp_path):
    """The two checks above fail on code that does what they forbid."""
    leak = 'if node.op_type == "Conv":\n    pass\n'
    assert OP_TYPE_TEST.search(leak)
    assert any(isinstance(n, ast.Constant) and n.value == "Conv" for n in ast.walk(ast.parse(leak)))
