"""Sensitivity analysis (the "analyse" step of the Vitis AI optimizer), a client of the pipeline.

For every group and every ratio, prune that group alone and measure a metric on the user's data.
With reconstruction (`reconstruct`, `onnxprune sensitivity --reconstruct`) a candidate is scored
as `prune --reconstruct` would leave it: the group is cut, the layers that read it are re-fitted
on the same data (onnxprune.recovery), and the re-fitted model is evaluated in its own session; a
group whose damage reconstruction repairs then scores low and allocation prunes it harder.
Otherwise candidates are evaluated without rebuilding sessions: the model gets one extra input per group, a
channel mask multiplied in wherever a weight consumes the group's channels.  A channel that is
zero at all those points is exactly a removed channel (the same fact dead-channel detection rests
on), so one onnxruntime session evaluates every candidate.  Candidates run in worker processes
(or on a Ray cluster), results are written after each candidate, and an interrupted analysis
resumes from its file.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from .groups import KeepMasks, Scores
from .depgraph import DepGraph
from .errors import InputError
from .importance import consumption_points
from .ops import IN
from .ops.build import channel_mask_nodes
from .origin import group_origins
from .runtime import run_chunked, sample_count
from .save import write_atomic

if TYPE_CHECKING:
    from .recovery import ReconstructOptions

SENS_FORMAT = "onnxprune.sensitivity"
SENS_VERSION = 1
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

Metric = Callable[[list[np.ndarray], list[np.ndarray], np.ndarray | None], float]
"""(reference outputs, candidate outputs, labels or None) -> loss (0 = no damage, higher = worse)."""


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs[0].reshape(len(labels), -1), axis=1) == labels))


def accuracy_loss(ref, out, labels) -> float:
    """Accuracy drop against the labels (the unpruned model's accuracy minus the candidate's)."""
    return accuracy(ref, labels) - accuracy(out, labels)


def top1_disagreement(ref, out, labels) -> float:
    """Fraction of samples whose top-1 class changes."""
    a, b = (o.reshape(len(o), -1) for o in (ref[0], out[0]))
    return float(np.mean(a.argmax(1) != b.argmax(1)))


def cosine_loss(ref, out, labels) -> float:
    """1 - mean cosine similarity of the outputs, per sample."""
    losses = []
    for r, o in zip(ref, out):
        r2, o2 = r.reshape(len(r), -1).astype(np.float64), o.reshape(len(o), -1).astype(np.float64)
        num = (r2 * o2).sum(1)
        den = np.linalg.norm(r2, axis=1) * np.linalg.norm(o2, axis=1)
        losses.append(1.0 - np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))
    return float(np.mean(losses))


def mse_loss(ref, out, labels) -> float:
    return float(np.mean([np.mean((r.astype(np.float64) - o) ** 2) for r, o in zip(ref, out)]))


def kl_loss(ref, out, labels) -> float:
    """KL(softmax(reference) || softmax(candidate)) of the first output, mean over samples."""
    p, q = _softmax(ref[0].reshape(len(ref[0]), -1).astype(np.float64)), _softmax(out[0].reshape(len(out[0]), -1).astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=1)))


METRICS: dict[str, Metric] = {"accuracy": accuracy_loss, "top1-agreement": top1_disagreement, "cosine": cosine_loss,
                              "mse": mse_loss, "kl": kl_loss}


def metric_from_spec(spec: str) -> str | Metric:
    """A metric name from METRICS, or a loss of the user's own as MODULE:FUNCTION or
    FILE.py:FUNCTION (a detector's box recall, a recogniser's reading agreement: the generic
    output distances measure box coordinates, not decisions).  The function takes (reference
    outputs, candidate outputs, labels or None) and returns a loss, 0 for no damage."""
    if spec in METRICS:
        return spec
    if ":" not in spec:
        raise InputError(f"options: unknown metric '{spec}' (choose from {', '.join(METRICS)}, or give MODULE:FUNCTION "
                         "or FILE.py:FUNCTION)")
    import importlib
    import importlib.util
    import sys

    where, _, function = spec.rpartition(":")
    path = Path(where)
    if where.endswith(".py") and not path.is_file():
        raise InputError(f"{where}: metric file not found")
    try:
        if where.endswith(".py"):
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)
            sys.modules.setdefault(path.stem, module)  # picklable for --workers (forked workers see it)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure to import is their input's problem
        raise InputError(f"{where}: cannot import the metric's module ({type(exc).__name__}: {exc})") from None
    metric = getattr(module, function, None)
    if not callable(metric):
        raise InputError(f"{where}: no function '{function}' for --metric")
    return UserMetric(metric, spec)


class UserMetric:
    """A loss of the user's own, from --metric: its failures (an exception, a result that is not a
    number) are a problem of the user's input, reported in one line, not a crash of the tool.
    Picklable for --workers when its function's module is importable there."""

    def __init__(self, function: Metric, spec: str):
        self.function, self.spec = function, spec
        self.__name__ = getattr(function, "__name__", spec)

    def __call__(self, reference, candidate, labels) -> float:
        try:
            return float(self.function(reference, candidate, labels))
        except Exception as exc:  # noqa: BLE001 - the user's code
            raise InputError(f"{self.spec}: the metric failed ({type(exc).__name__}: {exc})") from None


