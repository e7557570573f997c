"""Side-by-side latency: several models in one process, runs interleaved (model 1, model 2, ...,
model 1, ...) so that noise on a shared machine hits all of them alike.  Reported per engine and
batch: median and interquartile range in ms, and the speedup against the first model (median of
the per-round ratios, which cancels slow drifts of the machine)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..data import synthetic_inputs
from ..errors import InputError, OnnxPruneError
from ..graph import ModelIndex
from ..load import load_model
from ..ops.quantized import is_quantized
from ..runtime import make_session


@dataclass
class Timing:
    model: str
    engine: str
    batch: int
    median_ms: float | None = None
    iqr_ms: float | None = None
    speedup: float | None = None
    """first model's time / this model's time, median over rounds (1.0 for the first model)"""
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def interleaved(runners: dict[str, Callable[[], object]], runs: int, warmup: int = 2) -> dict[str, list[float]]:
    """Milliseconds per call for each runner, calls interleaved round by round."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def summarise(times: dict[str, list[float]], first: str) -> dict[str, tuple[float, float, float]]:
    """name -> (median ms, IQR ms, speedup vs `first`)."""
    base = np.asarray(times[first])
    out = {}
    for name, values in times.items():
        v = np.asarray(values)
        q1, q2, q3 = np.percentile(v, [25, 50, 75])
        out[name] = (float(q2), float(q3 - q1), float(np.median(base / v)))
    return out


def ort_runner(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int) -> Callable[[], object]:
    session = make_session(model, threads)
    return lambda: session.run(None, feeds)


def ncnn_runner(net, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    from .ncnn import run_net

    arrays = list(feeds.values())
    return lambda: run_net(net, arrays)


def _feeds(model: onnx.ModelProto, batch: int, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray] | str:
    """Random inputs at this batch size (other sizes from `shapes`, the --input-shape, or chosen so
    that the model runs), or why the model cannot take it (a static batch)."""
    index = ModelIndex.build(model)
    at_batch = {k: (batch,) + tuple(d[1:]) for k, d in (shapes or {}).items() if d}
    feeds = synthetic_inputs(index, batch=batch, shapes={**(shapes or {}), **at_batch})
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in feeds and dims and dims[0].HasField("dim_value") and dims[0].dim_value != batch:
            return f"static batch {dims[0].dim_value}"
    return feeds


def _ncnn_nets(models: dict[str, onnx.ModelProto], workdir: Path, threads: int) -> dict[str, dict[str, object]]:
    """engine -> {model name: ncnn.Net or the reason there is none}; fp32 and fp16 from one conversion."""
    from .ncnn import convert_checked, input_shapes, load_net

    nets: dict[str, dict[str, object]] = {"ncnn fp32": {}, "ncnn fp16": {}}
    for k, (name, model) in enumerate(models.items()):
        if is_quantized(model):
            nets["ncnn fp32"][name] = nets["ncnn fp16"][name] = "quantized ONNX (ncnn int8: ncnn2table + ncnn2int8 on the float model)"
            continue
        folder = workdir / str(k)
        folder.mkdir()
        try:
            files, _ = convert_checked(model, folder, input_shapes(model, None, Path(name)), False, Path(name))
        except OnnxPruneError as exc:  # quantized models and ops pnnx lacks: reported, not fatal
            nets["ncnn fp32"][name] = nets["ncnn fp16"][name] = str(exc).split(": ", 1)[-1]
            continue
        nets["ncnn fp32"][name] = load_net(files, False, threads)
        nets["ncnn fp16"][name] = load_net(files, True, threads)
    return nets


def bench(paths: list[str | Path], batches: tuple[int, ...] = (1,), threads: int = 1, runs: int = 30,
          use_ncnn: bool = False, warmup: int = 3, shapes: dict[str, tuple[int, ...]] | None = None) -> list[Timing]:
    """Time every model at every batch in onnxruntime (and ncnn fp32/fp16 when asked); `shapes`
    ({input: dims}, axis 0 replaced by each batch) sizes dynamic inputs."""
    if runs < 3 or threads < 1 or not batches or min(batches) < 1:
        raise InputError("options: --runs must be at least 3, --threads and every --batch at least 1")
    models = {}
    for path in paths:
        name = Path(path).name if Path(path).name not in models else str(path)
        models[name] = load_model(path).model
    if use_ncnn:
        from . import require

        require("ncnn", "--ncnn")
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="onnxprune_bench_") as tmp:
        nets = _ncnn_nets(models, Path(tmp), threads) if use_ncnn else {}
        for batch in batches:
            feeds = {name: _feeds(model, batch, shapes) for name, model in models.items()}
            engines = {"onnxruntime": {n: ort_runner(m, feeds[n], threads) for n, m in models.items() if isinstance(feeds[n], dict)}}
            for engine, by_model in nets.items():
                engines[engine] = {n: ncnn_runner(net, feeds[n]) for n, net in by_model.items()
                                   if not isinstance(net, str) and isinstance(feeds[n], dict)}
            for engine, runners in engines.items():
                results = summarise(interleaved(runners, runs, warmup), next(iter(runners))) if runners else {}
                for name in models:
                    if name in results:
                        timings.append(Timing(name, engine, batch, *results[name]))
                    else:
                        reason = feeds[name] if isinstance(feeds[name], str) else nets.get(engine, {}).get(name, "")
                        timings.append(Timing(name, engine, batch, note=f"n/a: {reason}"))
    return timings


def format_table(timings: list[Timing]) -> str:
    """One row per (engine, batch, model); speedups are against the first model of that row block."""
    width = max(len(t.model) for t in timings)
    lines = [f"{'engine':<12} {'batch':>5}  {'model':<{width}} {'median ms':>10} {'IQR ms':>9} {'speedup':>8}"]
    for t in timings:
        if t.median_ms is None:
            lines.append(f"{t.engine:<12} {t.batch:>5}  {t.model:<{width}} {t.note}")
        else:
            lines.append(f"{t.engine:<12} {t.batch:>5}  {t.model:<{width}} {t.median_ms:>10.3f} {t.iqr_ms:>9.3f} {t.speedup:>7.2f}x")
    return "\n".join(lines)
