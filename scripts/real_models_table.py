"""The README table of the real-model corpus (tests/realmodels.py) and what blocks pruning in each.

For every model that ships inside an installed PyPI package: the package version, source framework
and exporter, node count (subgraphs included), parameters, MACs and the prunable share of MACs as
`onnxprune inspect` reports them, and the wall time of `inspect` and of `prune --threshold 0`
(in-process, one run each, on this shared 2-core machine: for scale only).  Then, per model, the
patterns that block pruning, ranked by the MACs of the layers in the groups they block.

    python scripts/real_models_table.py            # markdown to stdout
    python scripts/real_models_table.py --json     # the figures as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import realmodels  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.cli import main as cli_main  # noqa: E402


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes of the graph and of every subgraph (If branches, Loop bodies)."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                total += count_nodes(sub)
    return total


def pattern(reason: str) -> str:
    """A block reason without the names of nodes and tensors, so that reasons group by pattern."""
    return re.sub(r"\s+'[^']*'", "", reason).strip()


def blocked_by_pattern(info: dict) -> list[tuple[str, float]]:
    """(pattern, share of the model's MACs in layers of groups it blocks), largest first; a layer
    counts once per pattern."""
    macs = {layer["node"]: layer["macs"] for layer in info["layers"]}  # (at the size it runs at)
    layers_of: dict[str, set[str]] = defaultdict(set)
    for group in info["groups"]:
        if not group["prunable"]:
            layers_of[pattern(group["blocked"] or "")].update(group["layers"])
    total = max(info["macs"], 1)
    shares = [(p, sum(macs.get(n, 0) for n in nodes) / total) for p, nodes in layers_of.items()]
    return sorted(shares, key=lambda s: -s[1])


def measure(name: str) -> dict | None:
    path = realmodels.locate(name)
    if path is None:
        return None
    model = realmodels.MODELS[name]
    start = time.perf_counter()
    info = onnxprune.load(path).inspect()
    inspect_s = time.perf_counter() - start
    from onnxprune.inputs import parse_input_shapes

    real = onnxprune.load(path, parse_input_shapes(list(model.real_size))).inspect() if model.real_size else info
    with tempfile.TemporaryDirectory() as tmp:
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["prune", str(path), "-o", str(Path(tmp) / "p.onnx"), "--threshold", "0", "--json"])
        prune_s = time.perf_counter() - start
    pruned = json.loads(out.getvalue()) if code == 0 else None
    proto = onnx.load(str(path), load_external_data=False)
    return {"model": name, "package": f"{model.distribution} {importlib.metadata.version(model.distribution)}",
            "exporter": model.exporter, "file": model.path, "nodes": count_nodes(proto.graph),
            "params": info["params"], "macs": info["macs"], "prunable_macs": info["prunable_macs"],
            "real_size": " ".join(model.real_size) or "fixed", "real_macs": real["macs"], "real_prunable_macs": real["prunable_macs"],
            "inspect_s": inspect_s, "prune_t0_s": prune_s, "prune_t0_exit": code,
            "dead_channels": pruned["channels_removed"] if pruned else None,
            "prune_t0_error": None if pruned else err.getvalue().strip(), "blocked": blocked_by_pattern(real)}


def fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| model | package | source (exporter) | nodes | params | MACs (dynamic as 1) | size it runs at | MACs there | "
             "prunable MACs there | inspect | prune --threshold 0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        prune = f"{r['prune_t0_s']:.1f} s ({r['dead_channels']} dead)" if r["prune_t0_exit"] == 0 else f"exit {r['prune_t0_exit']}"
        lines.append(f"| {r['model']} | {r['package']} | {r['exporter']} | {r['nodes']} | {fmt(r['params'])} | {fmt(r['macs'])} "
                     f"| {r['real_size']} | {fmt(r['real_macs'])} | {r['real_prunable_macs']:.1%} | {r['inspect_s']:.1f} s | {prune} |")
    lines += ["", "What blocks pruning (share of the model's MACs in the layers of the groups each pattern blocks; top 3):", ""]
    for r in rows:
        top = "; ".join(f"{p} ({s:.1%})" for p, s in r["blocked"][:3] if s > 0) or "nothing with MACs"
        lines.append(f"- {r['model']}: {top}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    rows = [r for r in (measure(name) for name in realmodels.MODELS) if r is not None]
    missing = [n for n in realmodels.MODELS if realmodels.locate(n) is None]
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    if missing:
        print(f"\nnot installed (pip install '.[test]'): {', '.join(missing)}", file=sys.stderr)


if __name__ == "__main__":
    main()
