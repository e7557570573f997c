"""Depth pruning (onnxprune.blocks): residual blocks found in hand-built graphs, a hand-written
ResNet-style CNN and the tiny ViT / GPT-2 / Llama of tests/transformer_zoo.py with both exporters;
a block whose branch is zero is removed without changing the outputs; removed-block models pass
the checker, run, keep output shapes and dynamic dims; the plan round-trips; the PyTorch hand-back
equals the pruned ONNX within 1e-5."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import onnxprune  # noqa: E402
from conftest import run_cli  # noqa: E402
from onnxprune.errors import InputError  # noqa: E402
from onnxprune.plan import Plan  # noqa: E402

RTOL = 1e-5
C = 8


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _check_valid(original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    """onnx.checker passes and the inputs and outputs (dynamic dims included) are the original's."""
    onnx.checker.check_model(pruned)
    signature = lambda m: [(vi.name, str(vi.type)) for vi in list(m.graph.input) + list(m.graph.output)]  # noqa: E731
    assert signature(pruned) == signature(original)


# --------------------------------------------------------------------------- hand-built graphs


def _mlp_block(nodes, inits, x: str, name: str, rng, zero: bool = False, output: str | None = None) -> str:
    """`x + W2 relu(W1 x)`: a residual MLP block appended to `nodes`; returns the sum's output."""
    w1, w2 = rng.standard_normal((C, 2 * C)).astype(np.float32), rng.standard_normal((2 * C, C)).astype(np.float32)
    if zero:
        w2[:] = 0
    inits += [numpy_helper.from_array(w1, f"{name}.w1"), numpy_helper.from_array(w2, f"{name}.w2")]
    out = output or f"{name}.out"
    nodes += [helper.make_node("MatMul", [x, f"{name}.w1"], [f"{name}.h"], name=f"{name}.fc1"),
              helper.make_node("Relu", [f"{name}.h"], [f"{name}.a"], name=f"{name}.act"),
              helper.make_node("MatMul", [f"{name}.a", f"{name}.w2"], [f"{name}.f"], name=f"{name}.fc2"),
              helper.make_node("Add", [x, f"{name}.f"], [out], name=f"{name}.add")]
    return out


def _graph(nodes, inits, last: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, C])
    y = helper.make_tensor_value_info(last, TensorProto.FLOAT, ["batch", 4, C])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def three_blocks(zero: int | None = None) -> onnx.ModelProto:
    """stem, three residual MLP blocks (block `zero`'s branch is all zeros), the last one's sum
    being the graph output."""
    rng = np.random.default_rng(0)
    nodes, inits = [], [numpy_helper.from_array(rng.standard_normal((C, C)).astype(np.float32), "stem.w")]
    nodes.append(helper.make_node("MatMul", ["x", "stem.w"], ["s"], name="stem"))
    h = "s"
    for k in range(3):
        h = _mlp_block(nodes, inits, h, f"b{k}", rng, zero=k == zero, output="y" if k == 2 else None)
    return _graph(nodes, inits, h)


