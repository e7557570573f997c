"""Latency-targeted allocation: keep a fraction of the original's *measured* latency.

MACs are a proxy, and a poor one: odd channel counts fall off vectorised kernels, depthwise
layers are bound by memory, not arithmetic.  Following HALP (Shen et al., NeurIPS 2022), the
allocation works from a latency table measured on this machine, in onnxruntime:

1. *Table.*  The model is pruned uniformly at a few kept fractions (1, 3/4, 1/2, 1/4; with the
   plan's `round_to`).  Every layer with multiply-accumulates is cut out of each pruned model as a
   one-node model and timed alone, giving each layer's latency as a function of its own MAC
   fraction (which depends on the kept counts of the groups on both of its sides).  The layers
   are found through the cost model and the dependency graph, so no op is named here.
2. *Calibration.*  The table's sum leaves out everything between the layers (activations, adds,
   pooling, the session's overhead).  The whole model is timed against the original at the 1/2
   point, interleaved, and a line through (sum, measured fraction) at 1 and 1/2 maps the table's
   sum to the model's latency fraction.
3. *Allocation.*  By default uniform, as `--ratio` and `--target-macs` allocate: the smallest
   ratio per group (bisection, kept counts rounded to `round_to`) whose predicted latency meets
   the budget, then the best removed channels given back while the prediction stays within it.  With `global_ranking` (`--global`), greedy like HALP's knapsack: starting from the
   whole model, repeatedly remove `step` channels (a multiple of `round_to`) from the group whose
   least important kept channels cost the least importance per second of predicted latency saved.
   (One-shot, without fine-tuning, uniform keeps more accuracy on the digits CNN: README.)
4. *Refinement.*  The result is built and timed against the original; while it misses the target
   by more than 2%, a line through all (predicted, measured) pairs so far (proportional for the
   first) says what to aim the prediction at, and the allocation runs again (at most
   `refinements` times).  The candidate whose measurement came closest to the target is kept; its
   measured fraction is recorded in the plan (`options.measured_latency`).

Timing happens in onnxruntime or, with `Engine.NCNN`, in ncnn on the pnnx conversion of each
one-node layer and each candidate (`deploy.ncnn.NcnnSession`): the same table, calibration and
refinement, only the thing timed differs.

The table and the calibration are cached (JSON) under `$ONNXPRUNE_CACHE` or
`~/.cache/onnxprune/latency`, keyed by the model's sha256, the CPU, the onnxruntime version, the
batch, the thread count and `round_to`: a second run on the same machine skips the measuring.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from .allocation import AllocationOptions, _keep_top, _refill_uniform, _rounded_keep, by_ratio, eligible_groups
from .depgraph import DepGraph
from .errors import InputError
from .graph import ModelIndex
from .groups import Group
from .ops import Dim, NodeContext

GRID = (1.0, 0.75, 0.5, 0.25)
"""Uniform kept fractions at which the per-layer table is measured."""

TOLERANCE = 0.02
"""Refinement stops once the measured fraction is within this (relative) of the target."""


class Engine(str, Enum):
    """Where latency is measured: what the model will be deployed with."""

    ONNXRUNTIME = "onnxruntime"
    NCNN = "ncnn"
    """ncnn through pnnx (optional extras `pnnx` and `ncnn`), fp32, one extraction per sample."""


@dataclass
class LatencyOptions:
    target: float
    """Fraction of the original's measured latency to keep, in (0, 1]."""
    batch: int = 1
    threads: int = 0
    """onnxruntime intra-op threads (0: onnxruntime's default, all cores)."""
    refinements: int = 3
    cache_dir: Path | None = None
    rounds: int = 5
    """Sets how many alternating runs a whole-model comparison makes (see latency_ratio)."""
    engine: Engine = Engine.ONNXRUNTIME

    def plan_options(self) -> dict:
        """What the plan records, spelled as the API's options."""
        return {"target_latency": self.target, "latency_batch": self.batch, **({"latency_threads": self.threads} if self.threads else {}),
                **({"latency_engine": self.engine.value} if self.engine is not Engine.ONNXRUNTIME else {})}

    def validate(self) -> None:
        if not 0 < self.target <= 1:
            raise InputError(f"options: --target-latency {self.target} is outside (0, 1] (the fraction of latency to keep)")
        if self.batch < 1:
            raise InputError(f"options: --latency-batch {self.batch} must be at least 1")


