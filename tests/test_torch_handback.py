"""Hand-back to PyTorch: `apply_plan` slices the original module so that it equals the pruned ONNX
model, for every torch test model and all three exporter settings, and it still trains."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import onnxprune
from onnxprune.errors import InputError
from onnxprune.runtime import make_session
from onnxprune.torch import apply_masks, apply_plan, prune

import zoo

# The legacy exporter deduplicates equal initializers behind an Identity alias; that alias names
# no module, so the hand-back refuses it (and says so) instead of guessing.
REFUSED = {("prelu_layerscale", "legacy"): "cannot map"}


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_apply_plan_matches_pruned_onnx_and_trains(name: str, exporter: str, tmp_path: Path):
    module, example = zoo.MODELS[name]()
    path = zoo.export(module, example, tmp_path / "m.onnx", exporter)
    model = onnxprune.load(path)
    plan = model.plan(ratio=0.4, criterion="random")
    result = model.apply(plan)
    if (name, exporter) in REFUSED:
        before = copy.deepcopy(module.state_dict())
        with pytest.raises(InputError, match=REFUSED[(name, exporter)]):
            apply_plan(module, plan, example)
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
        return
    apply_plan(module, plan, example)
    module.eval()
    with torch.no_grad():
        ours = module(*example).numpy()
    theirs = make_session(result.model).run(None, {"x": example[0].numpy()})[0]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5 * max(np.abs(theirs).max(), 1e-6)
    removed = sum(g.removed for g in plan.groups)
    n_params = sum(p.numel() for p in module.parameters())
    fresh, _ = zoo.MODELS[name]()
    assert removed == 0 or n_params < sum(p.numel() for p in fresh.parameters())
    # one fine-tuning step runs on the sliced module
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
    loss = module(*example).square().mean()
    loss.backward()
    optimizer.step()


def test_one_call_prune_reaches_the_target():
    module, example = zoo.MODELS["resnet"]()
    before = sum(p.numel() for p in module.parameters())
    module, plan = prune(module, example, target_macs=0.5)
    assert abs(plan.summary["macs"][1] / plan.summary["macs"][0] - 0.5) <= 0.005
    assert sum(p.numel() for p in module.parameters()) < before
    with torch.no_grad():
        assert module(*example).shape == (2, 10)


def test_plan_for_another_model_leaves_the_module_untouched(tmp_path: Path):
    source, example = zoo.MODELS["vgg"]()
    plan = onnxprune.load(zoo.export(source, example, tmp_path / "vgg.onnx", "dynamo")).plan(ratio=0.5)
    target, target_example = zoo.MODELS["resnet"]()
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(InputError) as error:
        apply_plan(target, plan, target_example)
    assert "plan" in str(error.value)
    after = target.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_plan_member_of_the_wrong_size_is_refused(tmp_path: Path):
    """A plan whose member sizes do not match the model names the mismatch instead of guessing."""
    module, example = zoo.MODELS["vgg"]()
    model = onnxprune.load(zoo.export(module, example, tmp_path / "v.onnx", "dynamo"))
    plan = model.plan(ratio=0.3)
    plan.groups[0].members[0].size += 1  # a size that matches neither model nor module
    with pytest.raises(InputError, match="has size"):
        model.apply(plan)


def test_masks_survive_an_optimizer_step():
    module, example = zoo.MODELS["resnet"]()
    name, param = next((n, p) for n, p in module.named_parameters() if p.dim() == 4)
    mask = (np.random.default_rng(0).random(tuple(param.shape)) > 0.5).astype(np.float32)
    handle = apply_masks(module, {name: mask})
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module.train()
    for _ in range(2):
        optimizer.zero_grad()
        module(*example).square().mean().backward()
        optimizer.step()
    value = dict(module.named_parameters())[name].detach().numpy()
    assert np.all(value[mask == 0] == 0) and np.any(value[mask == 1] != 0)
    handle.remove()


def test_iterative_prune_follows_the_schedule_and_calls_back():
    module, example = zoo.MODELS["vgg"]()
    calls = []

    def finetune(m, step):
        calls.append(step)
        m.train()
        torch.optim.SGD(m.parameters(), lr=1e-4).zero_grad()

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            return -float(m(*example).square().mean())

    from onnxprune.torch import iterative_prune

    pruned, history = iterative_prune(module, example, finetune, evaluate, target_macs=0.5, steps=3)
    assert calls == [1, 2, 3]
    reached = [h.macs for h in history]
    assert reached[0] == 1.0 and all(a > b for a, b in zip(reached, reached[1:]))
    assert abs(reached[-1] - 0.5) <= 0.02
    assert [round(h.target_macs, 3) for h in history] == [1.0, round(1 - 0.5 / 3, 3), round(1 - 1 / 3, 3), 0.5]


def test_masks_hold_with_momentum_accumulated_before_masking():
    """Momentum built up before the masks would move masked weights; the optimizer hook stops it."""
    module, example = zoo.MODELS["resnet"]()
    name, param = next((n, p) for n, p in module.named_parameters() if p.dim() == 4)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    module.train()
    optimizer.zero_grad()
    module(*example).square().mean().backward()
    optimizer.step()  # momentum buffers now non-zero everywhere
    mask = (np.random.default_rng(1).random(tuple(param.shape)) > 0.5).astype(np.float32)
    apply_masks(module, {name: mask}, optimizer)
    for _ in range(2):
        optimizer.zero_grad()
        module(*example).square().mean().backward()
        optimizer.step()
    assert np.all(dict(module.named_parameters())[name].detach().numpy()[mask == 0] == 0)
