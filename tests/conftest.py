"""Shared fixtures for the engine tests: the exported zoo (every model x exporter, exported once per
session), the committed framework fixtures, and small helpers (onnxruntime runs, CLI runs, I/O
signatures) used by test_exactness.py and test_engine.py.

Set ONNXPRUNE_TEST_CACHE=/some/dir to keep the exports between sessions (keyed by the zoo source and
the torch/onnxscript versions); by default they live in the session's tmp dir.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
MODELS = TESTS.parent / "models"
sys.path.insert(0, str(TESTS))

import zoo  # noqa: E402

FIXTURE_NAMES = ("tf_cnn", "tf_gap", "paddle_cnn", "paddle_gap")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class Case:
    """One test model: a zoo model under one exporter, or a committed framework fixture."""

    model: str
    exporter: str | None = None  # None: a fixture from tests/fixtures

    @property
    def id(self) -> str:
        return f"{self.model}-{self.exporter}" if self.exporter else f"fixture-{self.model}"

    @property
    def is_fixture(self) -> bool:
        return self.exporter is None


ZOO_CASES = [Case(m, e) for m in zoo.MODELS for e in zoo.EXPORTERS]
FIXTURE_CASES = [Case(f) for f in FIXTURE_NAMES]
ALL_CASES = ZOO_CASES + FIXTURE_CASES


def case_by_id(case_id: str) -> Case:
    return next(c for c in ALL_CASES if c.id == case_id)


class ZooExports:
    """Exports each (model, exporter) at most once, on first request."""

    def __init__(self, root: Path):
        self.root = root
        self._paths: dict[tuple[str, str], Path] = {}

    def path(self, model: str, exporter: str) -> Path:
        key = (model, exporter)
        if key not in self._paths:
            target = self.root / f"{model}_{exporter}.onnx"
            if not target.exists():
                module, inputs = zoo.MODELS[model]()
                tmp = self.root / f".partial_{model}_{exporter}" / target.name
                zoo.export(module, inputs, tmp, exporter)
                data = tmp.with_name(tmp.name + ".data")
                if data.exists():  # the .onnx names its data file by basename, so moving both is safe
                    os.replace(data, target.with_name(target.name + ".data"))
                os.replace(tmp, target)
            self._paths[key] = target
        return self._paths[key]

    def all(self) -> dict[str, Path]:
        return {c.id: self.path(c.model, c.exporter) for c in ZOO_CASES}


def _cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    explicit = os.environ.get("ONNXPRUNE_TEST_CACHE")
    if not explicit:
        return tmp_path_factory.mktemp("zoo")
    import onnxscript
    import torch

    key = hashlib.sha256((TESTS / "zoo.py").read_bytes() + f"{torch.__version__} {onnxscript.__version__}".encode()).hexdigest()[:16]
    root = Path(explicit) / key
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A private copy of the sample model and its external data file, in a folder of its own
    (models/ is never written, and outputs in tmp_path do not land beside the copy)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("digits_cnn.onnx", "digits_cnn.onnx.data"):
        shutil.copy(MODELS / name, folder / name)
    return folder / "digits_cnn.onnx"


@pytest.fixture(scope="session")
def zoo_exports(tmp_path_factory) -> ZooExports:
    """Every MODELS x EXPORTERS export, each done once per session (lazily: only what tests use)."""
    yield ZooExports(_cache_root(tmp_path_factory))


@pytest.fixture(scope="session")
def case_path(zoo_exports):
    """case -> path of its .onnx file."""

    def get(case: Case) -> Path:
        return FIXTURES / f"{case.model}.onnx" if case.is_fixture else zoo_exports.path(case.model, case.exporter)

    return get


@pytest.fixture(params=ALL_CASES, ids=lambda c: c.id)
def case(request) -> Case:
    """Parametrizes a test over all 30 zoo exports and the 4 framework fixtures."""
    return request.param


# --------------------------------------------------------------------------- helpers


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run the `onnxprune` command in-process; returns (exit code, stdout, stderr)."""
    from onnxprune.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def input_feeds(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input; dynamic axis 0 gets `batch`, other dynamic axes 16."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (batch if k == 0 else 16) for k, d in enumerate(tt.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a| (0 when a is all zeros and b equals it)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    return diff / scale if scale > 0 else diff


def io_signature(model: onnx.ModelProto) -> list[tuple]:
    """(name, elem type, dims) of every graph input and output; a dim is an int or its dim_param name."""
    inits = {t.name for t in model.graph.initializer}
    sig = []
    for kind, vis in (("in", model.graph.input), ("out", model.graph.output)):
        for vi in vis:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
            sig.append((kind, vi.name, tt.elem_type, dims))
    return sig


def float_params(model: onnx.ModelProto) -> int:
    """Number of floating-point weight elements (initializers and Constant-node values), counted
    straight from the protobuf."""
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in FLOAT_TYPES) + constant_float_params(model)


def constant_float_params(model: onnx.ModelProto) -> int:
    """Floating-point elements held by Constant nodes (paddle2onnx keeps every weight there)."""
    total = 0
    for node in (n for n in model.graph.node if n.op_type == "Constant"):
        for a in node.attribute:
            if a.name == "value" and a.t.data_type in FLOAT_TYPES:
                total += math.prod(a.t.dims)
            elif a.name == "value_float":
                total += 1
            elif a.name == "value_floats":
                total += len(a.floats)
    return total


def load_full(path: Path) -> onnx.ModelProto:
    """onnx.load with external data (from the file's folder)."""
    return onnx.load(str(path))


def check_runnable(original: onnx.ModelProto, pruned_path: Path, batches=(2, 3)) -> onnx.ModelProto:
    """The pruned file passes onnx.checker (path form), keeps the I/O signature (dynamic dims
    included) and runs in onnxruntime at each batch size with the original's output shapes."""
    onnx.checker.check_model(str(pruned_path), full_check=True)
    pruned = load_full(pruned_path)
    assert io_signature(pruned) == io_signature(original)
    before, after = session(original), session(pruned_path)
    for batch in batches:
        feeds = input_feeds(original, batch, seed=batch)
        a, b = before.run(None, feeds), after.run(None, feeds)
        assert [x.shape for x in a] == [x.shape for x in b], f"batch {batch}: output shapes differ"
        assert all(np.all(np.isfinite(x)) for x in b)
    return pruned