# --- the masked model --------------------------------------------------------------------------
def mask_input_name(group_id: int) -> str:
    return f"onnxprune_mask_{group_id}"


def masked_model(dg: DepGraph, group_ids: list[int]) -> onnx.ModelProto:
    """A copy of the model with a float mask input [channels] per group, multiplied into every
    axis where a weight consumes the group's channels."""
    model = onnx.ModelProto()
    model.CopyFrom(dg.index.model)
    graph = model.graph
    nodes = list(graph.node)
    inserted: dict[int, list[onnx.NodeProto]] = {}
    for gid in group_ids:
        group = dg.groups[gid]
        mask = mask_input_name(gid)
        graph.input.append(helper.make_tensor_value_info(mask, onnx.TensorProto.FLOAT, [group.n_channels]))
        for dim in consumption_points(dg, group):
            rank = len(dg.index.shape(dim.tensor))
            tag = f"{dim.tensor}__m{gid}_{dim.axis}"
            graph.initializer.append(numpy_helper.from_array(group.classes[dim].astype(np.int64), f"{tag}_idx"))
            shape = [1] * rank
            shape[dim.axis] = -1
            graph.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{tag}_shape"))
            producer = dg.index.producer.get(dim.tensor, -1)
            new_nodes = channel_mask_nodes(dim.tensor, mask, f"{tag}_idx", f"{tag}_shape", tag)
            inserted.setdefault(producer, []).extend(new_nodes)
            for node_i, slot in dg.index.consumers.get(dim.tensor, []):
                if slot >= 0 and any(dg.graph.has_edge(dim, other) for other in _weight_dims(dg, node_i)):
                    nodes[node_i].input[slot] = tag
    ordered = list(inserted.get(-1, []))
    for i, node in enumerate(nodes):
        ordered.append(node)
        ordered.extend(inserted.get(i, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def _weight_dims(dg: DepGraph, node_i: int):
    """The consuming-weight dims of node `node_i`: its constant weights' (per use), or those of a
    weight computed from constants (DequantizeLinear output) that it reads."""
    inputs = set(dg.index.model.graph.node[node_i].input)
    return [d for d, role in dg.roles.items() if role == IN and (d.use == node_i if d.is_const else d.tensor in inputs)]


# --- evaluation --------------------------------------------------------------------------------
@dataclass
class EvalSetup:
    model_bytes: bytes
    feeds: dict[str, np.ndarray]
    channels: dict[int, int]
    labels: np.ndarray | None
    metric: str | Metric
    batch: int
    threads: int


class Evaluator:
    """One onnxruntime session over the masked model, the data in batches, the reference outputs."""

    def __init__(self, setup: EvalSetup, reference: list[np.ndarray] | None = None):
        from .runtime import batches, make_session

        model = onnx.ModelProto()
        model.ParseFromString(setup.model_bytes)
        self.session = make_session(model, threads=setup.threads)
        self.setup = setup
        self.chunks = list(batches(setup.feeds, setup.batch))
        self.metric = METRICS[setup.metric] if isinstance(setup.metric, str) else setup.metric
        self.reference = reference if reference is not None else self.run({})

    def run(self, masks: KeepMasks) -> list[np.ndarray]:
        full = {mask_input_name(g): masks.get(g, np.ones(n, dtype=np.float32)).astype(np.float32)
                for g, n in self.setup.channels.items()}
        outputs = [run_chunked(self.session, {**chunk, **full}) for chunk in self.chunks]
        return [np.concatenate([o[k] for o in outputs]) for k in range(len(outputs[0]))]

    def loss(self, masks: KeepMasks) -> float:
        return self.metric(self.reference, self.run(masks), self.setup.labels)


_WORKER: Evaluator | None = None


def _worker_init(setup: EvalSetup, reference: list[np.ndarray]) -> None:
    global _WORKER
    _WORKER = Evaluator(setup, reference)


def _worker_eval(task: tuple[int, float, np.ndarray]) -> tuple[int, float, float]:
    gid, ratio, keep = task
    return gid, ratio, _WORKER.loss({gid: keep.astype(np.float32)})


# --- the analysis ------------------------------------------------------------------------------
@dataclass
class Sensitivity:
    """Loss per group and ratio (the sens.json document)."""

    model_sha256: str
    metric: str
    criterion: str
    ratios: list[float]
    baseline: float
    groups: dict[int, "GroupSensitivity"] = field(default_factory=dict)
    reconstruct: bool = False
    """Losses measured after re-fitting the layers that read the pruned group (see the module docstring)."""

    def to_json(self) -> str:
        return json.dumps({"format": SENS_FORMAT, "version": SENS_VERSION, "model": {"sha256": self.model_sha256},
                           "metric": self.metric, "criterion": self.criterion, "ratios": self.ratios,
                           "baseline": self.baseline, "reconstruct": self.reconstruct,
                           "groups": {str(g): asdict(v) for g, v in sorted(self.groups.items())}}, indent=1) + "\n"

    def write(self, path: Path) -> None:
        write_atomic(path, self.to_json().encode())

    @classmethod
    def read(cls, path: Path) -> "Sensitivity":
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a sensitivity file (not UTF-8 JSON text)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a sensitivity file ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != SENS_FORMAT or doc.get("version") != SENS_VERSION:
            raise InputError(f"{path}: not an onnxprune sensitivity file (version {SENS_VERSION})")
        try:
            groups = {int(g): GroupSensitivity(int(v["channels"]), list(v["layers"]), {float(r): float(l) for r, l in v["losses"].items()},
                                               list(v.get("origins") or []))
                      for g, v in doc["groups"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}: malformed sensitivity group ({exc})") from None
        return cls(doc["model"]["sha256"], doc["metric"], doc["criterion"], doc["ratios"], doc["baseline"], groups,
                   bool(doc.get("reconstruct", False)))

    def curve(self, group_id: int) -> tuple[np.ndarray, np.ndarray]:
        losses = self.groups[group_id].losses
        ratios = np.array([0.0] + sorted(losses))
        return ratios, np.array([0.0] + [max(losses[r], 0.0) for r in sorted(losses)])


@dataclass
class GroupSensitivity:
    """One group's measured loss at each ratio of its channels removed (alone)."""

    channels: int
    layers: list[str]
    losses: dict[float, float] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    """The layers' origin-framework names in graph order (onnxprune.origin.group_origins), for
    tables and legends; empty in files written before they were recorded."""


def structure_digest(dg: DepGraph) -> str:
    """Identifies the model's prunable structure (groups, members, channel counts)."""
    parts = [f"{g.id}:{g.n_channels}:" + ",".join(f"{d.tensor}/{d.axis}/{d.use}" for d in g.const_dims) for g in dg.prunable_groups]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def candidate_keep(scores: np.ndarray, ratio: float, group, round_to: int = 1) -> np.ndarray:
    """Keep mask removing `ratio` of the group's lowest-scoring channels (kept count rounded up to
    a multiple of `round_to` when allocating; the analysis itself measures unrounded ratios)."""
    from .allocation import _keep_top, _rounded_keep

    n_keep = _rounded_keep(group.n_channels, group.n_channels - int(round(ratio * group.n_channels)), round_to)
    return _keep_top(group, scores, n_keep, round_to)


def analyse(model, feeds: dict[str, np.ndarray], labels: np.ndarray | None = None, metric: str = "top1-agreement",
            ratios=DEFAULT_RATIOS, criterion="l1", workers: int = 1, backend: str = "local", batch: int = 32,
            out: Path | None = None, progress: bool = False, reconstruct: "ReconstructOptions | bool" = False) -> Sensitivity:
    """Run (or resume) the analysis of `model` (a PrunableModel) on `feeds`.  `metric` is a name
    from METRICS or any callable (reference outputs, candidate outputs, labels) -> loss, for
    detection or segmentation heads; with workers > 1 it must be picklable (a module-level
    function).  `reconstruct` (True or ReconstructOptions) scores each candidate after
    re-fitting on `feeds` (in this process: workers and backend do not apply)."""
    if isinstance(metric, str) and metric not in METRICS:
        raise InputError(f"options: unknown metric '{metric}' (choose from {', '.join(METRICS)})")
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")
    if metric == "accuracy" and labels is None:
        raise InputError("options: --metric accuracy needs labels (--labels, or a 'labels' array in the .npz)")
    n = sample_count(feeds)
    if labels is not None and len(labels) != n:
        raise InputError(f"labels: {len(labels)} labels for {n} samples")
    ratios = [float(r) for r in ratios]
    if any(not 0 < r < 1 for r in ratios):
        raise InputError(f"options: ratios must lie in (0, 1), got {ratios}")
    dg = model.depgraph
    groups = model.groups
    digest = structure_digest(dg)
    criterion_name = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")
    result = Sensitivity(digest, metric_name, criterion_name, ratios, 0.0, reconstruct=bool(reconstruct))
    if reconstruct and (workers > 1 or backend != "local"):
        raise InputError("options: --reconstruct runs the candidates in this process (no --workers, no --backend ray)")
    if out is not None and Path(out).exists():
        previous = Sensitivity.read(Path(out))
        if previous.model_sha256 != digest:
            raise InputError(f"{out}: sensitivity file of another model (its groups differ from this model's)")
        if (previous.metric, previous.criterion, previous.reconstruct) != (metric_name, criterion_name, bool(reconstruct)):
            raise InputError(f"{out}: made with metric {previous.metric}, criterion {previous.criterion} and reconstruct "
                             f"{previous.reconstruct}; use another output file or the same settings")
        result.groups = previous.groups
    scores = model.importance(criterion, feeds)
    layers = {g.id: sorted({dg.index.model.graph.node[d.use].name for d in g.const_dims}) for g in groups}
    origins = model.origins()
    for g in groups:
        entry = result.groups.setdefault(g.id, GroupSensitivity(g.n_channels, layers[g.id], {}))
        if not entry.origins:
            entry.origins = group_origins(dg.index.model.graph.node, {d.use for d in g.const_dims}, origins)
    tasks = [(g.id, r, candidate_keep(scores[g.id], r, g)) for g in groups for r in ratios
             if r not in result.groups[g.id].losses]
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    setup = EvalSetup(masked_model(dg, [g.id for g in groups]).SerializeToString(), feeds,
                      {g.id: g.n_channels for g in groups}, labels, metric, batch, threads)
    evaluator = Evaluator(setup)
    if metric == "accuracy":
        result.baseline = accuracy(evaluator.reference, labels)
    bar = tqdm(total=len(tasks), desc="sensitivity", unit="candidate", disable=not progress)
    if reconstruct:
        from .recovery import ReconstructOptions

        options = reconstruct if isinstance(reconstruct, ReconstructOptions) else ReconstructOptions()
        results = ((gid, r, _reconstructed_loss(model, evaluator, gid, keep, feeds, options)) for gid, r, keep in tasks)
    else:
        results = _run(tasks, setup, evaluator, workers, backend)
    try:
        for gid, ratio, loss in results:
            result.groups[gid].losses[ratio] = loss
            bar.update(1)
            if out is not None:
                result.write(Path(out))
    finally:
        bar.close()
    if out is not None:
        result.write(Path(out))
    return result


def _reconstructed_loss(model, evaluator: Evaluator, gid: int, keep: np.ndarray, feeds: dict[str, np.ndarray],
                        options: "ReconstructOptions") -> float:
    """The metric of the model with group `gid` cut to `keep` and its consumers re-fitted on `feeds`."""
    from .recovery import reconstruct
    from .runtime import make_session
    from .surgery import apply_keep

    masks = {gid: keep.astype(bool)}
    pruned = apply_keep(model.depgraph, masks)
    reconstruct(model.model, pruned, model.depgraph, masks, feeds, options)
    session = make_session(pruned, threads=evaluator.setup.threads)
    outputs = [run_chunked(session, chunk) for chunk in evaluator.chunks]
    candidate = [np.concatenate([o[k] for o in outputs]) for k in range(len(outputs[0]))]
    return evaluator.metric(evaluator.reference, candidate, evaluator.setup.labels)


def _run(tasks, setup: EvalSetup, evaluator: Evaluator, workers: int, backend: str):
    if not tasks:
        return
    if backend == "ray":
        yield from _run_ray(tasks, setup, evaluator.reference, workers)
        return
    if backend != "local":
        raise InputError(f"options: unknown backend '{backend}' (local or ray)")
    if workers <= 1:
        for gid, ratio, keep in tasks:
            yield gid, ratio, evaluator.loss({gid: keep.astype(np.float32)})
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_init, initargs=(setup, evaluator.reference)) as pool:
        yield from pool.imap_unordered(_worker_eval, tasks)


def _run_ray(tasks, setup: EvalSetup, reference, workers: int):
    try:
        import ray
    except ImportError:
        raise InputError("options: --backend ray needs Ray (pip install 'onnxprune[ray]')") from None
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
    try:
        actor_class = ray.remote(num_cpus=1)(_RayWorker)
        actors = [actor_class.remote(setup, reference) for _ in range(max(workers, 1))]
        pending = [actors[i % len(actors)].evaluate.remote(task) for i, task in enumerate(tasks)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


class _RayWorker:
    def __init__(self, setup: EvalSetup, reference):
        self.evaluator = Evaluator(setup, reference)

    def evaluate(self, task):
        gid, ratio, keep = task
        return gid, ratio, self.evaluator.loss({gid: keep.astype(np.float32)})


# --- allocation from sensitivity ---------------------------------------------------------------
def ratios_for_max_loss(sens: Sensitivity, max_loss: float) -> dict[int, float]:
    """PaddleSlim's rule: each group gets the largest measured ratio whose loss stays within `max_loss`."""
    chosen = {}
    for gid in sens.groups:
        ratios, losses = sens.curve(gid)
        ok = [r for r, l in zip(ratios, losses) if l <= max_loss]
        chosen[gid] = max(ok) if ok else 0.0
    return chosen


def ratios_for_target(sens: Sensitivity, cost_of_ratios: Callable[[dict[int, float]], float], target: float) -> dict[int, float]:
    """Greedy: repeatedly take the step (one group to its next measured ratio) with the least
    predicted loss per unit of cost saved, until the cost fraction reaches `target`."""
    current = {gid: 0.0 for gid in sens.groups}
    previous = None
    cost = cost_of_ratios(current)
    while cost > target:
        best = None
        for gid in sens.groups:
            ratios, losses = sens.curve(gid)
            start = int(np.searchsorted(ratios, current[gid], side="right"))
            # the next measured ratio that saves anything (with round_to, a small step may not)
            for index in range(start, len(ratios)):
                trial = {**current, gid: float(ratios[index])}
                saved = cost - cost_of_ratios(trial)
                if saved > 0:
                    break
            else:
                continue
            added = losses[index] - losses[start - 1]
            key = (max(added, 0.0) / saved, gid)
            if best is None or key < best[0]:
                best = (key, trial)
        if best is None:
            raise InputError(f"options: the sensitivity file's ratios cannot reach {target:.1%} (least reachable: {cost:.1%})")
        previous, current = current, best[1]
        cost = cost_of_ratios(current)
    if cost < 0.99 * target and previous is not None:  # the last step overshot: stop part-way along it
        gid = next(g for g in current if current[g] != previous[g])
        low, high = previous[gid], current[gid]
        for _ in range(30):
            mid = (low + high) / 2
            if cost_of_ratios({**current, gid: mid}) > target:
                low = mid
            else:
                high = mid
        current = {**current, gid: high}
    return current


def group_label(sens: Sensitivity, group_id: int, width: int = 2) -> str:
    """A legend entry: the group's first origin-framework layers and its channel count."""
    entry = sens.groups[group_id]
    names = entry.origins or entry.layers or [f"group {group_id}"]
    more = f" +{len(names) - width}" if len(names) > width else ""
    return f"{', '.join(names[:width])}{more} ({entry.channels} ch)"


TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def group_colours(n: int) -> list[str]:
    """n distinct colours (hex): matplotlib's tab10 up to 10 groups, beyond that n evenly spaced
    hues at alternating lightness (matplotlib's default cycle repeats after 10).  Plain strings,
    so the HTML report uses the same colours without matplotlib."""
    import colorsys

    if n <= len(TAB10):
        return list(TAB10[:n])
    colours = []
    for i in range(n):
        r, g, b = colorsys.hls_to_rgb(i / n, 0.38 if i % 2 else 0.55, 0.75)
        colours.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return colours


def plotting():
    """matplotlib's pyplot (headless), or bad input saying what to install.  Called before any
    analysis when a plot is asked for, so that a missing package does not cost the whole run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("options: --plot needs matplotlib (pip install 'onnxprune[plot]')") from None
    return plt


def plot(sens: Sensitivity, path: Path, chosen: dict[int, float] | None = None) -> None:
    """Sensitivity curves per group, chosen ratios marked; written atomically as PNG."""
    plt = plotting()
    import io

    fig = sensitivity_figure(sens, chosen)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(Path(path), buffer.getvalue())


def sensitivity_figure(sens: Sensitivity, chosen: dict[int, float] | None = None):
    """The matplotlib figure of `plot` (also embedded by onnxprune.report)."""
    import matplotlib.pyplot as plt

    gids = sorted(sens.groups)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for gid, colour in zip(gids, group_colours(len(gids))):
        ratios, losses = sens.curve(gid)
        line, = ax.plot(ratios, losses, marker=".", color=colour, label=group_label(sens, gid))
        if chosen and gid in chosen:
            ax.plot([chosen[gid]], [np.interp(chosen[gid], ratios, losses)], marker="o", markersize=9,
                    markerfacecolor="none", color=line.get_color())
    ax.set_xlabel("fraction of the group's channels removed")
    ax.set_ylabel(f"loss ({sens.metric})")
    ax.set_title("sensitivity per group" + (" (circles: chosen ratios)" if chosen else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(gids) <= 24 else 3)
    fig.tight_layout()
    return fig


def allocate(model, sens: Sensitivity, scores: Scores, target_macs: float | None = None,
             target_params: float | None = None, max_loss: float | None = None,
             options=None) -> tuple[KeepMasks, dict[int, float]]:
    """Keep masks (and the chosen ratio per group) from a sensitivity analysis: the least predicted
    loss that meets a cost target, or the smallest model within `max_loss`.  `options`
    (AllocationOptions) are honoured as by the other strategies: only eligible groups (`ignore`,
    `protect_ends`), measured ratios up to `max_ratio`, kept counts rounded to `round_to`."""
    from dataclasses import replace

    from .allocation import eligible_groups

    if sens.model_sha256 != structure_digest(model.depgraph):
        raise InputError("sensitivity file: it was made for another model (its groups differ from this model's)")
    groups = {g.id: g for g in model.groups}
    round_to = options.round_to if options is not None else 1
    if options is not None:
        eligible = {g.id for g in eligible_groups(model.depgraph, options)}
        sens = replace(sens, groups={gid: replace(entry, losses={r: l for r, l in entry.losses.items() if r <= options.max_ratio})
                                     for gid, entry in sens.groups.items() if gid in eligible})

    def keep_of(ratios: dict[int, float]) -> KeepMasks:
        return {gid: candidate_keep(scores[gid], r, groups[gid], round_to) for gid, r in ratios.items() if r > 0 and gid in groups}

    if max_loss is not None:
        chosen = ratios_for_max_loss(sens, max_loss)
    else:
        which = "macs" if target_macs is not None else "params"
        target = target_macs if target_macs is not None else target_params
        if target is None:
            raise InputError("options: with --sensitivity give --target-macs, --target-params or --max-loss")
        base = getattr(model.cost({}), which)
        chosen = ratios_for_target(sens, lambda ratios: getattr(model.cost(keep_of(ratios)), which) / max(base, 1), target)
    return keep_of(chosen), chosen