def default_cache_dir() -> Path:
    return Path(os.environ.get("ONNXPRUNE_CACHE") or Path.home() / ".cache" / "onnxprune") / "latency"


def machine_key(engine: Engine = Engine.ONNXRUNTIME) -> str:
    """CPU model and count and the engine's version: what a latency table is only valid for."""
    import onnxruntime

    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    import platform

    key = f"{cpu or platform.processor() or platform.machine()} x{os.cpu_count()} ort {onnxruntime.__version__}"
    if engine is Engine.NCNN:
        from importlib.metadata import version

        key += f" ncnn {version('ncnn')} pnnx {version('pnnx')}"
    return key


def timed_session(model: onnx.ModelProto, threads: int, engine: Engine, feeds: dict[str, np.ndarray],
                  arrays: dict[str, np.ndarray] | None = None):
    """Something with onnxruntime's `run(None, feeds)` that runs `model` the way deployment would:
    an onnxruntime session with all optimisations and prepacked weights, or the model converted
    by pnnx and run in ncnn (fp32).  Raises InputError when the engine cannot run the model."""
    if engine is Engine.NCNN:
        from .deploy.ncnn import NcnnSession

        return NcnnSession(model, {k: v.shape for k, v in feeds.items()}, threads or (os.cpu_count() or 1), arrays)
    return _ort_session(model, threads)


