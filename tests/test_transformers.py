"""Transformers exported by both torch exporters (tests/transformer_zoo.py): which groups are
prunable (attention heads, MLP width), dead heads and MLP channels removed exactly under threshold
0, and random prunes valid.  Needs the `test` extra's transformers; exports are cached like the zoo's
(ONNXPRUNE_TEST_CACHE)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

pytest.importorskip("transformers")

import onnxprune  # noqa: E402
import transformer_zoo as tz  # noqa: E402
from onnxprune.ops import IN  # noqa: E402

RTOL = 1e-5
CASES = [(m, e) for m in tz.MODELS for e in tz.EXPORTERS]
# (model, exporter) -> (heads, head groups) measured on these configs: every layer's heads form one
# group; Llama's 2 kv groups each take their 2 query heads along.
HEADS = {"vit": 3, "bert": 4, "gpt2": 4, "llama": 2}
HEAD_CASES = CASES


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    explicit = os.environ.get("ONNXPRUNE_TEST_CACHE")
    if explicit:
        import torch
        import transformers

        source = (TESTS / "transformer_zoo.py").read_bytes() + f"{torch.__version__} {transformers.__version__}".encode()
        root = Path(explicit) / ("transformers-" + hashlib.sha256(source).hexdigest()[:16])
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = tmp_path_factory.mktemp("transformers")
    paths: dict[tuple[str, str], Path] = {}

    def get(model: str, exporter: str) -> Path:
        if (model, exporter) not in paths:
            target = root / f"{model}_{exporter}.onnx"
            if not target.exists():
                partial = root / f".partial_{model}_{exporter}" / target.name
                module, inputs = tz.BUILDERS[model]()
                tz.export(module, inputs, partial, exporter)
                data = partial.with_name(partial.name + ".data")
                if data.exists():
                    os.replace(data, target.with_name(target.name + ".data"))
                os.replace(partial, target)
            paths[(model, exporter)] = target
        return paths[(model, exporter)]

    return get


def feeds(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids below the vocabulary size, or normal images."""
    rng = np.random.default_rng(seed)
    vi = model.graph.input[0]
    if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
        return {vi.name: rng.integers(0, tz.VOCAB, (batch, tz.SEQ)).astype(np.int64)}
    return {vi.name: rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}


def run(model: onnx.ModelProto, batch: int, seed: int = 0) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds(model, batch, seed))


def head_group(m: onnxprune.PrunableModel, layer: int = 0):
    """The prunable group whose channel count is the model's head (or kv-group) count and that
    the `layer`-th attention's output projection consumes."""
    groups = [g for g in m.groups if g.n_channels in set(HEADS.values()) and any(m.depgraph.roles.get(d) == IN for d in g.dims)]
    return groups[layer] if len(groups) > layer else None


def plant(model: onnx.ModelProto, m: onnxprune.PrunableModel, chans: dict[int, set[int]]) -> onnx.ModelProto:
    """Zero the given channels in every constant of their groups except consuming weights."""
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    for g in m.groups:
        if g.id not in chans:
            continue
        for d in g.const_dims:
            if g.roles.get(d) == IN or d.tensor not in values:
                continue
            v = np.moveaxis(values[d.tensor], d.axis, 0)
            v[np.isin(g.classes[d], sorted(chans[g.id]))] = 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


@pytest.mark.parametrize("case", HEAD_CASES, ids="-".join)
def test_heads_and_mlp_prunable(exports, case):
    """Every layer's heads form one prunable group (GQA: one channel per kv group) and so does its MLP."""
    model, exporter = case
    m = onnxprune.load(exports(model, exporter))
    heads = [g for g in m.groups if g.n_channels == HEADS[model]]
    assert len(heads) == 2, [(g.id, g.n_channels) for g in m.groups]
    assert len(m.groups) >= 4


