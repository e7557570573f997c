"""A corpus of hostile and broken models, each generated here, for `inspect` and `prune`.

Every case must give exactly one line on stderr naming the file and the problem (the whole line is
asserted), exit code 2, no traceback (unless --debug), no output file, and an unchanged input.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handbuilt as hb  # noqa: E402
from conftest import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "models" / "digits_cnn.onnx"


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and os.access(p, os.R_OK)}


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    return folder / "m.onnx"


def _mutated(mutate: Callable[[onnx.ModelProto], None], build=hb.simple_chain) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        model = build()
        mutate(model)
        return _save(model, folder)
    return make


def _external(location: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        model = onnx.load(str(SAMPLE), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        return _save(model, folder)
    return make


def _symlink_escape(folder: Path) -> Path:
    outside = folder / "outside"
    inside = folder / "inside"
    outside.mkdir()
    inside.mkdir()
    shutil.copy(SAMPLE.with_name(SAMPLE.name + ".data"), outside / "w.data")
    (inside / "w.data").symlink_to(outside / "w.data")
    return _external("w.data")(inside)


def _add_model(w: onnx.TensorProto, x_dims=("N", 64)) -> onnx.ModelProto:
    """y = x + w, with w as given (possibly lying about its size)."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x_dims))], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _short_tensor(folder: Path) -> Path:
    w = numpy_helper.from_array(np.ones(64, np.float32), "w")
    w.raw_data = np.ones(10, np.float32).tobytes()
    return _save(_add_model(w), folder)


def _huge_tensor(folder: Path) -> Path:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**40])
    return _save(_add_model(w, ("N", 2**40)), folder)


def _huge_input(folder: Path) -> Path:
    return _save(_add_model(numpy_helper.from_array(np.ones(1, np.float32), "w"), ("N", 2**62)), folder)


def _cycle(model: onnx.ModelProto) -> None:
    """c1 reads the output of the pool node that (through r1) depends on c1."""
    model.graph.node[0].input[0] = next(n.output[0] for n in model.graph.node if n.name == "pool")


def _dangling(model: onnx.ModelProto) -> None:
    next(n for n in model.graph.node if n.name == "c2").input[0] = "nowhere"


def _duplicate(model: onnx.ModelProto) -> None:
    next(n for n in model.graph.node if n.name == "r1").output[0] = "bn1"


def _no_domain_import(model: onnx.ModelProto) -> None:
    del model.opset_import[1]


def _directory(folder: Path) -> Path:
    (folder / "m.onnx").mkdir()
    return folder / "m.onnx"


