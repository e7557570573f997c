"""Hand-back of pruned heads, MLP width and the RMSNorm residual stream into HF transformers
modules (`onnxprune.torch.apply_plan`): the sliced module equals the pruned ONNX model within 1e-5
at two batch sizes, trains (forward, backward, an optimizer step), and its attention attributes and
config describe the new widths.  Tiny random-init models from tests/transformer_zoo.py; exports
cached like test_transformers' (ONNXPRUNE_TEST_CACHE)."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

pytest.importorskip("transformers")

import torch  # noqa: E402

import onnxprune  # noqa: E402
import transformer_zoo as tz  # noqa: E402
from onnxprune.errors import InputError  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402
from onnxprune.torch import apply_plan  # noqa: E402
from onnxprune.torch_transformers import plan_heads  # noqa: E402
from test_transformers import exports  # noqa: E402,F401  (the cached-export fixture)

RTOL = 1e-5
HEADS = {"hf_vit": (3, 3), "bert": (4, 4), "gpt2": (4, 4), "llama": (4, 2)}
"""Query heads and kv heads per layer of each model."""
MLP = {"hf_vit": 96, "bert": 64, "gpt2": 128, "llama": 96}
"""MLP width of each model."""


def random_keep(plan: onnxprune.Plan, seed: int, whole=lambda group: False) -> None:
    """Keep a random half (rounded up) of every group's channels, except the groups `whole` names."""
    rng = np.random.default_rng(seed)
    for gp in plan.groups:
        if not whole(gp):
            gp.keep = sorted(int(k) for k in rng.choice(gp.channels, size=(gp.channels + 1) // 2, replace=False))


def feed(model, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if model.graph.input[0].type.tensor_type.elem_type == 7:  # INT64: token ids
        return rng.integers(0, tz.VOCAB, (batch, tz.SEQ)).astype(np.int64)
    return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)


def assert_equal_to_onnx(module, pruned_onnx) -> None:
    module.eval()
    session = make_session(pruned_onnx)
    name = pruned_onnx.graph.input[0].name
    for batch in (2, 3):
        x = feed(pruned_onnx, batch, seed=batch)
        theirs = session.run(None, {name: x})[0]
        with torch.no_grad():
            ours = module(torch.from_numpy(x)).numpy()
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= RTOL * max(np.abs(theirs).max(), 1e-6)


def assert_trains(module, example) -> None:
    """Forward and backward in training mode (dropout on), every gradient the shape of its
    parameter, and an optimizer step."""
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    loss = module(*example).float().square().mean()
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    optimizer.step()
    module.eval()


def attention_modules(module):
    return {name: m for name, m in module.named_modules()
            if type(m).__name__ in ("BertSelfAttention", "ViTAttention", "ViTSelfAttention", "GPT2Attention", "LlamaAttention")}


def head_groups(plan: onnxprune.Plan, model: str) -> list:
    heads, kv = HEADS[model]
    return [gp for gp in plan.groups if gp.channels == kv and any(m.channel_of is not None for m in gp.members)]


@pytest.mark.parametrize("model,exporter,seed", [(m, e, s) for m in sorted(HEADS) for e, s in
                                                  (("dynamo", 0), ("dynamo", 1), ("legacy", 0))])
def test_heads_and_mlp_hand_back_equal_the_pruned_onnx(exports, model, exporter, seed):
    """Random halves of every group (heads, kv groups with their query heads, MLP width, Llama's
    residual stream) under both exporters: the sliced HF module equals the pruned ONNX, trains, and
    its attention modules and config hold the new head counts and widths."""
    module, example = tz.BUILDERS[model]()
    onnx_model = onnxprune.load(exports(model, exporter))
    plan = onnx_model.plan(ratio=0.0)
    random_keep(plan, seed)
    groups = head_groups(plan, model)
    assert len(groups) == 2 and all(gp.removed for gp in groups)
    result = onnx_model.apply(plan)
    before = sum(p.numel() for p in module.parameters())
    apply_plan(module, plan, example)
    assert sum(p.numel() for p in module.parameters()) < before
    assert_equal_to_onnx(module, result.model)

    heads, kv = HEADS[model]
    kept_kv = len(groups[0].keep)
    kept_heads = kept_kv * heads // kv
    config = module.model.config
    assert config.num_attention_heads == kept_heads
    if model == "llama":
        assert config.num_key_value_heads == kept_kv
    attentions = attention_modules(module)
    assert attentions
    for att in attentions.values():
        for attr in ("num_heads", "num_attention_heads"):
            if hasattr(att, attr):
                assert getattr(att, attr) == kept_heads
        if hasattr(att, "num_key_value_groups"):
            assert att.num_key_value_groups == heads // kv
        if hasattr(att, "split_size"):  # GPT-2's fused c_attn splits into q, k, v of this width
            assert att.split_size == kept_heads * att.head_dim == att.c_attn.nf // 3
    mlp = [gp for gp in plan.groups if gp.channels == MLP[model] and all(m.channel_of is None for m in gp.members)]
    assert len(mlp) == 2 and all(gp.removed for gp in mlp)
    assert (config.n_inner if model == "gpt2" else config.intermediate_size) == len(mlp[0].keep)
    assert_trains(module, example)


def test_llama_residual_stream_hands_back_with_rescaled_rmsnorm(exports):
    """Pruning only Llama's residual stream (embedding columns, every projection's residual side,
    the RMSNorm weights, the LM head's inputs): the RMSNorms divide by the original width (eps / k,
    w / sqrt(k)), so the module equals the pruned ONNX; the config's hidden size and eps follow."""
    module, example = tz.BUILDERS["llama"]()
    eps = module.model.config.rms_norm_eps
    onnx_model = onnxprune.load(exports("llama", "dynamo"))
    plan = onnx_model.plan(ratio=0.0)
    residual = [gp for gp in plan.groups if gp.channels == 64 and all(m.channel_of is None for m in gp.members)]
    assert len(residual) == 1
    random_keep(plan, seed=3, whole=lambda gp: gp is not residual[0])
    kept = len(residual[0].keep)
    result = onnx_model.apply(plan)
    apply_plan(module, plan, example)
    assert_equal_to_onnx(module, result.model)
    config = module.model.config
    assert config.hidden_size == kept and config.head_dim == 16
    assert config.rms_norm_eps == pytest.approx(eps * 64 / kept)
    assert module.model.model.embed_tokens.embedding_dim == kept
    assert module.model.model.norm.weight.shape == (kept,)
    assert_trains(module, example)


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_a_plan_keeping_part_of_a_head_is_refused_and_the_module_untouched(exports, model):
    """A plan that prunes within heads (head_dim: element j of every head as one channel, what the
    legacy exporter's BERT and GPT-2 plans did before its heads pruned) cannot be expressed in a
    module with one head_dim for q, k and v: `apply_plan` refuses, naming the projection, before
    anything changes."""
    module, example = tz.BUILDERS[model]()
    plan = onnxprune.load(exports(model, "dynamo")).plan(ratio=0.0)
    group = head_groups(plan, model)[0]
    head_dim = 8
    for member in group.members:  # channel = offset within the head instead of the head
        member.channel_of = [i % head_dim for i in range(member.size)]
    group.channels, group.keep = head_dim, list(range(head_dim // 2))
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(InputError, match="within heads"):
        apply_plan(module, plan, example)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("exporter", tz.EXPORTERS)
def test_timm_style_attention_hard_coding_the_width_is_refused(exports, exporter):
    """The timm-style ViT reshapes attention's output to the input width C (`reshape(B, N, C)`):
    with heads pruned its code cannot run, so the rehearsal refuses and the module stays as it was.
    Its MLP width alone hands back."""
    module, example = tz.BUILDERS["vit"]()
    onnx_model = onnxprune.load(exports("vit", exporter))
    plan = onnx_model.plan(ratio=0.0)
    random_keep(plan, seed=0)
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(InputError, match="does not run"):
        apply_plan(module, plan, example)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    for gp in plan.groups:
        if gp.channels == 3:
            gp.keep = [0, 1, 2]
    result = onnx_model.apply(plan)
    apply_plan(module, plan, example)
    assert_equal_to_onnx(module, result.model)
    assert module.blocks[0].mlp[0].out_features == 48


def test_a_query_head_parted_from_its_kv_group_is_refused():
    """Grouped-query attention reads kv head h // rep for query head h: a cut that keeps query heads
    of a kv group that goes, or keeps unequal numbers per group, cannot be expressed."""
    module, _ = tz.BUILDERS["llama"]()
    att = "model.model.layers.0.self_attn"
    d = 16
    heads = lambda *hs: np.concatenate([np.arange(h * d, (h + 1) * d) for h in hs])  # noqa: E731
    ok = plan_heads(module, {f"{att}.q_proj": heads(2, 3), f"{att}.k_proj": heads(1), f"{att}.v_proj": heads(1)})
    assert [(c.heads, c.kv_heads) for c in ok] == [((2, 3), (1,))]
    for q in (heads(0, 2), heads(0, 1, 2)):
        with pytest.raises(InputError, match="kv group"):
            plan_heads(module, {f"{att}.q_proj": q, f"{att}.k_proj": heads(0), f"{att}.v_proj": heads(0)})
    with pytest.raises(InputError, match="part of a head"):
        plan_heads(module, {f"{att}.q_proj": np.arange(8, 72), f"{att}.k_proj": heads(0, 1), f"{att}.v_proj": heads(0, 1)})


def test_layers_with_different_head_counts_run_and_the_config_warns(exports):
    """The plan may keep 1 head in one layer and 3 in another: the module runs (each attention has
    its own counts), the config, which has one count for all layers, keeps its value and says so."""
    module, example = tz.BUILDERS["bert"]()
    onnx_model = onnxprune.load(exports("bert", "dynamo"))
    plan = onnx_model.plan(ratio=0.0)
    first, second = head_groups(plan, "bert")
    first.keep, second.keep = [2], [0, 1, 3]
    result = onnx_model.apply(plan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_plan(module, plan, example)
    assert any("num_attention_heads" in str(w.message) for w in caught)
    assert module.model.config.num_attention_heads == 4
    counts = [att.num_attention_heads for att in attention_modules(module).values()]
    assert counts == [1, 3]
    assert_equal_to_onnx(module, result.model)


def test_tied_embedding_stays_tied(tmp_path):
    """A Llama whose LM head shares the embedding's weight (dynamo names the shared table after the
    LM head): after the residual stream is pruned the two still share one Parameter, and the module
    equals the pruned ONNX."""
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=tz.VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=48, max_position_embeddings=tz.SEQ * 2,
                           tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                           attn_implementation="sdpa")
    module, example = tz.TextModel(T.LlamaForCausalLM(config).eval(), logits=True).eval(), tz._ids()
    assert module.model.lm_head.weight is module.model.model.embed_tokens.weight
    onnx_model = onnxprune.load(tz.export(module, example, tmp_path / "tied.onnx", "dynamo"))
    plan = onnx_model.plan(ratio=0.0)
    random_keep(plan, seed=0)
    assert any(gp.channels == 32 and gp.removed for gp in plan.groups)
    result = onnx_model.apply(plan)
    apply_plan(module, plan, example)
    assert module.model.lm_head.weight is module.model.model.embed_tokens.weight
    assert_equal_to_onnx(module, result.model)
    # with one kv head the query heads prune alone: the kv head is repeated for fewer of them
    assert (config.num_attention_heads, config.num_key_value_heads, config.hidden_size) == (1, 1, 16)
    assert module.model.model.layers[0].self_attn.num_key_value_groups == 1
    assert_trains(module, example)
