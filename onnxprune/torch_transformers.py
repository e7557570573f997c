"""Hand-back of pruned transformer layers (a part of `onnxprune.torch.apply_plan`).

Slicing the projections' weights is not enough for attention: the module's code reshapes with its
own head counts (`split_size` of GPT-2's fused `c_attn`, timm's `reshape(B, N, 3, num_heads,
head_dim)`, the `num_key_value_groups` that grouped-query attention repeats kv heads by), and the
model's config describes the widths for `save_pretrained` and for caches.  This module recognises
attention modules by their layout (duck-typed: transformers is never imported), works out which
whole heads a plan keeps, and writes the new counts into the module and the config.

Layers the generic slicing meets in transformers and handles here:
- GPT-2's `Conv1D` (weight `[in, out]`, attribute `nf`);
- `nn.Embedding` columns (the residual stream of Llama-style models);
- RMSNorm (HF `...RMSNorm` with `variance_epsilon`, `torch.nn.RMSNorm`): the pruned ONNX model
  divides the mean of squares by the original width (onnxprune/ops/rmsnorm.py), so the module's
  `eps` becomes eps / k and its weight w / sqrt(k), k = kept / original; the module then equals
  the ONNX model without any change to its code.

Only whole heads are handed back: a plan that keeps part of a head (a head_dim group, pruning q/k's
and v's head_dim separately) cannot be expressed in modules that have one head_dim for q, k and v,
and is refused with the module named.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import InputError

SEPARATE = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
"""Child names of separate q, k, v projections (Llama, Mistral, HF ViT; BERT, RoBERTa)."""
FUSED = ("qkv", "c_attn")
"""Child names of a fused q|k|v projection (timm, GPT-2)."""
HEAD_COUNT = ("num_heads", "num_attention_heads")
HEAD_DIM = ("head_dim", "attention_head_size")
WITHIN_HEADS = ("the plan prunes within heads (head_dim), which a module with one head_dim for q, k and v cannot "
                "take; keep the plan's head_dim groups whole, or prune whole heads (the head groups)")


def is_conv1d(mod: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D (GPT-2): a Linear with its weight stored `[in, out]`."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None \
        and mod.weight.dim() == 2


def is_rmsnorm(mod: nn.Module) -> bool:
    """An RMSNorm whose forward is w * x / sqrt(mean(x^2) + eps): torch's, or HF's Llama-family
    norm (`variance_epsilon`).  Gemma's `(1 + w)` norm names its epsilon `eps` and is not matched."""
    if isinstance(mod, getattr(nn, "RMSNorm", ())):
        return mod.weight is not None and len(mod.normalized_shape) == 1
    return type(mod).__name__.endswith("RMSNorm") and isinstance(getattr(mod, "variance_epsilon", None), float) \
        and isinstance(getattr(mod, "weight", None), torch.Tensor) and mod.weight.dim() == 1


def rmsnorm_eps(mod: nn.Module) -> float:
    if isinstance(mod, getattr(nn, "RMSNorm", ())):
        return mod.eps if mod.eps is not None else float(torch.finfo(mod.weight.dtype).eps)
    return mod.variance_epsilon


def rescaled_rmsnorm(mod: nn.Module, kept: np.ndarray) -> tuple[torch.Tensor, float]:
    """(weight, eps) of the RMSNorm over the kept channels that still divides by the original width."""
    k = len(kept) / mod.weight.shape[0]
    index = torch.as_tensor(kept, dtype=torch.long, device=mod.weight.device)
    weight = mod.weight.detach().index_select(0, index) / float(np.sqrt(k))
    return weight.clone(), rmsnorm_eps(mod) / k


def set_rmsnorm_eps(mod: nn.Module, eps: float, width: int) -> None:
    if isinstance(mod, getattr(nn, "RMSNorm", ())):
        mod.eps, mod.normalized_shape = eps, (width,)
    else:
        mod.variance_epsilon = eps


@dataclass(frozen=True)
class HeadCut:
    """The heads one attention module keeps (indices of the original query and kv heads)."""

    module: str
    head_dim: int
    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]


