"""ncnn export: pnnx converts the (pruned) ONNX model to ncnn's .param/.bin, then ncnn's Python
binding runs it beside onnxruntime on the same inputs and the outputs must agree (max relative
error 1e-4 in fp32) before anything is written.

pnnx (the converter, a standalone executable shipped in the `pnnx` wheel) and ncnn are optional
extras.  The `pnnx` Python package imports torch; only its executable is used here, found without
importing the package.  ncnn has no batch axis: a batch of B is run as B extractions.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputError, OnnxPruneError
from ..load import load_model
from ..runtime import make_session
from ..save import save_model, write_atomic
from . import require

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2  # fp16 weights (and arithmetic where the CPU has it): a sanity bound only
PRECISION_FLAGS = ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage", "use_bf16_packed")


@dataclass
class NcnnFiles:
    param: Path
    bin: Path


@dataclass
class ExportReport:
    files: NcnnFiles
    shapes: list[tuple[int, ...]]
    fp16: bool
    max_rel_error: float


def pnnx_executable() -> Path:
    """The pnnx converter binary: inside the installed `pnnx` package, else on PATH."""
    spec = importlib.util.find_spec("pnnx")
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            for name in ("pnnx", "pnnx.exe"):
                if (Path(folder) / name).is_file():
                    return Path(folder) / name
    found = shutil.which("pnnx")
    if found:
        return Path(found)
    raise InputError("ncnn export needs the optional package 'pnnx' (pip install pnnx, or pip install 'onnxprune[deploy]')")


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' (brackets allowed) -> (1, 3, 224, 224)."""
    try:
        dims = tuple(int(d) for d in text.strip().strip("[]").split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise InputError(f"options: --inputshape '{text}' is not a list of positive integers such as 1,3,224,224")
    return dims


def input_shapes(model: onnx.ModelProto, given: list[tuple[int, ...]] | None, source: Path) -> list[tuple[int, ...]]:
    """One shape per graph input: the given ones, else the model's own with a dynamic batch as 1."""
    inputs = graph_inputs(model)
    if given:
        if len(given) != len(inputs):
            raise InputError(f"{source}: the model has {len(inputs)} inputs, --inputshape gave {len(given)}")
        return given
    shapes = []
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else (1 if k == 0 else 0) for k, d in enumerate(dims))
        if 0 in shape:
            raise InputError(f"{source}: input '{vi.name}' has dynamic dimensions beyond the batch; give --inputshape")
        shapes.append(shape)
    return shapes


def convert(model: onnx.ModelProto, workdir: Path, shapes: list[tuple[int, ...]], fp16: bool = False,
            source: Path = Path("<model>")) -> NcnnFiles:
    """Run pnnx on a copy of `model` inside `workdir` (pnnx writes its by-products beside its input)."""
    exe = pnnx_executable()
    onnx_path = save_model(model, workdir / "model.onnx")
    arg = ",".join("[" + ",".join(map(str, s)) + "]" for s in shapes)
    proc = subprocess.run([str(exe), onnx_path.name, f"inputshape={arg}", f"fp16={int(fp16)}",
                           "ncnnparam=model.ncnn.param", "ncnnbin=model.ncnn.bin"],
                          cwd=workdir, capture_output=True, text=True, errors="replace")
    files = NcnnFiles(workdir / "model.ncnn.param", workdir / "model.ncnn.bin")
    if proc.returncode != 0 or not files.param.is_file() or not files.bin.is_file():
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        raise InputError(f"{source}: pnnx could not convert the model (exit {proc.returncode}: {lines[-1] if lines else 'no output'})")
    return files


def load_net(files: NcnnFiles, fp16: bool = False, threads: int = 1, source: Path = Path("<model>")):
    """An ncnn.Net; fp32 switches off every fp16/bf16 storage and arithmetic path."""
    ncnn = require("ncnn", "running ncnn models")
    net = ncnn.Net()
    for flag in PRECISION_FLAGS:
        if hasattr(net.opt, flag):
            setattr(net.opt, flag, fp16 and "fp16" in flag)
    net.opt.num_threads = threads
    with captured_stderr() as said:
        loaded = net.load_param(str(files.param)) == 0 and net.load_model(str(files.bin)) == 0
    if not loaded:
        # pnnx wrote a layer this ncnn does not implement ("layer Tensor.slice not exists or
        # registered"): a limit of ncnn for this model, not a bug of ours
        message = next((l.strip() for l in said() if l.strip()), "no message")
        raise InputError(f"{source}: ncnn cannot load the converted model ({message}); this model needs a newer ncnn "
                         "or an ncnn-friendly export")
    return net