@pytest.mark.parametrize("case", HEAD_CASES, ids="-".join)
def test_dead_heads_exact(exports, case):
    """A head whose q, k, v projections are zero is exactly what threshold 0 removes from the
    heads group, and removing it leaves the outputs unchanged on real inputs."""
    model, exporter = case
    original = onnx.load(str(exports(model, exporter)))
    m = onnxprune.PrunableModel(original)
    group = head_group(m)
    assert group is not None
    planted = plant(original, m, {group.id: {1}})
    pm = onnxprune.PrunableModel(planted)
    plan = pm.plan(threshold=0)
    removed = {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}
    assert removed.get(group.id) == {1}
    assert all(not r for gid, r in removed.items() if gid != group.id)
    result = pm.apply(plan)
    assert result.exact
    assert result.after.macs < result.before.macs
    for batch in (2, 3):
        for a, b in zip(run(planted, batch, seed=batch), run(result.model, batch, seed=batch)):
            assert a.shape == b.shape
            assert float(np.max(np.abs(a - b))) <= RTOL * max(float(np.max(np.abs(a))), 1e-30)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_dead_channels_exact_every_group(exports, case):
    """For every prunable group (heads, head_dim of q/k, MLP width, the residual stream), zeroed
    channels are exactly what threshold 0 removes, and removing them leaves the outputs unchanged."""
    model, exporter = case
    original = onnx.load(str(exports(model, exporter)))
    m = onnxprune.PrunableModel(original)
    assert m.groups, "nothing prunable"
    assert any(g.n_channels > max(HEADS.values()) for g in m.groups), "no MLP group"
    for group in m.groups:
        chans = {1, group.n_channels - 1} if group.n_channels >= 4 else {1}
        planted = plant(original, m, {group.id: chans})
        pm = onnxprune.PrunableModel(planted)
        plan = pm.plan(threshold=0)
        removed = {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}
        assert removed[group.id] == chans, f"group {group.id}"
        assert all(not r for gid, r in removed.items() if gid != group.id)
        result = pm.apply(plan)
        assert result.exact
        for a, b in zip(run(planted, 3, seed=group.id), run(result.model, 3, seed=group.id)):
            assert float(np.max(np.abs(a - b))) <= RTOL * max(float(np.max(np.abs(a))), 1e-30), f"group {group.id}"


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_random_prune_valid(exports, case):
    """A random 50% prune (heads included where prunable) passes the full checker, keeps the I/O
    signature and runs at batch 2 and 3 with the original's output shapes."""
    model, exporter = case
    original = onnx.load(str(exports(model, exporter)))
    m = onnxprune.PrunableModel(original)
    plan = m.plan(ratio=0.5, criterion="random")
    result = m.apply(plan)
    onnx.checker.check_model(result.model, full_check=True)
    assert [i.name for i in result.model.graph.input] == [i.name for i in original.graph.input]
    assert result.after.macs < result.before.macs
    for batch in (2, 3):
        a, b = run(original, batch), run(result.model, batch)
        assert [x.shape for x in a] == [x.shape for x in b]
        assert all(np.all(np.isfinite(x)) for x in b)


def zero_heads(model: onnx.ModelProto, m: onnxprune.PrunableModel, chans: dict[int, set[int]]) -> onnx.ModelProto:
    """Zero the consuming weights (the output projection's input columns) of the given channels:
    the original model with those heads switched off."""
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    for g in m.groups:
        for d in g.const_dims:
            if g.id in chans and g.roles.get(d) == IN and d.tensor in values:
                v = np.moveaxis(values[d.tensor], d.axis, 0)
                v[np.isin(g.classes[d], sorted(chans[g.id]))] = 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


