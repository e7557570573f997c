"""Inputs that real models run on without --data (onnxprune/inputs.py), data fed in chunks of a
fixed batch, --input-shape, and the refusals (exit 2, one exact line, nothing written) for models
that cannot run or be verified; plus the other exit-1-is-a-bug fixes of issue 15.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handbuilt as hb  # noqa: E402
import realmodels  # noqa: E402
from conftest import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"


def _save(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _with_dims(model: onnx.ModelProto, dims: list) -> onnx.ModelProto:
    """The model with its first input's dims replaced (an int sets dim_value, a str dim_param)."""
    shape = model.graph.input[0].type.tensor_type.shape
    for d, value in zip(shape.dim, dims):
        d.Clear()
        if isinstance(value, int):
            d.dim_value = value
        elif value:
            d.dim_param = value
    return model


def width_bound(side: int) -> onnx.ModelProto:
    """Conv -> Relu -> MatMul over the last axis by a [side, 4] weight, with H and W declared
    dynamic: the model runs only where W == side (like a head exported for one input size)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "c1.w")
    w2 = numpy_helper.from_array(rng.standard_normal((side, 4)).astype(np.float32) * 0.1, "head.w")
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("MatMul", ["r1", "head.w"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "width_bound", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "H", 4])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def embedding() -> onnx.ModelProto:
    """Token ids -> Gather on a 50-row table -> MatMul: ids at or above 50 make onnxruntime fail."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "embedding", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 4])], [table, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def mystery_op() -> onnx.ModelProto:
    """hb.custom_domain with its contrib op replaced by one of a domain onnxruntime does not know."""
    model = hb.custom_domain()
    node = next(n for n in model.graph.node if n.domain == "com.microsoft")
    node.op_type, node.domain = "Mystery", "com.example"
    for opset in model.opset_import:
        if opset.domain == "com.microsoft":
            opset.domain = "com.example"
    return model


# --- dynamic dims, sizes, integer and 0-d inputs ---------------------------------------------------

def test_batch_stored_as_zero_is_refused_since_onnxruntime_takes_it_literally(tmp_path, capsys):
    model = _save(_with_dims(onnx.load(str(SAMPLE)), [0]), tmp_path)
    code, _, err = run_cli(capsys, "prune", model, "-o", tmp_path / "p.onnx", "--threshold", "0")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"onnxprune: error: {model}: the original model does not run on any size tried for input 'x' ")


@pytest.mark.parametrize("batch", [-1, None])
def test_batch_stored_as_minus_one_or_nothing_is_dynamic(batch, tmp_path, capsys):
    model = _save(_with_dims(onnx.load(str(SAMPLE)), [batch]), tmp_path)
    out = tmp_path / "p.onnx"
    code, _, err = run_cli(capsys, "prune", model, "-o", out, "--threshold", "0")
    assert code == 0, err
    code, _, err = run_cli(capsys, "prune", model, "-o", tmp_path / "d.onnx", "--ratio", "0.3", "--data", CALIB)
    assert code == 0, err


def test_the_size_the_model_runs_at_is_found(tmp_path, capsys):
    import onnxprune
    from onnxprune.inputs import choose_inputs

    path = _save(width_bound(32), tmp_path)
    model = onnxprune.load(path)
    chosen = choose_inputs(model.index, {}, path)
    assert chosen.feeds["x"].shape == (2, 3, 32, 32)  # 224 fails first
    code, _, err = run_cli(capsys, "prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5")
    assert code == 0, err


def test_size_hint_in_metadata_comes_first(tmp_path):
    import onnxprune
    from onnxprune.inputs import choose_inputs

    model = width_bound(24)
    model.metadata_props.add(key="imgsz", value="[24, 24]")  # as ultralytics writes it
    path = _save(model, tmp_path)
    pm = onnxprune.load(path)
    assert choose_inputs(pm.index, {}, path).feeds["x"].shape == (2, 3, 24, 24)


