"""Hand-back of pruned transformers into their torch modules (README, "Hand-back to the origin
framework", Transformers): one table, every model and exporter measured in the same run.

    python scripts/bench_transformer_handback.py [--models hf_vit bert gpt2 llama vit] [--keep 0.5] [--seed 0]

For each tiny random-init model of tests/transformer_zoo.py under both torch exporters: export,
keep a random `--keep` fraction of every prunable group (heads, MLP width, Llama's residual
stream), prune the ONNX model, hand the plan back with `onnxprune.torch.apply_plan`, and report
heads per layer before -> after (from the module's attention attributes), parameters kept, the
largest difference between the module and the pruned ONNX relative to the output's range, and
that a training step runs.  A plan the module cannot take (heads of the timm-style ViT, whose code
reshapes to the input width; head_dim groups) is shown as refused and retried with every attention
group kept whole (MLP width and residual only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def heads_of(module) -> list[int]:
    counts = []
    for mod in module.modules():
        for attr in ("num_heads", "num_attention_heads"):
            if isinstance(getattr(mod, attr, None), int) and (hasattr(mod, "head_dim") or hasattr(mod, "attention_head_size")):
                counts.append(getattr(mod, attr))
                break
        else:
            if type(mod).__name__ == "LlamaAttention":
                counts.append(mod.q_proj.out_features // mod.head_dim)
    return counts


def reason(exc: Exception) -> str:
    """The refusal without the 'plan: <module>' prefix, cut to its first clause."""
    text = str(exc)
    for marker in ("the plan prunes within heads", "the sliced module does not run"):
        if marker in text:
            return marker
    return text[:60]


def measure(name: str, exporter: str, keep: float, seed: int) -> dict:
    import torch

    import onnxprune
    import transformer_zoo as tz
    from onnxprune.errors import InputError
    from onnxprune.runtime import make_session
    from onnxprune.torch import apply_plan

    module, example = tz.BUILDERS[name]()
    heads_before, params_before = heads_of(module), sum(p.numel() for p in module.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        model = onnxprune.load(tz.export(module, example, Path(tmp) / "m.onnx", exporter))
        plan = model.plan(ratio=0.0)
        rng = np.random.default_rng(seed)
        for gp in plan.groups:
            gp.keep = sorted(int(k) for k in rng.choice(gp.channels, size=max(1, round(gp.channels * keep)), replace=False))
        refused = ""
        start = time.perf_counter()
        try:
            apply_plan(module, plan, example)
        except InputError as exc:
            refused = reason(exc)
            for gp in plan.groups:  # keep every attention group (heads, head_dim) whole, hand back the rest
                if any(m.channel_of is not None for m in gp.members):
                    gp.keep = list(range(gp.channels))
            apply_plan(module, plan, example)
        seconds = time.perf_counter() - start
        pruned = model.apply(plan).model
    x = example[0].numpy()
    theirs = make_session(pruned).run(None, {pruned.graph.input[0].name: x})[0]
    module.eval()
    with torch.no_grad():
        ours = module(*example).numpy()
    module.train()
    module(*example).square().mean().backward()
    torch.optim.SGD(module.parameters(), lr=1e-3).step()
    return dict(heads=f"{heads_before} -> {heads_of(module)}", params=sum(p.numel() for p in module.parameters()) / params_before,
                diff=float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12)), seconds=seconds, refused=refused)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["hf_vit", "bert", "gpt2", "llama", "vit"])
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of every group's channels kept (random)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print("| model | exporter | heads per layer | params kept | max diff / max | apply_plan | refused first (then attention kept whole) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        for exporter in ("dynamo", "legacy"):
            r = measure(name, exporter, args.keep, args.seed)
            if "diff" not in r:
                print(f"| {name} | {exporter} | - | - | - | - | {r['refused']} |")
                continue
            print(f"| {name} | {exporter} | {r['heads']} | {r['params']:.1%} | {r['diff']:.1e} | {r['seconds']:.2f} s | "
                  f"{r['refused'] or '-'} |")


if __name__ == "__main__":
    main()