@contextmanager
def captured_stderr():
    """Capture what C++ code writes to file descriptor 2 (ncnn reports load errors only there);
    yields a callable returning the captured lines once the block is done."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def run_net(net, feeds: list[np.ndarray], output_shapes: list[tuple[int, ...]] | None = None) -> list[np.ndarray]:
    """Run a batch (one array per graph input, batch axis first) sample by sample; outputs are
    reshaped to `output_shapes` per sample (onnxruntime's) when given."""
    ncnn = require("ncnn", "running ncnn models")
    in_names, out_names = net.input_names(), net.output_names()
    outputs: list[list[np.ndarray]] = [[] for _ in out_names]
    for i in range(len(feeds[0])):
        with net.create_extractor() as ex:
            for name, array in zip(in_names, feeds):
                ex.input(name, ncnn.Mat(np.ascontiguousarray(array[i], dtype=np.float32)).clone())
            for k, name in enumerate(out_names):
                status, mat = ex.extract(name)
                if status != 0:
                    raise OnnxPruneError(f"internal error: ncnn failed to compute output '{name}'")
                out = np.array(mat)
                outputs[k].append(out.reshape(output_shapes[k]) if output_shapes else out)
    return [np.stack(o) for o in outputs]


def compare(model: onnx.ModelProto, net, feeds: dict[str, np.ndarray]) -> float:
    """Max relative error (max |a - b| / max |a|) of ncnn against onnxruntime over all outputs."""
    reference = make_session(model).run(None, feeds)
    if len(net.output_names()) != len(reference):
        raise OnnxPruneError(f"internal error: ncnn model has {len(net.output_names())} outputs, onnxruntime {len(reference)}")
    shapes = [r.shape[1:] for r in reference]
    try:
        got = run_net(net, list(feeds.values()), shapes)
    except ValueError as exc:  # a reshape that does not fit: ncnn computed something else
        raise OnnxPruneError(f"internal error: ncnn output does not match onnxruntime's shape ({exc})") from None
    return max(float(np.max(np.abs(r.astype(np.float64) - g))) / max(float(np.max(np.abs(r))), 1e-30)
               for r, g in zip(reference, got))


class NcnnSession:
    """`model` converted by pnnx and loaded in ncnn (fp32), behind onnxruntime's `run(None, feeds)`
    so that latency measurement times either engine the same way.  `shapes` are the feeds' shapes
    (batch first); ncnn runs a batch as one extraction per sample, as deployment on it does."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], threads: int = 1,
                 arrays: dict[str, np.ndarray] | None = None):
        """`arrays`: the data of initializers that are stubs in `model` (a memory-mapped original)."""
        if arrays:
            from ..graph import with_data

            model = _with_arrays(model, arrays, with_data)
        names = [vi.name for vi in graph_inputs(model)]
        self._order = names
        with tempfile.TemporaryDirectory(prefix="onnxprune-ncnn-") as folder:
            files = convert(model, Path(folder), [(1,) + tuple(shapes[n][1:]) for n in names])
            self._net = load_net(files, fp16=False, threads=threads)

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return run_net(self._net, [feeds[n] for n in self._order])


def _with_arrays(model: onnx.ModelProto, arrays: dict[str, np.ndarray], with_data) -> onnx.ModelProto:
    """A self-contained copy of `model`: pnnx reads the file, not our memory maps."""
    full = onnx.ModelProto()
    full.CopyFrom(model)
    for k, tensor in enumerate(full.graph.initializer):
        if tensor.name in arrays:
            full.graph.initializer[k].CopyFrom(with_data(tensor, arrays[tensor.name]))
    return full


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs fed at run time (old exporters also list initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def random_feeds(model: onnx.ModelProto, shapes: list[tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {vi.name: rng.standard_normal(shape).astype(np.float32) for vi, shape in zip(graph_inputs(model), shapes)}


def convert_checked(model: onnx.ModelProto, workdir: Path, shapes: list[tuple[int, ...]], fp16: bool = False,
                    source: Path = Path("<model>")) -> tuple[NcnnFiles, float]:
    """convert() then compare() on deterministic random inputs; refuses a mismatch."""
    files = convert(model, workdir, shapes, fp16, source)
    error = compare(model, load_net(files, fp16, source=source), random_feeds(model, shapes))
    tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    if not error <= tolerance:
        raise OnnxPruneError(f"{source}: ncnn and onnxruntime disagree (max relative error {error:.2e} > {tolerance:g}); nothing written")
    return files, error


def export_ncnn(model_path: str | Path, outdir: str | Path, shapes: list[tuple[int, ...]] | None = None,
                fp16: bool = False) -> ExportReport:
    """Convert, check and write OUTDIR/<stem>.ncnn.param and .bin (each atomically)."""
    model_path, outdir = Path(model_path), Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a folder")
    model = load_model(model_path).model
    shapes = input_shapes(model, shapes, model_path)
    with tempfile.TemporaryDirectory(prefix="onnxprune_ncnn_") as tmp:
        files, error = convert_checked(model, Path(tmp), shapes, fp16, model_path)
        written = NcnnFiles(outdir / f"{model_path.stem}.ncnn.param", outdir / f"{model_path.stem}.ncnn.bin")
        write_atomic(written.bin, files.bin.read_bytes())
        write_atomic(written.param, files.param.read_bytes())
    return ExportReport(written, shapes, fp16, error)
