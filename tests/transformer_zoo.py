"""Tiny random-init transformers for tests and benchmarks: a timm-style ViT, HF BERT, GPT-2 and a
Llama with grouped-query attention, built from small configs (no downloads), and their exports with
both torch exporters.

The ViT is written here in plain torch with timm's attention code (fused qkv Linear, `reshape(B, N,
3, H, D).permute(2, 0, 3, 1, 4).unbind(0)`, `F.scaled_dot_product_attention`): timm itself imports
torchvision, which has no CPU build for torch 2.13 on this machine.  Kept independent of onnxprune.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo import _quiet

SEQ = 8
VOCAB = 96
EXPORTERS = ("dynamo", "legacy")


class Attention(nn.Module):
    """timm.models.vision_transformer.Attention (fused qkv, SDPA)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """timm VisionTransformer: conv patch embedding, class token, learned positions, pre-norm blocks."""

    def __init__(self, dim: int = 48, heads: int = 3, depth: int = 2, patch: int = 8, image: int = 32, classes: int = 10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, dim * 2) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class TextModel(nn.Module):
    """An HF model called with input_ids only, returning one tensor (logits or the last hidden state)."""

    def __init__(self, model: nn.Module, logits: bool) -> None:
        super().__init__()
        self.model, self.logits = model, logits

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # An explicit all-ones mask: without one, transformers 5 looks for packed sequences with
        # aten::diff, which the legacy exporter cannot export.
        mask = torch.ones_like(input_ids)
        if self.logits:
            out = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        else:
            out = self.model(input_ids=input_ids, attention_mask=mask)
        return out.logits if self.logits else out.last_hidden_state


def _ids() -> tuple[torch.Tensor]:
    return (torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0)),)


def build_vit():
    torch.manual_seed(0)
    return ViT().eval(), (torch.randn(2, 3, 32, 32),)


def build_bert():
    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=SEQ * 2, attn_implementation="sdpa")
    return TextModel(T.BertModel(config, add_pooling_layer=False).eval(), logits=False).eval(), _ids()


def build_gpt2():
    import transformers as T

    torch.manual_seed(0)
    config = T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=SEQ * 2,
                          bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
    return TextModel(T.GPT2LMHeadModel(config).eval(), logits=True).eval(), _ids()


def build_llama():
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=96, max_position_embeddings=SEQ * 2,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="sdpa")
    model = T.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random-init RMSNorm weights are ones: make them non-trivial
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    return TextModel(model, logits=True).eval(), _ids()


class ImageModel(nn.Module):
    """An HF image classifier called with pixel values only, returning its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def build_hf_vit():
    """HF transformers' ViT (separate q, k, v projections; `num_attention_heads`, `head_dim`), the
    same sizes as `build_vit`.  Not in MODELS: the hand-back tests use it beside the timm-style one."""
    import transformers as T

    torch.manual_seed(0)
    config = T.ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                         intermediate_size=96, num_labels=10, attn_implementation="sdpa")
    return ImageModel(T.ViTForImageClassification(config).eval()).eval(), (torch.randn(2, 3, 32, 32),)


MODELS: dict[str, Callable] = {"vit": build_vit, "bert": build_bert, "gpt2": build_gpt2, "llama": build_llama}
BUILDERS: dict[str, Callable] = {**MODELS, "hf_vit": build_hf_vit}
"""MODELS and the models only some tests use."""


def export(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | pathlib.Path, exporter: str) -> pathlib.Path:
    """Export with input "x" (images) or "input_ids" (text), output "y", a dynamic batch axis."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = "input_ids" if inputs[0].dtype == torch.int64 else "x"
    common = dict(input_names=[name], output_names=["y"], verbose=False)
    with _quiet(), torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(module, inputs, str(path), dynamo=True, optimize=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **common)
        elif exporter == "legacy":
            torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=17, do_constant_folding=True,
                              dynamic_axes={name: {0: "batch"}, "y": {0: "batch"}}, **common)
        else:
            raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    return path
