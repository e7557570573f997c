"""Sensitivity analysis: mask-based evaluation equals real pruning, results are deterministic,
resumable and parallel-safe, and allocation from them meets targets and beats uniform."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.errors import InputError
from onnxprune.sensitivity import METRICS, Evaluator, EvalSetup, Sensitivity, analyse, candidate_keep, masked_model
from onnxprune.runtime import make_session

import zoo

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits_cnn.onnx"
CALIB = np.load(ROOT / "models" / "digits_calib.npz")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sens")
    cases = {}
    for name, exporter in (("resnet", "dynamo"), ("mobilenetv3", "legacy"), ("densenet", "dynamo_noopt"), ("vgg", "dynamo")):
        module, example = zoo.MODELS[name]()
        cases[f"{name}-{exporter}"] = zoo.export(module, example, folder / f"{name}_{exporter}.onnx", exporter)
    return cases


def synthetic(model: onnxprune.PrunableModel, n: int = 12) -> dict[str, np.ndarray]:
    from onnxprune.data import synthetic_inputs

    return synthetic_inputs(model.index, batch=n, seed=1)


@pytest.mark.parametrize("case", ["resnet-dynamo", "mobilenetv3-legacy", "densenet-dynamo_noopt", "vgg-dynamo"])
def test_masked_evaluation_equals_really_pruning_the_group(case: str, exported):
    model = onnxprune.load(exported[case])
    feeds = synthetic(model)
    scores = model.importance("l1")
    groups = model.groups
    setup = EvalSetup(masked_model(model.depgraph, [g.id for g in groups]).SerializeToString(), feeds,
                      {g.id: g.n_channels for g in groups}, None, "mse", 5, 1)
    evaluator = Evaluator(setup)
    original = make_session(model.model).run(None, feeds)
    assert np.allclose(evaluator.reference[0], original[0], rtol=1e-5, atol=1e-6)
    from onnxprune.surgery import apply_keep

    for group in groups:
        keep = candidate_keep(scores[group.id], 0.5, group)
        masked = evaluator.run({group.id: keep.astype(np.float32)})
        pruned = make_session(apply_keep(model.depgraph, {group.id: keep})).run(None, feeds)
        scale = np.abs(pruned[0]).max()
        assert np.abs(masked[0] - pruned[0]).max() <= 1e-5 * scale, f"group {group.id}"


def test_analysis_is_deterministic_and_parallel_safe(exported, tmp_path: Path):
    model = onnxprune.load(exported["resnet-dynamo"])
    feeds = synthetic(model)
    one = analyse(model, feeds, metric="cosine", ratios=[0.25, 0.5], out=tmp_path / "a.json")
    again = analyse(onnxprune.load(exported["resnet-dynamo"]), feeds, metric="cosine", ratios=[0.25, 0.5], out=tmp_path / "b.json")
    two = analyse(onnxprune.load(exported["resnet-dynamo"]), feeds, metric="cosine", ratios=[0.25, 0.5], workers=2,
                  out=tmp_path / "c.json")
    assert one.groups == again.groups
    for gid in one.groups:
        for r, loss in one.groups[gid].losses.items():
            assert two.groups[gid].losses[r] == pytest.approx(loss, rel=1e-6, abs=1e-9)
    assert all(len(g.losses) == 2 for g in one.groups.values())
    # losses grow with the ratio for this model: removing more channels hurts at least as much
    assert sum(g.losses[0.5] >= g.losses[0.25] for g in one.groups.values()) >= len(one.groups) - 1


class Interrupt(Exception):
    pass


def test_interrupted_analysis_resumes_without_losing_results(exported, tmp_path: Path):
    model = onnxprune.load(exported["vgg-dynamo"])
    feeds = synthetic(model)
    calls = {"n": 0}

    def fragile_mse(ref, out, labels):
        calls["n"] += 1
        if calls["n"] > 4:
            raise Interrupt
        return METRICS["mse"](ref, out, labels)

    fragile_mse.__name__ = "mse-custom"
    path = tmp_path / "sens.json"
    with pytest.raises(Interrupt):
        analyse(model, feeds, metric=fragile_mse, ratios=[0.3, 0.6], out=path)
    saved = Sensitivity.read(path)
    assert sum(len(g.losses) for g in saved.groups.values()) == 4

    def steady_mse(ref, out, labels):
        calls["n"] += 1
        return METRICS["mse"](ref, out, labels)

    steady_mse.__name__ = "mse-custom"
    calls["n"] = 0
    resumed = analyse(model, feeds, metric=steady_mse, ratios=[0.3, 0.6], out=path)
    assert calls["n"] == 2 * len(model.groups) - 4  # only the missing candidates ran
    fresh = analyse(onnxprune.load(exported["vgg-dynamo"]), feeds, metric="mse", ratios=[0.3, 0.6], out=tmp_path / "f.json")
    for gid in fresh.groups:
        for r, loss in fresh.groups[gid].losses.items():
            assert resumed.groups[gid].losses[r] == pytest.approx(loss, rel=1e-6)


def test_ray_backend_gives_the_same_results(exported, tmp_path: Path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'onnxprune[ray]')")
    model = onnxprune.load(exported["vgg-dynamo"])
    feeds = synthetic(model)
    local = analyse(model, feeds, metric="mse", ratios=[0.5], out=tmp_path / "l.json")
    remote = analyse(onnxprune.load(exported["vgg-dynamo"]), feeds, metric="mse", ratios=[0.5], workers=2, backend="ray",
                     out=tmp_path / "r.json")
    assert not ray.is_initialized()
    for gid in local.groups:
        assert remote.groups[gid].losses[0.5] == pytest.approx(local.groups[gid].losses[0.5], rel=1e-6)


def test_digits_sensitivity_allocation_beats_uniform_and_meets_the_target(tmp_path: Path):
    model = onnxprune.load(DIGITS)
    feeds = {"x": CALIB["x"]}
    sens = analyse(model, feeds, metric="top1-agreement", out=tmp_path / "s.json")
    session_x = CALIB["x"]

    def accuracy(result) -> float:
        out = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": session_x})[0]
        return float(np.mean(out.argmax(1) == CALIB["labels"]))

    for target in (0.5, 0.7):
        by_sens = model.apply(model.plan(target_macs=target, sensitivity=sens))
        uniform = model.apply(model.plan(target_macs=target))
        achieved = by_sens.after.macs / by_sens.before.macs
        assert abs(achieved - target) <= 0.01 * target
        assert abs(uniform.after.macs / uniform.before.macs - achieved) <= 0.02
        assert accuracy(by_sens) >= accuracy(uniform)
    within = model.plan(max_loss=0.02, sensitivity=sens)
    chosen = within.options["sensitivity_ratios"]
    for gid, ratio in chosen.items():
        ratios, losses = sens.curve(int(gid))
        assert np.interp(ratio, ratios, losses) <= 0.02


def test_cli_table_plot_and_resume(tmp_path: Path):
    from onnxprune.cli import main

    out = tmp_path / "s.json"
    assert main(["sensitivity", str(DIGITS), "--data", str(ROOT / "models" / "digits_calib.npz"), "--metric", "accuracy",
                 "--ratios", "0.3,0.6", "-o", str(out), "--plot", str(tmp_path / "s.png")]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "onnxprune.sensitivity" and doc["metric"] == "accuracy" and doc["baseline"] > 0.95
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["prune", str(DIGITS), "-o", str(tmp_path / "p.onnx"), "--sensitivity", str(out), "--target-macs", "0.6",
                 "--plot", str(tmp_path / "alloc.png")]) == 0
    assert (tmp_path / "alloc.png").exists()


def test_cli_metric_of_the_users_own(tmp_path: Path, capsys):
    """--metric FILE.py:FUNCTION (or MODULE:FUNCTION) measures with the user's loss (a detector's
    lost boxes, say): one written as top-1 disagreement gives the built-in metric's figures; a
    missing file, module or function is one line and exit 2, with nothing written."""
    from onnxprune.cli import main

    metric_file = tmp_path / "my_metric.py"
    metric_file.write_text("import numpy as np\n"
                           "def changed(reference, candidate, labels):\n"
                           "    return float(np.mean(reference[0].argmax(1) != candidate[0].argmax(1)))\n"
                           "def broken(reference, candidate, labels):\n"
                           "    return reference[5]\n")
    data = str(ROOT / "models" / "digits_calib.npz")
    mine, builtin = tmp_path / "mine.json", tmp_path / "builtin.json"
    assert main(["sensitivity", str(DIGITS), "--data", data, "--metric", f"{metric_file}:changed", "--ratios", "0.3,0.6",
                 "-o", str(mine)]) == 0
    assert main(["sensitivity", str(DIGITS), "--data", data, "--ratios", "0.3,0.6", "-o", str(builtin)]) == 0
    a, b = Sensitivity.read(mine), Sensitivity.read(builtin)
    assert a.metric == "changed"
    assert {g: e.losses for g, e in a.groups.items()} == {g: e.losses for g, e in b.groups.items()}
    assert any(loss > 0 for e in a.groups.values() for loss in e.losses.values())
    capsys.readouterr()
    for spec, message in ((f"{tmp_path / 'absent.py'}:changed", "metric file not found"),
                          (f"{metric_file}:absent", "no function 'absent'"),
                          ("no_such_module_here:f", "cannot import the metric's module"),
                          ("psnr", "unknown metric 'psnr'"),
                          (f"{metric_file}:broken", "the metric failed (IndexError")):
        out = tmp_path / "refused.json"
        assert main(["sensitivity", str(DIGITS), "--data", data, "--metric", spec, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_bad_inputs(tmp_path: Path, exported, capsys):
    from onnxprune.cli import main

    model = onnxprune.load(DIGITS)
    with pytest.raises(InputError, match="3 labels for 360 samples"):
        analyse(model, {"x": CALIB["x"]}, labels=np.zeros(3, dtype=np.int64), metric="accuracy")
    other = tmp_path / "other.json"
    analyse(onnxprune.load(exported["vgg-dynamo"]), synthetic(onnxprune.load(exported["vgg-dynamo"])), metric="mse",
            ratios=[0.5], out=other)
    code = main(["prune", str(DIGITS), "-o", str(tmp_path / "p.onnx"), "--sensitivity", str(other), "--target-macs", "0.5"])
    assert code == 2 and "another model" in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists()
    np.save(tmp_path / "bad.npy", np.zeros((4, 1, 8, 9), np.float32))
    code = main(["sensitivity", str(DIGITS), "--data", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "s.json")])
    assert code == 2 and "size 9 on axis 3" in capsys.readouterr().err


def test_sensitivity_allocation_honours_round_to_ignore_and_max_ratio(tmp_path: Path):
    """--round-to, --ignore and --max-ratio used to be dropped silently with --sensitivity (the
    digits CNN came out 32->29 with --round-to 8)."""
    model = onnxprune.load(DIGITS)
    sens = analyse(model, {"x": CALIB["x"]}, metric="top1-agreement", ratios=[0.25, 0.5, 0.75], out=tmp_path / "s.json")
    rounded = model.plan(target_macs=0.5, sensitivity=sens, round_to=8)
    assert all(len(g.keep) % 8 == 0 for g in rounded.groups), [len(g.keep) for g in rounded.groups]
    assert rounded.summary["macs"][1] <= 0.505 * rounded.summary["macs"][0]
    first = next(g for g in rounded.groups if g.channels == 32)
    spared = model.plan(target_macs=0.6, sensitivity=sens, ignore=["features\\.0\\.weight"])
    assert next(g for g in spared.groups if g.id == first.id).removed == 0
    capped = model.plan(target_macs=0.6, sensitivity=sens, max_ratio=0.5)
    assert all(g.removed <= 0.5 * g.channels for g in capped.groups)
    assert all(r <= 0.5 for r in capped.options["sensitivity_ratios"].values())


def test_sensitivity_after_reconstruction(tmp_path):
    """With reconstruct, a candidate's loss is that of the group cut and its consumers re-fitted
    (the model `prune --reconstruct` writes): lower than plain pruning's where the fit repairs,
    and the same number as re-fitting by hand."""
    from onnxprune.recovery import ReconstructOptions, reconstruct
    from onnxprune.surgery import apply_keep

    model = onnxprune.load(DIGITS)
    feeds, labels = {"x": CALIB["x"][:160]}, CALIB["labels"][:160]
    plain = analyse(model, feeds, labels, "mse", [0.5, 0.8])
    fitted = analyse(model, feeds, labels, "mse", [0.5, 0.8], out=tmp_path / "sens.json", reconstruct=True)
    assert fitted.reconstruct and Sensitivity.read(tmp_path / "sens.json").reconstruct
    gains = [plain.groups[g].losses[r] - fitted.groups[g].losses[r] for g in plain.groups for r in (0.5, 0.8)]
    assert sum(g > 0 for g in gains) > len(gains) // 2, gains  # reconstruction repairs most candidates
    group = model.groups[0]
    keep = candidate_keep(model.importance("l1")[group.id], 0.8, group)
    pruned = apply_keep(model.depgraph, {group.id: keep})
    reconstruct(model.model, pruned, model.depgraph, {group.id: keep}, feeds, ReconstructOptions())
    reference = make_session(model.model).run(None, feeds)
    by_hand = METRICS["mse"](reference, make_session(pruned).run(None, feeds), labels)
    assert fitted.groups[group.id].losses[0.8] == pytest.approx(by_hand, rel=1e-4)
    with pytest.raises(InputError, match="reconstruct"):  # a plain analysis does not resume a reconstructed one
        analyse(model, feeds, labels, "mse", [0.5, 0.8], out=tmp_path / "sens.json")
    plan = model.plan("l1", sensitivity=tmp_path / "sens.json", target_macs=0.5)  # allocation reads it as any analysis
    assert abs(plan.summary["macs"][1] / plan.summary["macs"][0] - 0.5) <= 0.01
