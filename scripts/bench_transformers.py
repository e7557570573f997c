"""Transformers on ONNX (README, "Transformers"): what prunes, before and after the attention rules.

    python scripts/bench_transformers.py [--models vit bert gpt2 llama] [--ratio 0.3] [--before 0324630]

For each tiny random-init model of tests/transformer_zoo.py (timm-style ViT, HF BERT, GPT-2,
Llama with grouped-query attention) under both torch exporters, side by side in one run:
- prunable MACs with onnxprune at git commit `--before` (extracted into a temp dir, run in a
  subprocess: "crash" when it fails) and with this checkout;
- attention heads before and after `prune --ratio R` (heads counted on the pruned model: the head
  axis of every attention Softmax), the MACs kept, the output drift on valid token ids, and the time load + plan + apply took;
- the blocked reason covering the most MACs;
- Torch-Pruning (if installed) on the same torch module: MetaPruner, L1 magnitude, the same ratio
  for channels and heads, in a subprocess with a time limit; its MACs kept, heads left, and whether
  the pruned module still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import transformer_zoo as tz  # noqa: E402

INSPECT = """
import json, sys, onnxprune
info = onnxprune.load(sys.argv[1]).inspect()
print(json.dumps({"prunable_macs": info["prunable_macs"]}))
"""

TORCH_PRUNING = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch, torch_pruning as tp, transformer_zoo as tz
module, inputs = tz.MODELS[sys.argv[2]]()
ratio = float(sys.argv[3])
heads, ignored, queries = {}, [], []
for m in module.modules():
    cfg = getattr(m, "config", None)
    for q, k, v in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj")):
        if hasattr(m, q) and hasattr(m, k):
            h = getattr(m, "num_attention_heads", None) or getattr(cfg, "num_attention_heads", None)
            kv = getattr(cfg, "num_key_value_heads", None) or h
            heads[getattr(m, q)], heads[getattr(m, k)], heads[getattr(m, v)] = h, kv, kv
            queries.append((getattr(m, q), getattr(m, q).out_features // h))
    if hasattr(m, "qkv") and hasattr(m, "num_heads"):
        heads[m.qkv] = m.num_heads
        queries.append((m.qkv, m.qkv.out_features // (3 * m.num_heads)))
    if hasattr(m, "c_attn") and hasattr(m, "num_heads"):  # GPT-2's Conv1D
        queries.append((m.c_attn, m.c_attn.weight.shape[1] // (3 * m.num_heads)))
    if hasattr(m, "lm_head"):
        ignored.append(m.lm_head)
    if hasattr(m, "head") and isinstance(m.head, torch.nn.Linear):
        ignored.append(m.head)
def count_heads():
    total = 0
    for layer, dim in queries:
        width = layer.out_features if hasattr(layer, "out_features") else layer.weight.shape[1]
        total += width // dim // (3 if layer.__class__.__name__ == "Conv1D" or hasattr(module, "blocks") else 1)
    return total
heads_before = count_heads()
before, _ = tp.utils.count_ops_and_params(module, inputs)
start = time.perf_counter()
pruner = tp.pruner.MetaPruner(module, inputs, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                              num_heads=heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
                              ignored_layers=ignored)
pruner.step()
seconds = time.perf_counter() - start
after, _ = tp.utils.count_ops_and_params(module, inputs)
try:
    with torch.no_grad():
        module(*inputs)
    runs = "yes"
except Exception as e:
    runs = "no: " + type(e).__name__
print(json.dumps({"macs_kept": after / before, "heads_left": count_heads(), "heads_before": heads_before,
                  "seconds": seconds, "runs": runs}))
"""