def projection_block() -> onnx.ModelProto:
    """`W_b2 W_b1 x + W_s x`: both paths compute (the cheaper one, a projection shortcut), plus a
    GELU-like `x + 0.044715 x^3` (a sum with a branch without layers: not a block)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((C, C)).astype(np.float32), n) for n in ("wb", "wb2", "ws")]
    inits += [numpy_helper.from_array(np.array(3.0, np.float32), "three"), numpy_helper.from_array(np.array(0.044715, np.float32), "k")]
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["b1"], name="body1"),
             helper.make_node("MatMul", ["b1", "wb2"], ["b"], name="body"),
             helper.make_node("MatMul", ["x", "ws"], ["sc"], name="shortcut"),
             helper.make_node("Add", ["b", "sc"], ["z"], name="sum"),
             helper.make_node("Pow", ["z", "three"], ["z3"], name="cube"),
             helper.make_node("Mul", ["z3", "k"], ["z3k"], name="scale"),
             helper.make_node("Add", ["z", "z3k"], ["y"], name="gelu_sum")]
    return _graph(nodes, inits, "y")


def _feeds(batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 4, C)).astype(np.float32)}


def test_handbuilt_blocks_found():
    m = onnxprune.PrunableModel(three_blocks())
    blocks = m.residual_blocks.blocks
    assert [b.add for b in blocks] == ["b0.add", "b1.add", "b2.add"]
    assert [b.shortcut for b in blocks] == ["s", "b0.out", "b1.out"]
    assert set(blocks[0].nodes) == {"b0.fc1", "b0.act", "b0.fc2"}
    assert all(b.macs == 4 * C * 2 * C * 2 for b in blocks)  # two MatMuls of one sample
    assert not m.residual_blocks.refused


def test_handbuilt_projection_refused_with_reason():
    m = onnxprune.PrunableModel(projection_block())
    assert not m.residual_blocks.blocks
    (refused,) = m.residual_blocks.refused  # the GELU-like sum is not even a candidate
    assert refused.add == "sum" and "shortcut is not the identity" in refused.reason and "'shortcut'" in refused.reason
    with pytest.raises(InputError, match="has 0 removable residual block"):
        m.plan(drop_blocks=1)


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_zero_branch_dropped_exactly(zero):
    """The block whose branch is zero changes its input least (influence 0), is the one dropped,
    and the outputs stay what they were."""
    model = three_blocks(zero)
    m = onnxprune.PrunableModel(model)
    influence = m.block_influence(_feeds())
    assert influence[zero] == pytest.approx(0, abs=1e-7) and all(v > 1e-3 for k, v in influence.items() if k != zero)
    plan = m.plan(drop_blocks=1, data=_feeds())
    assert [b.add for b in plan.blocks] == [f"b{zero}.add"]
    result = m.apply(plan)
    _check_valid(model, result.model)
    feeds = _feeds(5, seed=3)  # another batch size: the dynamic batch survived
    (before,), (after,) = _run(model, feeds), _run(result.model, feeds)
    assert after.shape == before.shape and _rel(after, before) <= RTOL
    nodes = {n.name: n for n in result.model.graph.node}
    assert not set(nodes) & {f"b{zero}.fc1", f"b{zero}.act", f"b{zero}.fc2"}
    if zero == 2:  # the sum was the graph output: an Identity of the shortcut keeps the output's name
        assert list(nodes["b2.add"].input) == ["b1.out"] and list(nodes["b2.add"].output) == ["y"]
    else:
        assert f"b{zero}.add" not in nodes
    assert f"b{zero}.w1" not in {t.name for t in result.model.graph.initializer}
    assert result.after.macs == result.before.macs - 4 * C * 2 * C * 2


def test_dropping_a_live_block_changes_outputs_and_costs():
    model = three_blocks()
    m = onnxprune.PrunableModel(model)
    result = m.prune(drop_blocks=2, data=_feeds())
    _check_valid(model, result.model)
    (before,), (after,) = _run(model, _feeds()), _run(result.model, _feeds())
    assert after.shape == before.shape and _rel(after, before) > 1e-3
    assert result.after.macs == result.before.macs - 2 * 4 * C * 2 * C * 2
    assert len(result.plan.blocks) == 2


def test_plan_round_trips_and_is_checked(tmp_path):
    model = three_blocks()
    m = onnxprune.PrunableModel(model)
    plan = m.plan(drop_blocks=1, ratio=0.25, data=_feeds())
    assert plan.groups and any(g.removed for g in plan.groups)
    path = tmp_path / "plan.json"
    plan.write(path)
    text = path.read_text()
    assert '"version": 2' in text and '"blocks"' in text
    again = Plan.read(path)
    assert again.blocks == plan.blocks and [g.keep for g in again.groups] == [g.keep for g in plan.groups]
    first, second = m.apply(plan), m.apply(again)
    assert first.model.SerializeToString() == second.model.SerializeToString()
    plain = m.plan(ratio=0.25)
    assert '"version": 1' in plain.to_json() and '"blocks"' not in plain.to_json()
    with pytest.raises(InputError, match="plan version 3 is not supported .*versions 1 and 2"):
        Plan.from_json(text.replace('"version": 2', '"version": 3'))
    other = onnxprune.PrunableModel(projection_block())
    with pytest.raises(InputError, match="block at node 'b.\\.add' is not a removable residual block"):
        other.surgery(again)


def test_cli_drop_blocks(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(three_blocks(1), src)
    out, plan = tmp_path / "out.onnx", tmp_path / "plan.json"
    code, stdout, stderr = run_cli(capsys, "prune", src, "-o", out, "--drop-blocks", "1", "--plan-out", plan)
    assert code == 0, stderr
    assert "dropped block" in stdout and "synthesized inputs" in stderr  # no --data: warned
    (before,), (after,) = _run(str(src), _feeds()), _run(str(out), _feeds())
    assert _rel(after, before) <= RTOL  # the zero block is the least influential on synthesized inputs too
    code, stdout, stderr = run_cli(capsys, "prune", src, "-o", tmp_path / "x.onnx", "--drop-blocks", "4")
    assert code == 2 and "has 3 removable residual block(s)" in stderr and not (tmp_path / "x.onnx").exists()
    code, stdout, _ = run_cli(capsys, "inspect", src)
    assert code == 0 and stdout.count("removable") == 3
    code, _, stderr = run_cli(capsys, "apply", src, plan, "-o", tmp_path / "again.onnx")
    assert code == 0, stderr
    proj = tmp_path / "p.onnx"
    onnx.save(projection_block(), proj)
    code, stdout, _ = run_cli(capsys, "inspect", proj)
    assert code == 0 and "shortcut is not the identity" in stdout


# --------------------------------------------------------------------------- torch models

torch = pytest.importorskip("torch")
nn = torch.nn


class BasicBlock(nn.Module):
    """ResNet BasicBlock: identity shortcut, or a downsampling conv + BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """ResNet Bottleneck with an identity shortcut, its branch in one Sequential."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU(),
                                  nn.Conv2d(c // 2, c // 2, 3, padding=1), nn.BatchNorm2d(c // 2), nn.ReLU(),
                                  nn.Conv2d(c // 2, c, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), Bottleneck(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


def build_cnn():
    """The CNN with trained-looking BatchNorms; layer1.1's last BN is zero (gamma = beta = 0), so
    that block's branch is exactly zero."""
    torch.manual_seed(0)
    model = SmallResNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
        model.layer1[1].bn2.weight.zero_()
        model.layer1[1].bn2.bias.zero_()
    return model.eval(), (torch.randn(2, 3, 16, 16, generator=gen),)


