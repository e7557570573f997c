"""Deployment path: ncnn export (pnnx + ncnn) of pruned models checked against onnxruntime,
onnxslim before and after pruning, int8 quantization (fidelity, keep-float) and the bench command.

pnnx, ncnn and onnxslim are optional extras: a test that needs one skips, naming the missing package.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune
from conftest import Case, check_runnable, input_feeds, rel_error, run_cli, session

ROOT = Path(__file__).resolve().parents[1]
DIGITS, DIGITS_DATA = ROOT / "models" / "digits_cnn.onnx", ROOT / "models" / "digits_calib.npz"
NCNN_CASES = [Case("resnet", "dynamo"), Case("mobilenetv2", "legacy"), Case("mobilenetv3", "legacy"), Case("resnext", "legacy"),
              Case("unet", "legacy"), Case("densenet", "legacy"), Case("prelu_layerscale", "legacy"), Case("convnext_ln", "legacy"),
              Case("tf_cnn"), Case("tf_gap"), Case("paddle_cnn"), Case("paddle_gap")]


def need(*modules: str) -> None:
    """Skip (never pass silently) when an optional package is missing."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"optional package '{module}' is not installed (pip install {module})")


def ncnn_outputs(param: Path, weights: Path, x: np.ndarray) -> np.ndarray:
    """Run an ncnn model in fp32 on each sample of x, written without onnxprune's helpers."""
    import ncnn

    outs = []
    for sample in x:
        net = ncnn.Net()
        for flag in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
            setattr(net.opt, flag, False)
        assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
        ex = net.create_extractor()
        ex.input(net.input_names()[0], ncnn.Mat(np.ascontiguousarray(sample)).clone())
        status, out = ex.extract(net.output_names()[0])
        assert status == 0
        outs.append(np.array(out))
    return np.stack(outs)