def test_a_model_that_runs_at_no_size_tried_is_refused_naming_the_input(tmp_path, capsys):
    path = _save(width_bound(7), tmp_path)
    out = tmp_path / "p.onnx"
    code, _, err = run_cli(capsys, "prune", path, "-o", out, "--ratio", "0.5")
    assert code == 2
    assert err.startswith(f"onnxprune: error: {path}: the original model does not run on any size tried for input 'x' "
                          "(x:2x3x224x224; x:2x3x32x32; x:2x3x320x320; ...: ")
    assert err.endswith("; pass --input-shape x:Nx3xSxS with the sizes it runs at, or --data\n") and err.count("\n") == 1
    assert not out.exists()
    code, _, err = run_cli(capsys, "prune", path, "-o", out, "--ratio", "0.5", "--input-shape", "x:1x3x7x7")
    assert code == 0, err


@pytest.mark.parametrize("spec, message", [
    ("y:1x3x8x8", "--input-shape: the model has no input 'y' (inputs: x)"),
    ("x:1x3x8", "--input-shape x: 3 dimensions given, the input has 4"),
    ("x:1x4x8x8", "--input-shape x: axis 1 is fixed at 3 in the model, got 4"),
])
def test_input_shape_is_checked_against_the_model(spec, message, tmp_path, capsys):
    path = _save(width_bound(8), tmp_path)
    code, _, err = run_cli(capsys, "prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--input-shape", spec)
    assert (code, err) == (2, f"onnxprune: error: {path}: {message}\n")
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("spec", ["x", "x:1xax3", "x:1x0x3", ":1x3"])
def test_malformed_input_shape(spec, tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", SAMPLE, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--input-shape", spec)
    assert code == 2 and err.startswith(f"onnxprune: error: options: --input-shape '{spec}': ")