def _truncated(folder: Path) -> Path:
    data = hb.simple_chain().SerializeToString()
    (folder / "m.onnx").write_bytes(data[: len(data) // 2])
    return folder / "m.onnx"


def _not_onnx(folder: Path) -> Path:
    (folder / "m.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return folder / "m.onnx"


def _empty(folder: Path) -> Path:
    (folder / "m.onnx").write_bytes(b"")
    return folder / "m.onnx"


PARSE_FAILED = r"not an ONNX model \(protobuf parse failed: .+\)"
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    # name: (make the bad file in a folder, expected message after "<path>: " (a regex))
    "not_onnx": (_not_onnx, PARSE_FAILED),
    "empty": (_empty, re.escape("file is empty, not an ONNX model")),
    "truncated": (_truncated, PARSE_FAILED),
    "dangling_input": (_mutated(_dangling), re.escape("node 'c2' reads 'nowhere', which no node, initializer or graph input provides")),
    "cycle": (_mutated(_cycle), re.escape("the graph has a cycle (through node 'c1')")),
    "duplicate_output": (_mutated(_duplicate),
                         re.escape("tensor 'bn1' is produced more than once (again by node 'r1'); ONNX graphs assign every tensor once")),
    "opset_too_new": (_mutated(lambda m: setattr(m.opset_import[0], "version", 99)),
                      re.escape(f"opset 99 is newer than the installed onnx {onnx.__version__} knows "
                                f"(up to {onnx.defs.onnx_opset_version()}); upgrade onnx")),
    "custom_domain_not_imported": (_mutated(_no_domain_import, hb.custom_domain),
                                   re.escape("node 'ms_gelu' uses domain 'com.microsoft', which the model does not import (no opset_import entry)")),
    "external_data_missing": (_external("gone.data"), re.escape("external data file 'gone.data' is missing")),
    "external_data_absolute": (_external("/etc/passwd"), re.escape(
        "external data location '/etc/passwd' is an absolute path; only files inside the model's folder are read")),
    "external_data_dotdot": (_external("../digits_cnn.onnx.data"),
                             re.escape("external data location '../digits_cnn.onnx.data' escapes the model's folder")),
    "external_data_symlink": (_symlink_escape,
                              re.escape("external data location 'w.data' resolves outside the model's folder (symlink?)")),
    "tensor_size_mismatch": (_short_tensor, re.escape("tensor 'w' declares 64 elements but holds 10")),
    "huge_declared_tensor": (_huge_tensor, re.escape("tensor 'w' declares 1099511627776 elements but holds 0")),
    "huge_input_dim": (_huge_input, re.escape("graph input 'x' declares 4611686018427387904 elements, more than 2**32; too large to run")),
    "directory": (_directory, re.escape("is a directory, not an ONNX file")),
    "missing": (lambda folder: folder / "m.onnx", re.escape("no such file")),
}


def _args(command: str, model: Path, folder: Path) -> list:
    return [command, model] + (["-o", folder / "out" / "p.onnx", "--ratio", "0.3"] if command == "prune" else [])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["inspect", "prune"])
def test_bad_input_gives_one_exact_line(case: str, command: str, tmp_path: Path, capsys):
    make, message = CASES[case]
    model = make(tmp_path)
    before = folder_digest(tmp_path)
    code, out, err = run_cli(capsys, *_args(command, model, tmp_path))
    assert code == 2, err
    assert re.fullmatch(f"onnxprune: error: {re.escape(str(model))}: {message}\n", err), err
    assert out == ""
    assert not (tmp_path / "out").exists()
    assert folder_digest(tmp_path) == before


def test_debug_shows_the_traceback_and_the_same_line(tmp_path: Path, capsys):
    model = _short_tensor(tmp_path)
    code, _, err = run_cli(capsys, "--debug", "inspect", model)
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert err.endswith(f"onnxprune: error: {model}: tensor 'w' declares 64 elements but holds 10\n")


def test_a_real_process_exits_2_without_traceback(tmp_path: Path):
    model = _mutated(_cycle)(tmp_path)
    out = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(model), "-o", str(tmp_path / "p.onnx"),
                          "--ratio", "0.3"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr == f"onnxprune: error: {model}: the graph has a cycle (through node 'c1')\n"
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file anyway, so there is nothing to refuse")
def test_unreadable_file(tmp_path: Path, capsys):
    model = _save(hb.simple_chain(), tmp_path)
    model.chmod(0)
    try:
        code, _, err = run_cli(capsys, "inspect", model)
    finally:
        model.chmod(0o644)
    assert code == 2
    assert err == f"onnxprune: error: {model}: cannot read the file (Permission denied)\n"


def test_custom_domain_ops_load_and_block_their_channels(tmp_path: Path, capsys):
    """A contrib op with its domain imported is fine: the model loads, prunes, and the channels
    through the op are blocked with the domain as the reason."""
    import json

    model = _save(hb.custom_domain(), tmp_path)
    code, out, err = run_cli(capsys, "inspect", model, "--json")
    assert code == 0, err
    blocked = {g["blocked"] for g in json.loads(out)["groups"] if not g["prunable"]}
    assert blocked == {"blocked by com.microsoft::Gelu at node 'ms_gelu' (no pruning rule for this op)",
                       "graph input 'x'", "graph output 'c3'"}
    code, _, err = run_cli(capsys, "prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.3")
    assert code == 0, err
    assert (tmp_path / "p.onnx").exists()