@pytest.mark.parametrize("case", NCNN_CASES, ids=lambda c: c.id)
def test_pruned_model_runs_in_ncnn_like_onnxruntime(case, case_path, tmp_path, capsys):
    need("pnnx", "ncnn")
    pruned = tmp_path / "pruned.onnx"
    code, _, err = run_cli(capsys, "prune", case_path(case), "-o", pruned, "--target-macs", "0.6", "--round-to", "4")
    assert code == 0, err
    code, out, err = run_cli(capsys, "export-ncnn", pruned, tmp_path / "ncnn", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["max_rel_error"] <= 1e-4
    model = onnx.load(str(pruned))
    x = input_feeds(model, 2, seed=7)
    reference = session(pruned).run(None, x)[0]
    got = ncnn_outputs(Path(report["param"]), Path(report["bin"]), next(iter(x.values())))
    assert rel_error(reference, got.reshape(reference.shape)) <= 1e-4


def test_export_ncnn_fp16_and_bad_input(tmp_path, capsys):
    need("pnnx", "ncnn")
    code, out, err = run_cli(capsys, "export-ncnn", DIGITS, tmp_path / "fp16", "--fp16", "--json")
    assert code == 0, err
    assert json.loads(out)["max_rel_error"] <= 2e-2
    assert Path(json.loads(out)["bin"]).stat().st_size < DIGITS.with_name(DIGITS.name + ".data").stat().st_size * 0.6
    for bad in (["--inputshape", "1,1,8"], ["--inputshape", "a,b"]):
        code, _, err = run_cli(capsys, "export-ncnn", DIGITS, tmp_path / "bad", *bad)
        assert code == 2 and err.count("\n") == 1 and not (tmp_path / "bad").exists(), err


def test_optional_extras_are_optional(tmp_path):
    """onnxprune imports and prunes with pnnx, ncnn and onnxslim unimportable; the commands that need
    them fail with one line naming the package."""
    script = f"""
import sys
for name in ("ncnn", "pnnx", "onnxslim"):
    sys.modules[name] = None
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name in ("ncnn", "pnnx", "onnxslim") else real(name, *a)
import os
os.environ["PATH"] = ""
from onnxprune.cli import main
assert main(["prune", r"{DIGITS}", "-o", r"{tmp_path / 'p.onnx'}", "--target-macs", "0.5"]) == 0
assert main(["prune", r"{DIGITS}", "-o", r"{tmp_path / 's.onnx'}", "--target-macs", "0.5", "--simplify"]) == 2
assert main(["export-ncnn", r"{DIGITS}", r"{tmp_path / 'n'}"]) == 2
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "'onnxslim'" in proc.stderr and "'pnnx'" in proc.stderr
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "n").exists()


def test_simplify_after_pruning(tmp_path, capsys):
    need("onnxslim")
    out = tmp_path / "slim.onnx"
    code, _, err = run_cli(capsys, "prune", DIGITS, "-o", out, "--target-macs", "0.5", "--simplify", "--data", DIGITS_DATA)
    assert code == 0, err
    check_runnable(onnx.load(str(DIGITS)), out)


@pytest.mark.parametrize("case", [Case("resnet", "dynamo"), Case("mobilenetv2", "legacy"), Case("tf_cnn")], ids=lambda c: c.id)
def test_prune_a_slimmed_model(case, case_path, tmp_path):
    """Simplifying first must not stop pruning (nor break the result) on these models."""
    need("onnxslim")
    from onnxprune.deploy.simplify import simplify

    original = onnxprune.load(case_path(case))
    slimmed = onnxprune.PrunableModel(simplify(original.model))
    assert slimmed.inspect()["prunable_macs"] == pytest.approx(original.inspect()["prunable_macs"])
    result = slimmed.prune(target_macs=0.5)
    assert result.after.macs <= 0.51 * result.before.macs
    onnxprune.save(result.model, tmp_path / "p.onnx")
    check_runnable(original.model, tmp_path / "p.onnx")


def weight_is_quantized(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return node.op_type in ("QLinearConv", "QGemm", "QLinearMatMul") or producers.get(node.input[1]) == "DequantizeLinear"


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_quantize_keeps_first_and_last_float(fmt, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    code, text, err = run_cli(capsys, "quantize", DIGITS, "-o", out, "--data", DIGITS_DATA, "--format", fmt,
                              "--per-channel", "--keep-float", "first,last", "--runs", "5", "--json")
    assert code == 0, err
    report = json.loads(text)
    fidelity = report["fidelity"]
    print(f"\n{fmt}: {fidelity}")
    assert fidelity["samples"] == 360 and fidelity["top1_agreement"] >= 0.97
    assert fidelity["accuracy_after"] >= fidelity["accuracy_before"] - 0.02
    quantized = onnx.load(str(out))
    weighted = [n for n in quantized.graph.node if n.op_type in ("Conv", "Gemm", "QLinearConv", "QGemm", "QLinearMatMul", "MatMul")]
    kept = [n for n in weighted if not weight_is_quantized(quantized, n)]
    assert {n.name for n in kept} == set(report["kept_float"]) == {"node_Conv_51", "node_linear_1"}
    assert sorted(n.op_type for n in kept) == ["Conv", "Gemm"]
    assert sum(weight_is_quantized(quantized, n) for n in weighted) == 3
    x = np.load(DIGITS_DATA)["x"][:3]
    assert session(out).run(None, {"x": x})[0].shape == (3, 10)
    assert [t["model"] for t in report["latency"]] == ["digits_cnn.onnx", "int8.onnx"]


def test_quantize_dynamic_batch_random_calibration(case_path, tmp_path, capsys):
    model_path = case_path(Case("resnet", "dynamo"))
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((20, 3, 16, 16)).astype(np.float32))
    code, text, err = run_cli(capsys, "quantize", model_path, "-o", tmp_path / "q.onnx", "--data", data, "--runs", "3")
    assert code == 0, err
    assert "top-1 agreement" in text and "accuracy" not in text
    assert session(tmp_path / "q.onnx").run(None, {"x": np.zeros((5, 3, 16, 16), np.float32)})[0].shape[0] == 5
    code, _, err = run_cli(capsys, "quantize", model_path, "-o", tmp_path / "r.onnx", "--data", data, "--keep-float", "nope")
    assert code == 2 and "nope" in err and not (tmp_path / "r.onnx").exists()


def test_bench_prints_ratios(tmp_path, capsys):
    pruned = tmp_path / "pruned.onnx"
    assert run_cli(capsys, "prune", DIGITS, "-o", pruned, "--target-macs", "0.5")[0] == 0
    code, text, err = run_cli(capsys, "bench", DIGITS, pruned, "--batch", "1,2", "--runs", "5")
    assert code == 0, err
    print("\n" + text)
    rows = [line.split() for line in text.splitlines() if line.endswith("x")]
    assert len(rows) == 4 and [r[-1] for r in rows if r[2] == DIGITS.name] == ["1.00x", "1.00x"]  # the reference, per batch
    ncnn_args = ["--ncnn"] if importlib.util.find_spec("ncnn") and importlib.util.find_spec("pnnx") else []
    code, text, err = run_cli(capsys, "bench", DIGITS, pruned, "--runs", "3", "--json", *ncnn_args)
    assert code == 0, err
    timings = json.loads(text)
    assert {t["engine"] for t in timings} == {"onnxruntime"} | ({"ncnn fp32", "ncnn fp16"} if ncnn_args else set())
    assert all(t["median_ms"] > 0 and t["speedup"] > 0 for t in timings)
    assert run_cli(capsys, "bench", DIGITS, "--batch", "0")[0] == 2
    if not ncnn_args:
        pytest.skip("ncnn part of bench not run: optional packages 'pnnx' and 'ncnn' are not installed")