# --- measuring ------------------------------------------------------------------------------
def _feeds(index: ModelIndex, names: list[str], batch: int, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Random inputs for the tensors `names`, the first dynamic axis set to `batch`; None when a
    shape is not fully known."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in names:
        shape = index.shape(name)
        if shape is None:
            return None
        dims = [d if isinstance(d, int) else (batch if k == 0 else None) for k, d in enumerate(shape)]
        if any(d is None for d in dims):
            return None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(index.elem_types.get(name, onnx.TensorProto.FLOAT))
        feeds[name] = rng.standard_normal(dims).astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(dims, dtype)
    return feeds


def one_node_model(index: ModelIndex, node_i: int) -> tuple[onnx.ModelProto, list[str]] | None:
    """Node `node_i` alone: its constant inputs as initializers, its other inputs as graph inputs
    (returned too), its outputs as graph outputs.  None when an input's type is unknown."""
    node = index.model.graph.node[node_i]
    inputs, inits, runtime_inputs = [], [], []
    for name in node.input:
        if not name or name in runtime_inputs or any(t.name == name for t in inits):
            continue
        if index.is_const(name):
            value = index.const(name)
            if value is None:
                return None
            inits.append(onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        else:
            shape = index.shape(name)
            if shape is None or name not in index.elem_types:
                return None
            inputs.append(onnx.helper.make_tensor_value_info(name, index.elem_types[name], list(shape)))
            runtime_inputs.append(name)
    outputs = [onnx.helper.make_tensor_value_info(o, index.elem_types.get(o, onnx.TensorProto.UNDEFINED), None)
               for o in node.output if o]
    graph = onnx.helper.make_graph([node], "layer", inputs, outputs, inits)
    model = onnx.helper.make_model(graph, opset_imports=list(index.model.opset_import), ir_version=index.model.ir_version)
    return model, runtime_inputs


def node_positions(original: ModelIndex, pruned: ModelIndex, nodes: list[int]) -> dict[int, int]:
    """Where each of the original's `nodes` is in the pruned model, found by its first output's
    name (surgery keeps the names of the layers' outputs but may add nodes, such as constants
    and slices, which shift positions).  A node whose output is gone is left out."""
    by_output = {n.output[0]: i for i, n in enumerate(pruned.model.graph.node) if n.output and n.output[0]}
    found = {}
    for node_i in nodes:
        outputs = original.model.graph.node[node_i].output
        if outputs and outputs[0] in by_output:
            found[node_i] = by_output[outputs[0]]
    return found


def _warm(session, feeds: dict[str, np.ndarray], seconds: float = 0.1) -> None:
    """Run until at least 2 runs and `seconds` have passed: a fresh session's first runs are many
    times slower (thread pool start-up, memory arenas growing)."""
    start, runs = time.perf_counter(), 0
    while runs < 2 or time.perf_counter() - start < seconds:
        session.run(None, feeds)
        runs += 1


def _time_session(session, feeds: dict[str, np.ndarray], budget: float = 0.03, most: int = 15, warm: bool = True) -> float:
    """Fastest seconds per run after warming up (see _warm): at least 3 runs and about `budget`
    seconds.  The minimum, not the median: other processes on the machine only ever add time."""
    if warm:
        _warm(session, feeds)
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget and len(times) < most):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return min(times)


def layer_latencies(index: ModelIndex, nodes: list[int], batch: int, threads: int,
                    memo: dict[str, float], engine: Engine = Engine.ONNXRUNTIME) -> dict[int, float]:
    """Seconds per run of each node alone.  Identical layers (same op, attributes and shapes, as
    in repeated blocks) are timed once: `memo` is keyed by the layer's weightless description.
    A layer the engine cannot run alone (pnnx refuses a lone node) is left out of the table: the
    calibration line and the refinement account for it with everything between the layers."""
    from .graph import weightless_copy

    result = {}
    for node_i in nodes:
        cut = one_node_model(index, node_i)
        if cut is None:
            continue
        model, names = cut
        described = weightless_copy(model)
        for t in described.graph.initializer:
            t.ClearField("raw_data")  # small constants (biases) are not part of what makes a layer slow
        key = hashlib.sha256(described.SerializeToString() + f"b{batch}t{threads}".encode()).hexdigest()
        if key not in memo:
            feeds = _feeds(index, names, batch)
            if feeds is None:
                continue
            try:
                memo[key] = _time_session(timed_session(model, threads, engine, feeds), feeds)
            except InputError:
                memo[key] = math.nan
        if not math.isnan(memo[key]):
            result[node_i] = memo[key]
    return result


def latency_ratio(candidate, original, feeds: dict[str, np.ndarray], rounds: int, seconds: float = 3.0) -> float:
    """Candidate / original seconds per run: single runs alternating between the two (`rounds`
    pairs at least, then more while under `seconds` and 10 * `rounds` pairs), each side's fastest.
    On a shared machine other processes add time to runs in bursts; alternating run by run gives
    both sides the same chances, and the fastest run is the one they disturbed least."""
    _warm(candidate, feeds)
    _warm(original, feeds)
    best = {id(candidate): math.inf, id(original): math.inf}
    start, pairs = time.perf_counter(), 0
    while pairs < rounds or (time.perf_counter() - start < seconds and pairs < 10 * rounds):
        for session in ((candidate, original) if pairs % 2 == 0 else (original, candidate)):
            t = time.perf_counter()
            session.run(None, feeds)
            best[id(session)] = min(best[id(session)], time.perf_counter() - t)
        pairs += 1
    return best[id(candidate)] / best[id(original)]


# --- the latency model ------------------------------------------------------------------------
@dataclass
class LayerTerm:
    """One layer that does multiply-accumulates, and the group dims its count depends on (its
    inputs' and outputs' axes, its own weights' axes): under a keep, its MAC fraction is its op
    rule's count at the pruned sizes over the count at full size, as cost's dry run counts."""

    node: int
    dims: list[tuple[int, Dim, np.ndarray]]
    """(group id, dim, element -> channel map of the dim)."""
    index: ModelIndex
    base: int

    def fraction(self, keep: dict[int, np.ndarray]) -> float:
        sizes = {dim: int(np.count_nonzero(keep[gid][classes])) for gid, dim, classes in self.dims if gid in keep}
        if not sizes:
            return 1.0
        ctx = NodeContext(self.index, self.node, sizes)
        return ctx.rule.macs(ctx) / self.base

    @property
    def groups(self) -> set[int]:
        return {gid for gid, _, _ in self.dims}


def layer_terms(dg: DepGraph) -> list[LayerTerm]:
    """One term per layer with multiply-accumulates."""
    index = dg.index
    by_tensor: dict[str, list[tuple[int, Dim, np.ndarray]]] = {}
    for group in dg.prunable_groups:
        for dim in group.dims:
            by_tensor.setdefault(dim.tensor, []).append((group.id, dim, group.classes[dim]))
    terms = []
    for i, node in enumerate(index.model.graph.node):
        ctx = NodeContext(index, i)
        base = ctx.rule.macs(ctx)
        if not base:
            continue
        dims = [(gid, dim, classes) for name in set(node.input) | set(node.output) if name
                for gid, dim, classes in by_tensor.get(name, []) if not dim.is_const or dim.use == i]
        terms.append(LayerTerm(i, dims, index, base))
    return terms


@dataclass
class LatencyTable:
    """Per layer: (MAC fraction, seconds) points, and the line from table sum to model fraction."""

    points: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    slope: float = 1.0
    intercept: float = 0.0
    full_sum: float = 0.0

    def layer_seconds(self, node: int, fraction: float) -> float:
        pts = self.points.get(node)
        if not pts:
            return 0.0
        xs, ys = zip(*pts)
        return float(np.interp(fraction, xs, ys))

    def predicted_sum(self, terms: list[LayerTerm], keep: dict[int, np.ndarray]) -> float:
        return sum(self.layer_seconds(t.node, t.fraction(keep)) for t in terms)

    def to_fraction(self, table_sum: float) -> float:
        return self.slope * table_sum + self.intercept

    def to_sum(self, fraction: float) -> float:
        return (fraction - self.intercept) / self.slope

    def to_json(self) -> dict:
        return {"points": {str(k): v for k, v in self.points.items()}, "slope": self.slope,
                "intercept": self.intercept, "full_sum": self.full_sum}

    @classmethod
    def from_json(cls, data: dict) -> "LatencyTable":
        return cls({int(k): [tuple(p) for p in v] for k, v in data["points"].items()}, data["slope"],
                   data["intercept"], data["full_sum"])


class Measurer:
    """Sessions and inputs for timing pruned candidates against the original."""

    def __init__(self, dg: DepGraph, options: LatencyOptions):
        from .runtime import make_session

        self.dg, self.options = dg, options
        index = dg.index
        names = sorted(index.graph_inputs)
        self.feeds = _feeds(index, names, options.batch)
        if self.feeds is None:
            raise InputError("options: --target-latency needs the model's input shapes (all but the batch axis known)")
        model = index.model
        if options.engine is Engine.NCNN:
            self.original = timed_session(model, options.threads, options.engine, self.feeds, index.external)
        else:
            self.original = make_session(model.SerializeToString() if index.external else model, threads=options.threads,
                                         arrays=index.external or None)

    def ratio(self, keep: dict[int, np.ndarray]) -> float:
        """Measured latency of the model pruned to `keep`, as a fraction of the original's."""
        from .surgery import apply_keep

        session = timed_session(apply_keep(self.dg, keep), self.options.threads, self.options.engine, self.feeds)
        return latency_ratio(session, self.original, self.feeds, self.options.rounds)


def _ort_session(model: onnx.ModelProto, threads: int):
    """A session as deployment would build it (all optimisations, prepacked weights), fed its
    weights in place (runtime.weightless_session without the one-off settings)."""
    from .graph import weightless_copy
    from .runtime import make_session

    view = weightless_copy(model)
    stubbed = {t.name for t in view.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in stubbed}
    return make_session(view.SerializeToString(), threads=threads, arrays=arrays)


def measure_table(dg: DepGraph, groups: list[Group], scores: dict[int, np.ndarray], alloc: AllocationOptions,
                  options: LatencyOptions, measurer: Measurer, terms: list[LayerTerm],
                  progress: Callable[[str], None] | None = None) -> LatencyTable:
    """Time every layer alone in uniformly pruned models at the GRID fractions, then the whole
    model at 1/2 against the original (the calibration line)."""
    from .surgery import apply_keep

    table = LatencyTable()
    memo: dict[str, float] = {}
    nodes = [t.node for t in terms]
    half_keep: dict[int, np.ndarray] = {}
    for f in GRID:
        if progress:
            progress(f"latency table: layers at {f:.0%} of channels")
        keep = by_ratio(groups, scores, 1 - f, _uniform(alloc)) if f < 1 else {}
        model = dg.index.model if not keep else apply_keep(dg, keep)
        index = dg.index if not keep else ModelIndex.build(model)
        at = node_positions(dg.index, index, nodes)
        seconds = layer_latencies(index, sorted(set(at.values())), options.batch, options.threads, memo, options.engine)
        for t in terms:
            if at.get(t.node) in seconds:
                table.points.setdefault(t.node, []).append((t.fraction(keep), seconds[at[t.node]]))
        if f == 0.5:
            half_keep = keep
    for node, pts in table.points.items():  # np.interp needs increasing x; equal x: keep the mean
        merged: dict[float, list[float]] = {}
        for x, y in pts:
            merged.setdefault(round(x, 9), []).append(y)
        table.points[node] = sorted((x, float(np.mean(ys))) for x, ys in merged.items())
    table.full_sum = table.predicted_sum(terms, {})
    half_sum = table.predicted_sum(terms, half_keep)
    if progress:
        progress("latency table: whole model at 50% of channels against the original")
    half = measurer.ratio(half_keep)
    if table.full_sum - half_sum > 1e-12 * table.full_sum:
        table.slope = (1.0 - half) / (table.full_sum - half_sum)
        table.intercept = 1.0 - table.slope * table.full_sum
    else:  # nothing the table can see shrinks: only the whole-model measurements can guide
        table.slope, table.intercept = 1.0 / max(table.full_sum, 1e-12), 0.0
    return table


def _uniform(alloc: AllocationOptions) -> AllocationOptions:
    return AllocationOptions(ratio=0.0, round_to=alloc.round_to, max_ratio=alloc.max_ratio, ignore=alloc.ignore,
                             protect_ends=alloc.protect_ends)


# --- allocation -------------------------------------------------------------------------------
def greedy(groups: list[Group], scores: dict[int, np.ndarray], terms: list[LayerTerm], table: LatencyTable,
           budget_sum: float, alloc: AllocationOptions) -> dict[int, np.ndarray]:
    """Remove chunks of channels, cheapest importance per predicted second first, until the
    table's sum is at most `budget_sum` (or nothing more may go)."""
    order = {g.id: np.argsort(-scores[g.id], kind="stable") for g in groups}
    counts = {g.id: g.n_channels for g in groups}
    floor = {g.id: _rounded_keep(g.n_channels, g.n_channels - int(alloc.max_ratio * g.n_channels), alloc.round_to)
             for g in groups}
    step = {g.id: max(alloc.round_to, int(math.ceil(g.n_channels / 32 / alloc.round_to)) * alloc.round_to) for g in groups}
    by_group: dict[int, list[LayerTerm]] = {}
    for t in terms:
        for gid in t.groups:
            by_group.setdefault(gid, []).append(t)
    keep = {g.id: np.ones(g.n_channels, dtype=bool) for g in groups}
    seconds = {t.node: table.layer_seconds(t.node, 1.0) for t in terms}
    total = sum(seconds.values())
    gmap = {g.id: g for g in groups}

    def candidate(gid: int):
        n_new = max(floor[gid], counts[gid] - step[gid])
        if n_new >= counts[gid]:
            return None
        mask = np.zeros(gmap[gid].n_channels, dtype=bool)
        mask[order[gid][:n_new]] = True
        lost = float(scores[gid][order[gid][n_new:counts[gid]]].sum())
        trial = dict(keep)
        trial[gid] = mask
        saved, new_seconds = 0.0, {}
        for t in by_group.get(gid, []):
            new_seconds[t.node] = table.layer_seconds(t.node, t.fraction(trial))
            saved += seconds[t.node] - new_seconds[t.node]
        return lost, saved, n_new, mask, new_seconds

    cands = {gid: candidate(gid) for gid in keep}
    while total > budget_sum:
        best, best_value = None, math.inf
        for gid, c in cands.items():
            if c is None:
                continue
            lost, saved, *_ = c
            value = lost / saved if saved > 0 else math.inf
            if value < best_value or (best is None and c is not None):
                best, best_value = gid, value
        if best is None:
            break
        lost, saved, n_new, mask, new_seconds = cands[best]
        keep[best], counts[best] = mask, n_new
        for node, s in new_seconds.items():
            total += s - seconds[node]
            seconds[node] = s
        touched = {gid for t in by_group.get(best, []) for gid in t.groups} | {best}
        for gid in touched & set(cands):
            cands[gid] = candidate(gid)
    return {gid: _keep_top(gmap[gid], scores[gid], counts[gid], alloc.round_to) for gid in keep}


def _fit(history: list[tuple[float, float]]) -> Callable[[float], float]:
    """Measured as a function of predicted fraction: proportional through one point, the least
    squares line through several (a flat or falling line, which noise can give, falls back to
    proportional through their means)."""
    xs, ys = np.array([h[0] for h in history]), np.array([h[1] for h in history])
    if len(history) >= 2 and np.ptp(xs) > 1e-6:
        slope, intercept = np.polyfit(xs, ys, 1)
        if slope > 0:
            return lambda x: float(slope * x + intercept)
    scale = float(ys.mean() / max(xs.mean(), 1e-12))
    return lambda x: scale * x


def _next_aim(history: list[tuple[float, float]], target: float, aim: float) -> float:
    """The predicted fraction to allocate for next, so that the fitted measurement hits `target`."""
    fit = _fit(history)
    low, high = 0.0, 2.0
    for _ in range(40):  # fit is increasing: bisection finds where it crosses the target
        mid = (low + high) / 2
        low, high = (mid, high) if fit(mid) < target else (low, mid)
    return high if 0 < high < 2 else aim * target / max(history[-1][1], 1e-12)


def uniform(groups: list[Group], scores: dict[int, np.ndarray], terms: list[LayerTerm], table: LatencyTable,
            budget_sum: float, alloc: AllocationOptions) -> dict[int, np.ndarray]:
    """As `--target-macs` allocates, with predicted latency for MACs: the smallest uniform ratio
    whose predicted table sum is at most `budget_sum` (or the largest ratio allowed), then the
    best removed channels given back, `round_to` at a time and group by group as --target-macs
    does (allocation._refill_uniform), while the prediction stays within it: a refill by raw score
    across groups would turn uniform into a global ranking."""
    low, high = 0.0, min(alloc.max_ratio, 0.999)
    for _ in range(20):
        mid = (low + high) / 2
        if table.predicted_sum(terms, by_ratio(groups, scores, mid, alloc)) > budget_sum:
            low = mid
        else:
            high = mid
    return _refill_uniform(groups, scores, by_ratio(groups, scores, high, alloc), lambda k: table.predicted_sum(terms, k),
                           budget_sum, alloc.round_to)


@dataclass
class LatencyAllocator:
    """An allocation strategy (see api.PrunableModel.plan's `allocator`): meets a measured latency
    budget.  After a call, `measured` is the kept fraction of latency that was measured."""

    options: LatencyOptions
    progress: Callable[[str], None] | None = None
    model_sha256: str = ""
    measured: float | None = None
    history: list[tuple[float, float]] = field(default_factory=list)
    """(predicted, measured) fraction of each candidate tried."""

    def cache_path(self, alloc: AllocationOptions) -> Path | None:
        if not self.model_sha256:
            return None
        o = self.options
        key = f"{self.model_sha256} {machine_key(o.engine)} b{o.batch} t{o.threads} r{alloc.round_to} m{alloc.max_ratio} " \
              f"i{alloc.ignore} p{alloc.protect_ends}"
        return (o.cache_dir or default_cache_dir()) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def table(self, dg, groups, scores, alloc, measurer, terms) -> LatencyTable:
        path = self.cache_path(alloc)
        if path is not None and path.is_file():
            try:
                return LatencyTable.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError):
                pass  # a damaged cache entry is measured again
        table = measure_table(dg, groups, scores, alloc, self.options, measurer, terms, self.progress)
        if path is not None:
            from .save import write_atomic

            write_atomic(path, json.dumps(table.to_json()).encode())
        return table

    def __call__(self, dg: DepGraph, scores: dict[int, np.ndarray], alloc: AllocationOptions, cost_of) -> dict[int, np.ndarray]:
        self.options.validate()
        groups = eligible_groups(dg, alloc)
        terms = layer_terms(dg)
        measurer = Measurer(dg, self.options)
        table = self.table(dg, groups, scores, alloc, measurer, terms)
        strategy = greedy if alloc.global_ranking else uniform
        target = aim = self.options.target
        candidates = []
        for attempt in range(self.options.refinements + 1):
            keep = strategy(groups, scores, terms, table, table.to_sum(aim), alloc)
            if self.progress:
                self.progress(f"latency: measuring candidate {attempt + 1} against the original")
            measured = measurer.ratio(keep) if any(not m.all() for m in keep.values()) else 1.0
            predicted = table.to_fraction(table.predicted_sum(terms, keep))
            self.history.append((predicted, measured))
            candidates.append((keep, predicted, measured))
            if abs(measured - target) <= TOLERANCE * target:
                break
            aim = _next_aim(self.history, target, aim)
        keep, _, measured = min(candidates, key=lambda c: abs(c[2] - target))
        self.measured = measured
        return keep