@dataclass(frozen=True)
class _Layout:
    projections: tuple[str, ...]   # q, k, v children, or the one fused child
    head_dim: int
    width: int                     # output width of the query projection (fused: of each part)


def _out_width(mod: nn.Module) -> int | None:
    if isinstance(mod, nn.Linear):
        return mod.out_features
    if is_conv1d(mod):
        return mod.nf
    return None


def _layout(att: nn.Module) -> _Layout | None:
    head_dim = next((getattr(att, a) for a in HEAD_DIM if isinstance(getattr(att, a, None), int)), None)
    if not head_dim:
        return None
    children = dict(att.named_children())
    for names in SEPARATE:
        widths = [_out_width(children[n]) if n in children else None for n in names]
        if all(widths) and all(w % head_dim == 0 for w in widths):
            return _Layout(names, head_dim, widths[0])
    for name in FUSED:
        width = _out_width(children[name]) if name in children else None
        if width and width % (3 * head_dim) == 0:
            return _Layout((name,), head_dim, width // 3)
    return None


def _whole_heads(kept: np.ndarray, head_dim: int, what: str) -> tuple[int, ...]:
    """The heads `kept` (element indices of a projection's output) consists of, refusing part heads."""
    if len(kept) % head_dim:
        raise InputError(f"plan: {what} keeps {len(kept)} channels, not whole heads of {head_dim}: {WITHIN_HEADS}")
    blocks = kept.reshape(-1, head_dim)
    heads = blocks[:, 0] // head_dim
    if not np.array_equal(blocks, heads[:, None] * head_dim + np.arange(head_dim)):
        raise InputError(f"plan: {what} keeps part of a head: {WITHIN_HEADS}")
    return tuple(int(h) for h in heads)


def plan_heads(model: nn.Module, kept_out: dict[str, np.ndarray]) -> list[HeadCut]:
    """The whole heads each attention module of `model` keeps, for the modules whose projections
    `kept_out` (module name -> kept output indices) cuts; InputError for a cut the module's code
    cannot follow (part heads, q and k/v keeping different heads, a query head separated from the
    kv group it reads)."""
    cuts = []
    for name, att in model.named_modules():
        layout = _layout(att)
        if layout is None:
            continue
        prefix = f"{name}." if name else ""
        paths = [prefix + p for p in layout.projections]
        if not any(p in kept_out for p in paths):
            continue
        d = layout.head_dim
        if len(paths) == 1:  # fused q|k|v: each part keeps the same heads
            kept = kept_out.get(paths[0], np.arange(3 * layout.width))
            parts = [kept[(kept >= i * layout.width) & (kept < (i + 1) * layout.width)] - i * layout.width for i in range(3)]
            q, k, v = (_whole_heads(part, d, f"'{paths[0]}' ({what})") for part, what in zip(parts, "qkv"))
            if not q == k == v:
                raise InputError(f"plan: the fused projection '{paths[0]}' keeps different heads of q, k and v "
                                 f"({list(q)}, {list(k)}, {list(v)}), which its module's equal split cannot take")
        else:
            full = [_out_width(dict(att.named_children())[p]) for p in layout.projections]
            q, k, v = (_whole_heads(kept_out.get(p, np.arange(w)), d, f"'{p}'") for p, w in zip(paths, full))
            if k != v:
                raise InputError(f"plan: '{paths[1]}' and '{paths[2]}' keep different heads; the module pairs them")
            rep = layout.width // full[1]  # query heads per kv head (grouped-query attention)
            if len(q) % max(len(k), 1) or [h // rep for h in q] != [g for g in k for _ in range(len(q) // len(k))]:
                raise InputError(f"plan: '{name}' would keep query heads {list(q)} with kv heads {list(k)}: a query "
                                 "head must stay with the kv group it reads, and every kv group keep as many")
        cuts.append(HeadCut(name, d, q, k))
    return cuts


def apply_heads(model: nn.Module, cuts: list[HeadCut]) -> None:
    """Write the kept head counts into the attention modules (their projections are sliced already)."""
    modules = dict(model.named_modules())
    for cut in cuts:
        att = modules[cut.module]
        heads, kv = len(cut.heads), len(cut.kv_heads)
        for attr in HEAD_COUNT:
            if isinstance(getattr(att, attr, None), int):
                setattr(att, attr, heads)
        if isinstance(getattr(att, "num_key_value_heads", None), int):
            att.num_key_value_heads = kv
        if isinstance(getattr(att, "num_key_value_groups", None), int):
            att.num_key_value_groups = heads // kv
        for attr in ("all_head_size", "split_size"):
            if isinstance(getattr(att, attr, None), int):
                setattr(att, attr, heads * cut.head_dim)


def _configs(model: nn.Module) -> list:
    """The distinct HF configs the model's modules hold (duck-typed: a `to_dict` method)."""
    seen: dict[int, object] = {}
    for mod in model.modules():
        config = getattr(mod, "config", None)
        if config is not None and callable(getattr(config, "to_dict", None)):
            seen.setdefault(id(config), config)
    return list(seen.values())


def _uniform(config, field: str, values: list[int]) -> None:
    """Set `config.field` to the one value every layer now has; warn when the layers differ (an HF
    config has one count for all layers: the module runs, the config cannot describe it)."""
    if len(set(values)) == 1:
        setattr(config, field, values[0])
    elif values:
        warnings.warn(f"onnxprune: layers now differ in {field} ({sorted(set(values))}); the model's config keeps "
                      f"{getattr(config, field)} (save the module itself, not save_pretrained)", stacklevel=5)


def _in_block(name: str) -> bool:
    """Whether a module sits in a repeated block (`layers.3.mlp.up_proj`, `h.0.mlp.c_fc`), which
    tells an MLP projection from an output head of the same width."""
    return any(part.isdigit() for part in name.split("."))


def update_configs(model: nn.Module, heads: list[HeadCut], widths: dict[str, tuple[int, int]],
                   rms_eps: list[float]) -> None:
    """Bring the HF config(s) in line with the sliced model: head counts (and head_dim, which BERT,
    ViT and GPT-2 otherwise derive from hidden_size / heads), the MLP width (of the projections in
    repeated blocks that output the config's intermediate size), the hidden size (the residual
    stream, from the embedding) and the RMSNorm epsilon.  `widths` maps every module whose outputs
    are sliced to its (original, new) output width."""
    modules = dict(model.named_modules())
    by_module = {c.module: c for c in heads}
    layouts = {name: _layout(att) for name, att in modules.items()}
    attentions = [name for name, layout in layouts.items() if layout is not None]
    projections = {f"{name}.{p}" if name else p for name in attentions for p in layouts[name].projections}
    for config in _configs(model):
        if heads and getattr(config, "num_attention_heads", None):
            _uniform(config, "num_attention_heads",
                     [len(by_module[n].heads) if n in by_module else config.num_attention_heads for n in attentions])
            if getattr(config, "num_key_value_heads", None):
                _uniform(config, "num_key_value_heads",
                         [len(by_module[n].kv_heads) if n in by_module else config.num_key_value_heads for n in attentions])
            if getattr(config, "head_dim", None) is None:
                config.head_dim = heads[0].head_dim
        hidden = getattr(config, "hidden_size", None)
        field = "intermediate_size" if getattr(config, "intermediate_size", None) else "n_inner"
        inner = getattr(config, field, None) or (4 * hidden if field == "n_inner" and hidden else None)
        if inner:
            original = {n: widths[n][0] if n in widths else _out_width(m) for n, m in modules.items() if _in_block(n)}
            mlp = [n for n, w in original.items() if w == inner and n not in projections]
            if any(n in widths for n in mlp):
                _uniform(config, field, [widths[n][1] if n in widths else inner for n in mlp])
        embedded = [after for name, (before, after) in widths.items()
                    if before == hidden != after and isinstance(modules[name], nn.Embedding)]
        if embedded:
            _uniform(config, "hidden_size", embedded)
        if rms_eps and getattr(config, "rms_norm_eps", None) is not None and max(rms_eps) - min(rms_eps) <= 1e-12 * max(rms_eps):
            config.rms_norm_eps = rms_eps[0]