def test_token_ids_stay_below_the_embedding_table(tmp_path, capsys):
    import onnxprune
    from onnxprune.inputs import choose_inputs

    path = _save(embedding(), tmp_path)
    ids = choose_inputs(onnxprune.load(path).index, {}, path).feeds["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 1


def text_encoder(vocab: int = 50, width: int = 4) -> onnx.ModelProto:
    """A text model's inputs as exporters write them: `input_ids`, `attention_mask` and
    `token_type_ids`, all [batch, sequence]; the ids are flattened before the embedding Gather (the
    legacy exporter's GPT-2 does `view(-1, seq)`), the mask is cast and multiplied in."""
    rng = np.random.default_rng(0)
    names = ("input_ids", "attention_mask", "token_type_ids")
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", width])
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, width)).astype(np.float32), "tokens"),
             numpy_helper.from_array(rng.standard_normal((2, width)).astype(np.float32), "types"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             numpy_helper.from_array(np.array([width], np.int64), "width"),
             numpy_helper.from_array(np.array([2], np.int64), "last")]
    nodes = [helper.make_node("Reshape", ["input_ids", "flat"], ["ids_flat"]),
             helper.make_node("Gather", ["tokens", "ids_flat"], ["tok_flat"]),
             helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
             helper.make_node("Concat", ["ids_shape", "width"], ["emb_shape"], axis=0),
             helper.make_node("Reshape", ["tok_flat", "emb_shape"], ["tok"]),
             helper.make_node("Gather", ["types", "token_type_ids"], ["typ"]),
             helper.make_node("Add", ["tok", "typ"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["y"])]
    graph = helper.make_graph(nodes, "text", inputs, [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("given", [{}, {"input_ids": (1, 16)}])
def test_text_model_inputs_are_valid_and_share_the_sequence_length(given, tmp_path):
    """Token ids below the embedding table (also when they are reshaped before the Gather), token
    types below their table, attention masks of ones, and every [batch, sequence] input at the size
    `--input-shape` gives one of them (the mask of a 1x16 input_ids is 1x16, not 2x16)."""
    import onnxprune
    from onnxprune.inputs import choose_inputs

    path = _save(text_encoder(), tmp_path)
    feeds = choose_inputs(onnxprune.load(path).index, given, path).feeds
    shape = given.get("input_ids", feeds["input_ids"].shape)
    assert {name: v.shape for name, v in feeds.items()} == dict.fromkeys(feeds, tuple(shape))
    ids = feeds["input_ids"]
    assert ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 1
    assert np.all(feeds["attention_mask"] == 1)
    assert feeds["token_type_ids"].min() >= 0 and feeds["token_type_ids"].max() < 2


def test_text_model_sequence_length_from_the_cli(tmp_path, capsys):
    """`prune --input-shape input_ids:1x16` verifies at 1x16 for every text input, exit 0."""
    path = _save(text_encoder(), tmp_path)
    code, out, err = run_cli(capsys, "prune", str(path), "--threshold", "0", "--input-shape", "input_ids:1x16",
                             "-o", str(tmp_path / "out.onnx"))
    assert code == 0, err
    assert (tmp_path / "out.onnx").exists()


def test_custom_choice_of_a_scalar_input_and_0d_data_on_a_vad_net(tmp_path, capsys):
    """silero-vad: the whole body inside If, chosen by Equal(sr, 16000); `sr` is a 0-d int64."""
    path = realmodels.locate("silero-vad")
    if path is None:
        pytest.skip("silero-vad is not installed (pip install '.[test]')")
    import onnxprune
    from onnxprune.inputs import choose_inputs

    assert int(choose_inputs(onnxprune.load(path).index, {}, path).feeds["sr"]) == 16000
    rng = np.random.default_rng(0)
    data = tmp_path / "vad.npz"
    np.savez(data, input=rng.standard_normal((3, 512)).astype(np.float32), state=np.zeros((2, 3, 128), np.float32),
             sr=np.array(16000, dtype=np.int64))
    code, out, err = run_cli(capsys, "prune", path, "-o", tmp_path / "p.onnx", "--threshold", "0", "--data", data)
    assert code == 0, err
    assert "channels removed: 0" in out  # nothing outside the If to prune; said, not crashed
    code, out, err = run_cli(capsys, "inspect", path)
    assert code == 0, err
    assert ("control flow: 1 node(s) hold subgraphs (If_0); only the layers outside them are analysed and pruned; "
            "nothing outside is prunable\n") in out


# --- data for a model whose batch is fixed at 1 ----------------------------------------------------

@pytest.fixture
def batch_one(tmp_path) -> tuple[Path, Path]:
    """The digits model with its batch fixed at 1 (as most exports are) and 12 calibration samples."""
    model = _save(_with_dims(onnx.load(str(SAMPLE)), [1]), tmp_path)
    calib = dict(np.load(CALIB))
    data = tmp_path / "calib.npz"
    np.savez(data, **{k: v[:12] for k, v in calib.items()})
    return model, data


def test_data_is_fed_in_chunks_of_a_fixed_batch_in_every_command(batch_one, tmp_path, capsys):
    model, data = batch_one
    code, _, err = run_cli(capsys, "prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--data", data,
                           "--criterion", "activation", "--plan-out", tmp_path / "plan.json")
    assert code == 0, err
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "plan.json", "-o", tmp_path / "a.onnx", "--data", data)
    assert code == 0, err
    code, _, err = run_cli(capsys, "sensitivity", model, "--data", data, "-o", tmp_path / "s.json", "--ratios", "0.5")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sparsify", model, "-o", tmp_path / "sp.onnx", "--sparsity", "0.5", "--data", data)
    assert code == 0, err
    code, _, err = run_cli(capsys, "quantize", model, "-o", tmp_path / "q.onnx", "--data", data, "--runs", "3")
    assert code == 0, err


def test_data_not_a_multiple_of_the_fixed_batch_is_refused(tmp_path, capsys):
    model = _save(_with_dims(onnx.load(str(SAMPLE)), [4]), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.load(CALIB)["x"][:6])
    code, _, err = run_cli(capsys, "prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--data", data)
    assert (code, err) == (2, f"onnxprune: error: {data}: input 'x' has size 6 on axis 0, the model expects 4 "
                              "(or a multiple of 4, fed in chunks)\n")


# --- exit 1 only for bugs ------------------------------------------------------------------------

def test_an_op_onnxruntime_does_not_know_is_inspected_and_refused_for_pruning(tmp_path, capsys):
    path = _save(mystery_op(), tmp_path)
    code, out, err = run_cli(capsys, "inspect", path)
    assert code == 0, err
    assert "blocked by com.example::Mystery at node 'ms_gelu'" in out
    out_path = tmp_path / "p.onnx"
    code, _, err = run_cli(capsys, "prune", path, "-o", out_path, "--ratio", "0.5")
    assert code == 2
    assert err.startswith(f"onnxprune: error: {path}: onnxruntime cannot load the model, so no pruned model could be "
                          "verified (") and "Mystery" in err and err.count("\n") == 1
    assert not out_path.exists()


@pytest.mark.parametrize("command", ["prune", "sparsify"])
def test_output_naming_an_existing_folder(command, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    how = ["--ratio", "0.3"] if command == "prune" else ["--sparsity", "0.5"]
    code, _, err = run_cli(capsys, command, SAMPLE, "-o", folder, *how)
    assert (code, err) == (2, f"onnxprune: error: {folder}: is a folder; give the path of a file to write\n")
    assert list(tmp_path.iterdir()) == [folder] and not any(folder.iterdir())


def test_binary_plan_file(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    code, _, err = run_cli(capsys, "apply", SAMPLE, plan, "-o", tmp_path / "p.onnx")
    assert (code, err) == (2, f"onnxprune: error: {plan}: not a plan file (not UTF-8 JSON text)\n")
    assert not (tmp_path / "p.onnx").exists()


def test_binary_sensitivity_file(tmp_path, capsys):
    sens = tmp_path / "sens.json"
    sens.write_bytes(b"\xff\xfe\x00binary")
    code, _, err = run_cli(capsys, "prune", SAMPLE, "-o", tmp_path / "p.onnx", "--sensitivity", sens, "--target-macs", "0.5")
    assert (code, err) == (2, f"onnxprune: error: {sens}: not a sensitivity file (not UTF-8 JSON text)\n")
    assert not (tmp_path / "p.onnx").exists()


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "onnxprune.cli", "inspect", str(SAMPLE)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    process.stdout.close()  # like `| head` having read all it wanted
    err = process.stderr.read().decode()
    assert process.wait() == 0 and err == ""


def test_sensitivity_plot_checks_for_matplotlib_before_the_analysis(tmp_path, capsys, monkeypatch):
    import onnxprune.sensitivity

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    analysed = []
    monkeypatch.setattr(onnxprune.sensitivity, "analyse", lambda *a, **k: analysed.append(1))
    code, _, err = run_cli(capsys, "sensitivity", SAMPLE, "--data", CALIB, "-o", tmp_path / "s.json", "--plot", tmp_path / "s.png")
    assert (code, err) == (2, "onnxprune: error: options: --plot needs matplotlib (pip install 'onnxprune[plot]')\n")
    assert not analysed and not (tmp_path / "s.json").exists()


def test_ncnn_load_failure_is_reported_with_ncnns_message(tmp_path):
    pytest.importorskip("ncnn")
    from onnxprune.deploy.ncnn import NcnnFiles, load_net
    from onnxprune.errors import InputError

    param, weights = tmp_path / "m.ncnn.param", tmp_path / "m.ncnn.bin"
    param.write_text("7767517\n2 2\nInput in0 0 1 in0\nTensor.slice slice_0 1 1 in0 out0\n")
    weights.write_bytes(b"")
    with pytest.raises(InputError) as caught:
        load_net(NcnnFiles(param, weights), source=Path("m.onnx"))
    assert str(caught.value).startswith("m.onnx: ncnn cannot load the converted model (layer Tensor.slice not exists")
    assert caught.value.exit_code == 2


def flatten_head(side: int) -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm sized for side x side inputs, H and W declared symbolic."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "c1.w")
    w2 = numpy_helper.from_array(rng.standard_normal((10, 8 * side * side)).astype(np.float32) * 0.01, "fc.w")
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Flatten", ["r1"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "flatten_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def test_flatten_over_symbolic_spatial_dims_is_no_internal_error(tmp_path, capsys):
    path = _save(flatten_head(32), tmp_path)
    code, _, err = run_cli(capsys, "inspect", path)
    assert code == 0, err
    code, _, err = run_cli(capsys, "prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5")
    assert code == 0, err