def _cache_dir(tmp_path_factory, name: str) -> Path:
    explicit = os.environ.get("ONNXPRUNE_TEST_CACHE")
    if not explicit:
        return tmp_path_factory.mktemp(name)
    import transformer_zoo

    source = Path(__file__).read_bytes() + (TESTS / "transformer_zoo.py").read_bytes() + torch.__version__.encode()
    root = Path(explicit) / f"{name}-{hashlib.sha256(source).hexdigest()[:16]}"
    root.mkdir(parents=True, exist_ok=True)
    assert transformer_zoo  # the zoo's source is part of the key
    return root


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(model name, exporter) -> exported file, built once (cached like the zoo's)."""
    import transformer_zoo as tz

    root = _cache_dir(tmp_path_factory, "blocks")
    builders = {"cnn": build_cnn, **{k: tz.MODELS[k] for k in ("vit", "gpt2", "llama")}}
    paths: dict[tuple[str, str], Path] = {}

    def get(name: str, exporter: str) -> Path:
        target = root / f"{name}_{exporter}.onnx"
        if not target.exists():
            module, inputs = builders[name]()
            partial = root / f".partial_{name}_{exporter}" / target.name
            tz.export(module, inputs, partial, exporter)
            data = partial.with_name(partial.name + ".data")
            if data.exists():
                os.replace(data, target.with_name(target.name + ".data"))
            os.replace(partial, target)
        paths[(name, exporter)] = target
        return target

    return get, builders


EXPORTERS = ("dynamo", "legacy")


def _torch_feeds(path: Path, inputs) -> dict[str, np.ndarray]:
    name = onnx.load(str(path), load_external_data=False).graph.input[0].name
    return {name: inputs[0].numpy()}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cnn_blocks_and_downsample_reason(exported, exporter):
    get, _ = exported
    m = onnxprune.load(get("cnn", exporter))
    search = m.residual_blocks
    assert [b.origin for b in search.blocks] == ["layer1.0", "layer1.1", "layer2.1"]
    (refused,) = search.refused
    assert refused.origin == "layer2.0" and "shortcut is not the identity" in refused.reason
    assert "layer2.0.downsample" in refused.reason


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cnn_zero_block_dropped_exactly(exported, exporter):
    get, builders = exported
    path = get("cnn", exporter)
    _, inputs = builders["cnn"]()
    m = onnxprune.load(path)
    feeds = _torch_feeds(path, inputs)
    result = m.prune(drop_blocks=1, data=feeds)
    assert [b.origin for b in result.plan.blocks] == ["layer1.1"]
    assert result.plan.blocks[0].influence == pytest.approx(0, abs=1e-6)
    _check_valid(m.model, result.model)
    other = {k: np.random.default_rng(5).standard_normal((3,) + v.shape[1:]).astype(np.float32) for k, v in feeds.items()}
    (before,), (after,) = _run(str(path), other), _run(result.model, other)
    assert _rel(after, before) <= RTOL
    assert result.after.macs < result.before.macs


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cnn_handback_equals_pruned_onnx(exported, exporter):
    """Two blocks dropped (the zero one and a live one) and 30% of channels: the torch module with
    the branches replaced and the channels sliced equals the pruned ONNX."""
    from onnxprune.torch import ZeroBranch, apply_plan

    get, builders = exported
    path = get("cnn", exporter)
    module, inputs = builders["cnn"]()
    m = onnxprune.load(path)
    plan = m.plan(drop_blocks=2, ratio=0.3, criterion="l1", data=_torch_feeds(path, inputs))
    result = m.apply(plan)
    assert len(plan.blocks) == 2 and any(g.removed for g in plan.groups)
    apply_plan(module, plan, inputs)
    assert sum(isinstance(mod, ZeroBranch) for mod in module.modules()) >= 2
    with torch.no_grad():
        ours = module(*inputs).numpy()
    (theirs,) = _run(result.model, _torch_feeds(path, inputs))
    assert _rel(ours, theirs) <= RTOL
    module.train()
    loss = module(*inputs).square().mean()
    loss.backward()  # fine-tunes


TRANSFORMERS = [(m, e) for m in ("vit", "gpt2", "llama") for e in EXPORTERS]


def _token_feeds(path: Path, seed: int, batch: int) -> dict[str, np.ndarray]:
    import transformer_zoo as tz

    vi = onnx.load(str(path), load_external_data=False).graph.input[0]
    rng = np.random.default_rng(seed)
    if vi.type.tensor_type.elem_type == TensorProto.INT64:
        return {vi.name: rng.integers(0, tz.VOCAB, (batch, tz.SEQ)).astype(np.int64)}
    return {vi.name: rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}


@pytest.mark.parametrize("name,exporter", TRANSFORMERS)
def test_transformer_blocks_dropped_valid(exported, name, exporter):
    """Two residual blocks per layer (attention, MLP), each mapped to its module; dropping two
    gives a valid model with the original's inputs, outputs and dynamic batch."""
    pytest.importorskip("transformers")
    get, _ = exported
    path = get(name, exporter)
    m = onnxprune.load(path)
    blocks = m.residual_blocks.blocks
    assert len(blocks) == 4
    assert all(b.module and any(k in b.module for k in ("attn", "mlp")) for b in blocks)
    feeds = _token_feeds(path, 0, 4)
    result = m.prune(drop_blocks=2, data=feeds)
    _check_valid(m.model, result.model)
    other = _token_feeds(path, 1, 3)
    (before,), (after,) = _run(str(path), other), _run(result.model, other)
    assert after.shape == before.shape
    assert result.after.macs < result.before.macs
    influence = m.block_influence(feeds)
    assert sorted(b.add for b in result.plan.blocks) == sorted(b.add for b in sorted(blocks, key=lambda b: influence[b.id])[:2])


def _zero_branch_module(name: str):
    """The zoo model with its first MLP's output projection zeroed (the branch is exactly 0)."""
    import transformer_zoo as tz

    module, inputs = tz.MODELS[name]()
    with torch.no_grad():
        mlp = module.blocks[0].mlp[2] if name == "vit" else module.model.transformer.h[0].mlp.c_proj
        mlp.weight.zero_()
        mlp.bias.zero_()
    return module, inputs


@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_transformer_zero_block_dropped_exactly(tmp_path, name):
    pytest.importorskip("transformers")
    import transformer_zoo as tz

    module, inputs = _zero_branch_module(name)
    path = tz.export(module, inputs, tmp_path / f"{name}.onnx", "dynamo")
    m = onnxprune.load(path)
    feeds = _token_feeds(path, 0, 4)
    result = m.prune(drop_blocks=1, data=feeds)
    assert "mlp" in result.plan.blocks[0].module and result.plan.blocks[0].influence == pytest.approx(0, abs=1e-6)
    other = _token_feeds(path, 2, 3)
    (before,), (after,) = _run(str(path), other), _run(result.model, other)
    assert _rel(after, before) <= RTOL


@pytest.mark.parametrize("name,exporter,ratio", [("vit", "dynamo", 0.3), ("vit", "legacy", 0.3), ("gpt2", "dynamo", None),
                                                 ("gpt2", "legacy", None), ("llama", "dynamo", None), ("llama", "legacy", None)])
def test_transformer_handback_equals_pruned_onnx(exported, name, exporter, ratio):
    """Dropped attention / MLP blocks replaced by ZeroBranch modules in the HF / timm-style module:
    equal to the pruned ONNX (with MLP channel pruning too on the ViT, whose residual stream stays
    whole: its attention's `reshape(B, N, C)` fixes that width; channels with blocks on the HF
    models are covered by tests/test_transformer_handback.py)."""
    pytest.importorskip("transformers")
    from onnxprune.torch import apply_plan

    get, builders = exported
    path = get(name, exporter)
    module, inputs = builders[name]()
    m = onnxprune.load(path)
    plan = m.plan(drop_blocks=2, ratio=ratio, criterion="l1", data=_token_feeds(path, 0, 4))
    width = module.blocks[0].mlp[0].in_features if name == "vit" else None
    for gp in plan.groups:  # the timm-style ViT reshapes attention's output to the residual width
        if gp.channels == width:
            gp.keep = list(range(gp.channels))
    result = m.apply(plan)
    apply_plan(module, plan, inputs)
    with torch.no_grad():
        ours = module(*inputs).numpy()
    (theirs,) = _run(result.model, _torch_feeds(path, inputs))
    assert _rel(ours, theirs) <= RTOL


def test_handback_refuses_unmappable_block(exported):
    from onnxprune.torch import apply_plan

    get, builders = exported
    path = get("cnn", "dynamo")
    module, inputs = builders["cnn"]()
    plan = onnxprune.load(path).plan(drop_blocks=1)
    plan.blocks[0].module, plan.blocks[0].modules = "nowhere.7", []
    with pytest.raises(InputError, match="no module of this model is named by its branch's scope 'nowhere.7'"):
        apply_plan(module, plan, inputs)
    plan.blocks[0].module = None
    with pytest.raises(InputError, match="not computed by one module"):
        apply_plan(module, plan, inputs)
    with pytest.raises(InputError, match="pass example_inputs"):
        apply_plan(module, plan)