def dims(model: onnx.ModelProto) -> list[list]:
    """Each graph input's and output's sizes, a dynamic one by its name."""
    return [[d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(model.graph.input) + list(model.graph.output)]


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_random_heads_exact(exports, case):
    """Removing random live heads (one per layer; GQA: a kv group with its query heads) gives a
    model that passes the full checker, keeps its inputs, outputs and dynamic sizes, and computes
    exactly what the original computes with those heads switched off."""
    model, exporter = case
    original = onnx.load(str(exports(model, exporter)))
    m = onnxprune.PrunableModel(original)
    heads = [g for g in m.groups if g.n_channels == HEADS[model]]
    assert len(heads) == 2
    rng = np.random.default_rng(len(model))
    chans = {g.id: {int(rng.integers(g.n_channels))} for g in heads}
    plan = m.plan(threshold=0)
    for gp in plan.groups:
        gp.keep = [k for k in range(gp.channels) if k not in chans.get(gp.id, ())]
    result = m.apply(plan)
    onnx.checker.check_model(result.model, full_check=True)
    assert dims(result.model) == dims(original)
    assert result.after.macs < result.before.macs
    switched_off = zero_heads(original, m, chans)
    for batch in (1, 2, 3):
        for a, b in zip(run(switched_off, batch, seed=batch), run(result.model, batch, seed=batch)):
            assert a.shape == b.shape
            assert float(np.max(np.abs(a - b))) <= RTOL * max(float(np.max(np.abs(a))), 1e-30)


def test_rope_head_dim_pinned_with_reason(exports):
    """Legacy Llama: RoPE's rotate_half halves head_dim with Slice bounds computed from Shape and
    one cos/sin serves every layer, so head_dim (q and k of every layer, one group) stays whole,
    and says why, while whole kv groups still prune (test_random_heads_exact)."""
    from onnxprune.ops import Dim

    m = onnxprune.load(exports("llama", "legacy"))
    rotated = [n.output[0] for n in m.index.model.graph.node if n.op_type == "Concat" and "self_attn" in n.output[0]
               and len(m.index.shape(n.output[0]) or ()) == 4]
    assert len(rotated) == 4  # q and k of both layers
    groups = {id(m.depgraph.group_of(Dim(name, 3))): m.depgraph.group_of(Dim(name, 3)) for name in rotated}
    assert len(groups) == 1
    group = next(iter(groups.values()))
    assert not group.prunable
    assert any("known only at run time" in r for r in group.blocked)
    assert [g for g in m.groups if g.n_channels == HEADS["llama"]]


@pytest.mark.parametrize("exporter", tz.EXPORTERS)
def test_dead_residual_channels_exact_rmsnorm(exports, exporter):
    """Llama's residual stream (embedding columns, o/down projection outputs, RMSNorm weights) is
    one prunable group; zeroed channels are removed exactly because every RMSNorm's mean is
    rescaled to the original width (eps and the output scale rewritten)."""
    original = onnx.load(str(exports("llama", exporter)))
    m = onnxprune.PrunableModel(original)
    residual = [g for g in m.groups if g.n_channels == 64]
    assert len(residual) == 1
    chans = {3, 40}
    planted = plant(original, m, {residual[0].id: chans})
    pm = onnxprune.PrunableModel(planted)
    plan = pm.plan(threshold=0)
    removed = {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}
    assert removed[residual[0].id] == chans
    result = pm.apply(plan)
    assert result.exact
    for batch in (2, 3):
        for a, b in zip(run(planted, batch, seed=batch), run(result.model, batch, seed=batch)):
            assert float(np.max(np.abs(a - b))) <= RTOL * max(float(np.max(np.abs(a))), 1e-30)


@pytest.mark.parametrize("exporter", tz.EXPORTERS)
def test_residual_prune_valid_rmsnorm(exports, exporter):
    """Pruning live residual channels (30%) gives a valid model whose output stays close."""
    original = onnx.load(str(exports("llama", exporter)))
    m = onnxprune.PrunableModel(original)
    residual = [g for g in m.groups if g.n_channels == 64][0]
    plan = m.plan(ratio=0.3)
    for gp in plan.groups:  # only the residual stream
        if gp.id != residual.id:
            gp.keep = list(range(gp.channels))
    assert len(next(gp for gp in plan.groups if gp.id == residual.id).keep) < 64
    result = m.apply(plan)
    onnx.checker.check_model(result.model, full_check=True)
    a, b = run(original, 2), run(result.model, 2)
    assert a[0].shape == b[0].shape and np.all(np.isfinite(b[0]))


def test_rmsnorm_weight_zero_is_not_dead(exports):
    """A residual channel whose RMSNorm weights are zero still enters every mean of squares: it is
    not dead, and threshold 0 keeps it."""
    original = onnx.load(str(exports("llama", "dynamo")))
    values = {t.name: numpy_helper.to_array(t).copy() for t in original.graph.initializer}
    norms = [name for name in values if "norm" in name]
    assert norms
    for name in norms:
        values[name][5] = 0
    planted = onnx.ModelProto()
    planted.CopyFrom(original)
    for t in planted.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    pm = onnxprune.PrunableModel(planted)
    residual = [g for g in pm.groups if g.n_channels == 64][0]
    plan = pm.plan(threshold=0)
    assert 5 in next(gp for gp in plan.groups if gp.id == residual.id).keep


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "vit"], ids="-".join)
def test_embedding_rows_of_token_ids(exports, case):
    """The token-id input indexes embedding tables of at least VOCAB rows (positions: 2 * SEQ)."""
    from onnxprune.graph import ModelIndex
    from onnxprune.ops.layout import embedding_rows

    model = onnx.load(str(exports(*case)))
    rows = embedding_rows(ModelIndex.build(model), "input_ids")
    assert rows == tz.VOCAB
    assert embedding_rows(ModelIndex.build(model), "y") is None