def extract(commit: str, into: Path) -> Path:
    """The onnxprune package as of `commit`, unpacked into `into`."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", commit, "onnxprune"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_json(code: str, args: list[str], pythonpath: Path, timeout: float) -> dict | str:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=pythonpath)
    except subprocess.TimeoutExpired:
        return f"timeout ({timeout:.0f} s)"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return "crash: " + tail[:80]
    return json.loads(lines[-1])


def attention_heads(model) -> int:
    """Heads of every attention layer: the head axis of each attention Softmax ([batch, heads, N, N])."""
    from onnxprune.graph import ModelIndex
    from onnxprune.ops import NodeContext
    from onnxprune.ops.spatial import SoftmaxRule

    index = ModelIndex.build(model)
    total = 0
    for i in range(len(model.graph.node)):
        ctx = NodeContext(index, i)
        out = ctx.out_shape(0)
        if isinstance(ctx.rule, SoftmaxRule) and out and len(out) == 4 and isinstance(out[1], int):
            total += out[1]
    return total


def top_blocked(model) -> str:
    info = model.inspect()
    macs = {layer["node"]: layer["macs"] for layer in info["layers"]}
    by_reason = Counter()
    for g in info["groups"]:
        if not g["prunable"] and g["blocked"]:
            by_reason[re.sub(r"'[^']*'", "X", g["blocked"])] += sum(macs.get(n, 0) for n in g["layers"])
    return by_reason.most_common(1)[0][0] if by_reason else "-"


def drift(original, pruned) -> float:
    """max |y - y'| / max |y| on valid inputs (token ids below the vocabulary, batch 2)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    vi = original.graph.input[0]
    if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
        feeds = {vi.name: rng.integers(0, tz.VOCAB, (2, tz.SEQ)).astype(np.int64)}
    else:
        feeds = {vi.name: rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for m in (original, pruned))
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def export(cache: Path, name: str, exporter: str) -> Path:
    path = cache / f"{name}_{exporter}.onnx"
    if not path.exists():
        module, inputs = tz.MODELS[name]()
        tz.export(module, inputs, path, exporter)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(tz.MODELS))
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--before", default="0324630", help="git commit to compare against")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "onnxprune_bench_transformers"))
    parser.add_argument("--tp-timeout", type=float, default=120.0, help="seconds Torch-Pruning gets per model")
    args = parser.parse_args()
    import onnxprune

    cache = Path(args.workdir)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        old = extract(args.before, Path(tmp))
        rows, tp_rows = [], {}
        for name in args.models:
            for exporter in tz.EXPORTERS:
                path = export(cache, name, exporter)
                before = run_json(INSPECT, [str(path)], old, 600)
                start = time.perf_counter()
                model = onnxprune.load(path)
                result = model.prune(ratio=args.ratio)
                seconds = time.perf_counter() - start
                after = model.inspect()["prunable_macs"]
                heads = (attention_heads(model.model), attention_heads(result.model))
                rows.append((name, exporter, before, after, heads, result.after.macs / result.before.macs,
                             drift(model.model, result.model), seconds, top_blocked(model)))
            try:
                import torch_pruning  # noqa: F401

                tp_rows[name] = run_json(TORCH_PRUNING, [str(REPO / "tests"), name, str(args.ratio)], REPO, args.tp_timeout)
            except ImportError:
                tp_rows[name] = "not installed"
    print(f"onnxprune, `--ratio {args.ratio}` (l1), prunable MACs at {args.before} vs now:\n")
    print("| model | exporter | prunable MACs before | after | heads before -> after | MACs kept | drift | time | largest blocked reason |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, exporter, before, after, heads, kept, error, seconds, reason in rows:
        was = f"{before['prunable_macs']:.1%}" if isinstance(before, dict) else before
        print(f"| {name} | {exporter} | {was} | {after:.1%} | {heads[0]} -> {heads[1]} | {kept:.1%} | {error:.3g} | "
              f"{seconds:.1f} s | {reason[:90]} |")
    print(f"\nTorch-Pruning on the same torch modules (MetaPruner, L1, ratio {args.ratio} for channels and heads):\n")
    print("| model | MACs kept | heads before -> after | time | pruned module runs |")
    print("|---|---|---|---|---|")
    for name, figures in tp_rows.items():
        if isinstance(figures, dict):
            print(f"| {name} | {figures['macs_kept']:.1%} | {figures['heads_before']} -> {figures['heads_left']} | "
                  f"{figures['seconds']:.1f} s | {figures['runs']} |")
        else:
            print(f"| {name} | {figures} | | | |")


if __name__ == "__main__":
    main()
