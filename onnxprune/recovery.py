"""Winning accuracy back after pruning, from unlabeled calibration inputs and the ONNX model alone.

`reconstruct` re-fits the weight of every layer that consumes a pruned group (and of grouped and
depthwise convs inside one) by ridge least squares, so that on the calibration data the pruned
layer's output matches the original layer's output (He et al. 2017, "Channel Pruning for
Accelerating Very Deep Neural Networks"; ThiNet).  The fit has an intercept, so the mean
contribution of the removed channels goes into the layer's bias (FLAP-style bias compensation,
exact in expectation); a bias is created where the layer has none and can take one.

The inputs of each layer are the *pruned* model's own activations, with the layers before it
already re-fitted, so later layers correct the error left by earlier ones (fully sequential, as
He et al.).  That still costs one pass of the data through each model: the original runs first,
as a whole model (one onnxruntime session that also returns every layer's output), and keeps for
each layer and batch only the sampled output positions and its outputs there (`_Spill`); then the
pruned model runs segment by segment, from one layer to fit to the next, and what a segment
leaves for later segments (the cut) waits in RAM or a scratch folder, one file per batch.

Memory does not grow with the number of samples: per layer and conv group only the sums
X^T X, X^T Y, X, Y and |Y|^2 are kept (shapes set by the layer's widths), accumulated batch by
batch over a fixed number of sampled output positions per sample (`positions`), from a buffer
of fewer than `_Stats.MIN_ROWS` rows past one batch, on one BLAS thread for the small products
(`_blas_threads`: onnxruntime's pool runs the model beside them); RAM holds one
batch of activations and, up to `memory_mb`, the sampled targets and the cut (beyond that they
go to the scratch folder on disk, which does grow with the data).

Op knowledge (patches of a conv, which input is the weight, where a bias goes) comes from the op
rules (`NodeContext.rule.linear_view`, onnxprune/ops/reconstruct.py).
"""

from __future__ import annotations

import pickle
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from threadpoolctl import ThreadpoolController
from tqdm import tqdm

from .depgraph import DepGraph
from .graph import ModelIndex, copy_fields
from .ops import IN, OUT, NodeContext
from .quality import QUALITY_BATCH, Quality, measure_all
from .runtime import batches, make_session, sample_count, with_outputs
from .ops import Dim
from .surgery import ModelWriter, kept_elements


@dataclass
class ReconstructOptions:
    """How `reconstruct` fits."""

    positions: int = 64
    """Output positions sampled per calibration sample and layer at most (all, when a layer has fewer)."""
    rows_wanted: int = 64
    """Rows per input feature a layer needs in all: a layer with few features per group
    (depthwise) samples fewer positions per sample, down to one."""
    ridge: float = 1e-3
    """Ridge strength relative to the mean input variance of the layer."""
    rows_per_feature: float = 4.0
    """A layer with fewer sampled rows than this many per input feature (a squeeze-excite FC
    sees one row per sample) only gets bias compensation: a full fit would learn the samples."""
    batch: int = 16
    seed: int = 0
    memory_mb: int = 256
    """The cut between segments stays in RAM up to this size, and goes to the scratch folder beyond."""


@dataclass
class LayerFit:
    """What reconstruction did to one layer.  Errors are the residual |y - y_original|^2 on the
    sampled calibration positions, relative to the variance of the original output."""

    node: str
    groups: int
    features: int
    rows: int
    error_before: float
    error_after: float
    fitted: bool
    """False when the fit was not better than the pruned weights on the calibration data (kept)."""
    bias_only: bool = False
    """Too few rows for a full fit: only the bias was compensated."""


@dataclass
class ReconstructReport:
    layers: list[LayerFit] = field(default_factory=list)
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    """Layers that consume a pruned group but cannot be re-fitted, with the reason."""

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "skipped": self.skipped,
                "layers": [vars(layer) for layer in self.layers]}


@dataclass
class Recovery:
    """The quality report of a prune with data (onnxprune.quality, against the original): the
    plain pruned model and, with reconstruction, the reconstructed one."""

    plain: Quality
    reconstructed: Quality | None = None
    reconstruction: ReconstructReport | None = None

    def to_json(self) -> dict:
        return {"plain": self.plain.to_json(), "reconstructed": self.reconstructed.to_json() if self.reconstructed else None,
                "reconstruction": self.reconstruction.to_json() if self.reconstruction else None}


# --- running parts of a model -------------------------------------------------------------------

def _subgraph_names(attr: onnx.AttributeProto) -> set[str]:
    names: set[str] = set()
    for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
        for node in sub.node:
            names.update(n for n in node.input if n)
            for inner in node.attribute:
                if inner.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    names |= _subgraph_names(inner)
    return names


# --- statistics ---------------------------------------------------------------------------------

ONE_THREAD_BELOW = 1 << 30
"""Floating-point operations below which one product or solve runs on one BLAS thread."""


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _blas_threads(flops: float):
    """numpy's BLAS on one thread for a small product or solve (tens of ms), all of them for a
    large one.  The products of one layer's batch are small and many (one per group of a
    depthwise conv), and OpenBLAS's threads, woken beside onnxruntime's pool, cost more than
    they save: on the shared 2-core machine one thread was 3-20x faster for PP-OCRv4 rec's
    layers (a 1024-feature solve 5-8x)."""
    return _blas().limit(limits=1, user_api="blas") if flops < ONE_THREAD_BELOW else nullcontext()


class _Stats:
    """Running sums for the per-group least-squares problems of one layer.  Rows wait in a
    buffer until it holds `MIN_ROWS` of them, so that a layer that sees few rows per batch (one
    per sample: a squeeze-excite or classifier FC) is not summed by a long series of thin
    products (a 16-row X^T X of 1024 features costs about as much as a 256-row one)."""

    MIN_ROWS = 256

    def __init__(self, groups: int, features: int, outputs: int):
        self.n = 0
        self.sx = np.zeros((groups, features))
        self.sy = np.zeros((groups, outputs))
        self.xx = np.zeros((groups, features, features))
        self.xy = np.zeros((groups, features, outputs))
        self.yy = np.zeros(groups)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add one batch of rows (x [groups, rows, features], y [groups, rows, outputs])."""
        self.pending.append((x, y))
        if sum(a.shape[1] for a, _ in self.pending) >= self.MIN_ROWS:
            self.flush()

    def flush(self) -> None:
        """Sum the buffered rows.  The products run in float32 (a buffer's sums are short) and
        accumulate in float64 across buffers, as do the column sums."""
        if not self.pending:
            return
        parts, self.pending = self.pending, []
        x = np.ascontiguousarray(np.concatenate([a for a, _ in parts], axis=1) if len(parts) > 1 else parts[0][0], dtype=np.float32)
        y = np.ascontiguousarray(np.concatenate([b for _, b in parts], axis=1) if len(parts) > 1 else parts[0][1], dtype=np.float32)
        self.n += x.shape[1]
        self.sx += x.sum(axis=1, dtype=np.float64)
        self.sy += y.sum(axis=1, dtype=np.float64)
        xt = x.transpose(0, 2, 1)
        with _blas_threads(2.0 * x.size * (x.shape[2] + y.shape[2])):
            self.xx += np.matmul(xt, x)  # batched float32 BLAS products (one per group), float64 sums
            self.xy += np.matmul(xt, y)
        flat = y.reshape(y.shape[0], -1)
        self.yy += np.einsum("gk,gk->g", flat, flat)

    def compensate(self, w: np.ndarray) -> np.ndarray:
        """The bias that makes `w`'s mean residual zero: the removed channels' mean contribution
        (bias compensation alone, for layers with too few rows for a full fit)."""
        return (self.sy - np.einsum("gf,gfo->go", self.sx, w)) / self.n

    def solve(self, ridge: float, intercept: bool) -> tuple[np.ndarray, np.ndarray]:
        """(W [g, f, o], b [g, o]) minimising the squared error plus ridge * mean variance * |W|^2."""
        mx, my = self.sx / self.n, self.sy / self.n
        if intercept:
            cxx = self.xx / self.n - mx[:, :, None] * mx[:, None, :]
            cxy = self.xy / self.n - mx[:, :, None] * my[:, None, :]
        else:
            cxx, cxy = self.xx / self.n, self.xy / self.n
        f = cxx.shape[1]
        scale = np.trace(cxx, axis1=1, axis2=2) / f
        lam = ridge * np.maximum(scale, 1e-12)
        w = np.linalg.solve(cxx + lam[:, None, None] * np.eye(f), cxy)
        b = my - np.einsum("gf,gfo->go", mx, w) if intercept else np.zeros_like(my)
        return w, b

    def error(self, w: np.ndarray, b: np.ndarray) -> float:
        """Mean squared residual of y ~ x W + b on the accumulated rows, relative to Var(y)."""
        n = self.n
        xw = self.xx @ w
        sse = (self.yy - 2 * np.einsum("gfo,gfo->g", w, self.xy) - 2 * np.einsum("go,go->g", b, self.sy)
               + np.einsum("gfo,gfo->g", xw, w) + 2 * np.einsum("go,go->g", b, np.einsum("gf,gfo->go", self.sx, w))
               + n * np.einsum("go,go->g", b, b))
        var = self.yy - np.einsum("go,go->g", self.sy, self.sy) / n
        return float(max(sse.sum(), 0.0) / max(var.sum(), 1e-30))


# --- reconstruction -----------------------------------------------------------------------------

def _pruned_layers(dg: DepGraph, keep: dict[int, np.ndarray]) -> tuple[set[int], set[int]]:
    """Node indices of the weight layers that consume a group losing channels, and of those
    that produce one."""
    consumers, producers = set(), set()
    for gid, mask in keep.items():
        if np.all(mask):
            continue
        group = dg.groups[gid]
        for dim in group.const_dims:
            role = group.roles.get(dim)
            if role == IN:
                consumers.add(dim.use)
            elif role == OUT:
                producers.add(dim.use)
    return consumers, producers


def _in_pruned(original: ModelIndex, pruned: ModelIndex, nodes: set[int], renamed: dict[str, str] | None = None) -> set[int]:
    """The pruned model's indices of these nodes of the original (surgery may replace a node by
    several, e.g. an exact LayerNorm, which shifts the later ones): found by their first output,
    under its new name where reconstruction attached a bias (`renamed`)."""
    names = ((renamed or {}).get(n, n) for n in (original.model.graph.node[i].output[0] for i in nodes))
    return {pruned.producer[name] for name in names if name in pruned.producer}


@dataclass(frozen=True)
class _AttachedBias:
    """A zero bias added after a layer that had none, so its fit gets an intercept: the layer now
    writes `unbiased`, and `node` adds `initializer` to it under the layer's old output name."""

    node: str
    initializer: str
    output: str
    unbiased: str


def _attach_biases(model: onnx.ModelProto, index: ModelIndex, layers: set[int]) -> list[_AttachedBias]:
    """Give every layer in `layers` that has no bias but can take one (LinearView.attachable_bias:
    Llama's attention-output and MLP-down MatMuls) a zero bias node right after it, in place in
    `model`; the fit then moves the removed channels' mean contribution there (FLAP-style)."""
    from .ops.build import bias_add_node

    attached, after = [], {}
    for i in sorted(layers):
        ctx = NodeContext(index, i)
        view = ctx.rule.linear_view(ctx)
        if view is None or view.bias is not None or not view.attachable_bias:
            continue
        node = model.graph.node[i]
        weight = index.const(node.input[view.weight_slot])
        out = node.output[0]
        bias = ModelWriter(model, index).add_constant(f"{node.name or out}/compensation", np.zeros(weight.shape[1], weight.dtype))
        item = _AttachedBias(f"{node.name or out}/compensation_add", bias, out, f"{out}/unbiased")
        node.output[0] = item.unbiased
        after[i] = bias_add_node(item.unbiased, bias, out, item.node)
        attached.append(item)
    if after:
        nodes = [n for i, node in enumerate(model.graph.node) for n in ([node, after[i]] if i in after else [node])]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return attached


def _drop_unused_biases(model: onnx.ModelProto, attached: list[_AttachedBias]) -> None:
    """Remove the attached biases that stayed zero (the fit was not kept): the layer writes its
    old output again, and the model has no node it does not need."""
    values = {t.name: t for t in model.graph.initializer}
    unused = [b for b in attached if not np.any(onnx.numpy_helper.to_array(values[b.initializer]))]
    if not unused:
        return
    drop = {b.node for b in unused}
    restore = {b.unbiased: b.output for b in unused}
    nodes = [n for n in model.graph.node if n.name not in drop]
    for n in nodes:
        n.output[:] = [restore.get(o, o) for o in n.output]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    inits = [t for t in model.graph.initializer if t.name not in {b.initializer for b in unused}]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


class _Stepper:
    """Runs a model segment by segment over the calibration batches, keeping between segments
    only the tensors still needed later (the *cut*), one file per batch in a scratch folder: so a
    layer can be re-fitted before the data flows on through it, and the whole model is still run
    once in total.  RAM holds one batch; the scratch folder holds the cut for all batches."""

    def __init__(self, model: onnx.ModelProto, index: ModelIndex, feeds: list[dict[str, np.ndarray]],
                 folder: Path, name: str):
        self.model, self.elem_types, self.feeds, self.folder, self.name = model, index.elem_types, feeds, folder, name
        self.external = index.external  # mapped weights whose initializers are stubs: handed to onnxruntime in place
        self.constant_nodes = index.constant_nodes  # copied into each segment that reads them, never carried
        self.position = 0  # nodes before this index have run
        self.last_use: dict[str, int] = {}
        for i, node in enumerate(model.graph.node):
            for n in node.input:
                self.last_use[n] = i
            for attr in node.attribute:
                if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    for n in _subgraph_names(attr):
                        self.last_use[n] = i
        self.step = 0
        self.in_memory: dict[int, dict[str, np.ndarray]] = {}
        self.next_memory: dict[int, dict[str, np.ndarray]] = {}
        self.next_bytes = 0
        self.budget = 0

    def _state(self, j: int) -> dict[str, np.ndarray]:
        if self.step == 0:
            return self.feeds[j]
        if j in self.in_memory:
            return self.in_memory.pop(j)
        path = self.folder / f"{self.name}-{self.step}-{j}.pkl"
        with open(path, "rb") as f:
            state = pickle.load(f)  # our own scratch file, written by _keep() below
        path.unlink()
        return state

    def _keep(self, j: int, state: dict[str, np.ndarray], budget: int) -> None:
        """Keep batch j's cut for the next step: in RAM while the step's cut fits `budget` bytes."""
        size = sum(v.nbytes for v in state.values())
        if self.next_bytes + size <= budget:
            self.next_memory[j] = state
            self.next_bytes += size
            return
        with open(self.folder / f"{self.name}-{self.step + 1}-{j}.pkl", "wb") as f:
            pickle.dump(state, f, protocol=5)

    def advance(self, end: int, want: list[str], pending: set[str]):
        """Run nodes [position, end) on every batch; yield, per batch, the tensors `want` (from the
        cut or computed here).  Afterwards the cut holds what nodes from `end` on, or `pending`,
        still need."""
        graph = self.model.graph
        nodes = [node for node in graph.node[self.position:end]
                 if not (node.output and node.output[0] in self.constant_nodes)]
        produced = {o for node in nodes for o in node.output if o}
        session, inputs, outputs = None, [], []
        live = lambda n: (self.last_use.get(n, -1) >= end or n in pending) and n not in self.constant_nodes  # noqa: E731
        if nodes:
            inits = {t.name for t in graph.initializer}
            needed = {n for node in nodes for n in node.input if n}
            for node in nodes:
                for attr in node.attribute:
                    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                        needed |= _subgraph_names(attr)
            constants = [graph.node[self.constant_nodes[n]] for n in sorted(needed) if n in self.constant_nodes]
            nodes = constants + nodes
            produced |= {n for n in needed if n in self.constant_nodes}
            inputs = sorted(n for n in needed if n not in produced and n not in inits)
            outputs = sorted({n for n in produced if live(n)} | {n for n in want if n in produced and n not in self.constant_nodes})
            mapped = {n: self.external[n] for n in sorted(needed) if n in self.external}
            segment = _segment(self.model, nodes, inputs, outputs, needed, self.elem_types)
            session = make_session(segment, arrays=mapped) if outputs else None
        for j in range(len(self.feeds)):
            state = self._state(j)
            values = dict(state)
            if session is not None:
                values.update(zip(outputs, session.run(outputs, {n: state[n] for n in inputs})))
            yield {n: values[n] for n in want}
            self._keep(j, {n: v for n, v in values.items() if live(n)}, self.budget)
        self.step += 1
        self.position = end
        self.in_memory, self.next_memory, self.next_bytes = self.next_memory, {}, 0


def _segment(model: onnx.ModelProto, nodes: list, inputs: list[str], outputs: list[str], needed: set[str],
             elem_types: dict[str, int]) -> onnx.ModelProto:
    graph = onnx.GraphProto(name="segment")
    graph.node.extend(nodes)
    graph.initializer.extend(t for t in model.graph.initializer if t.name in needed)
    graph.input.extend(onnx.helper.make_tensor_value_info(n, elem_types.get(n, onnx.TensorProto.FLOAT), None) for n in inputs)
    graph.output.extend(onnx.helper.make_tensor_value_info(n, elem_types.get(n, onnx.TensorProto.FLOAT), None) for n in outputs)
    copy = onnx.ModelProto()
    copy_fields(model, copy, skip="graph")
    copy.graph.CopyFrom(graph)
    return copy


class _Spill:
    """Values kept for later, in RAM up to `budget` bytes and in the scratch folder beyond."""

    def __init__(self, folder: Path, name: str, budget: int):
        self.folder, self.name, self.budget = folder, name, budget
        self.memory: dict[tuple[int, int], object] = {}
        self.bytes = 0

    def _path(self, key: tuple[int, int]) -> Path:
        return self.folder / f"{self.name}-{key[0]}-{key[1]}.pkl"

    def put(self, key: tuple[int, int], value: tuple[tuple[np.ndarray, ...], np.ndarray]) -> None:
        size = value[1].nbytes + sum(a.nbytes for a in value[0])
        if self.bytes + size <= self.budget:
            self.memory[key] = value
            self.bytes += size
            return
        with open(self._path(key), "wb") as f:
            pickle.dump(value, f, protocol=5)

    def pop(self, key: tuple[int, int]):
        if key in self.memory:
            value = self.memory.pop(key)
            self.bytes -= value[1].nbytes + sum(a.nbytes for a in value[0])
            return value
        path = self._path(key)
        with open(path, "rb") as f:
            value = pickle.load(f)  # our own scratch file, written by put() above
        path.unlink()
        return value


def _original_targets(dg: DepGraph, keep: dict[int, np.ndarray], views: list,
                      per_sample: list[int], parts: list[dict[str, np.ndarray]], store: _Spill,
                      rng: np.random.Generator) -> None:
    """What each layer must reproduce: one run of the whole original model per batch (one
    onnxruntime session that also returns every layer's output, so the original is not cut into
    segments), keeping for layer k and batch j only the sampled positions and the original's
    outputs there, restricted to the channels the pruned layer still makes."""
    kept = kept_elements(dg, keep)
    names = list(dict.fromkeys(view.output for view in views))
    model, arrays = with_outputs(dg.index, names)
    session = make_session(model, arrays=arrays)  # the index's weights, read in place
    for j, part in enumerate(parts):
        values = dict(zip(names, session.run(names, part)))
        for k, view in enumerate(views):
            y = values[view.output]
            channels = kept.get(Dim(view.output, view.channel_axis % y.ndim))
            pos = view.positions(y.shape, per_sample[k], rng)  # drawn over all but the channel axis
            store.put((k, j), (pos, np.ascontiguousarray(view.targets(y, pos, channels), dtype=np.float32)))


def positions_per_sample(features: int, n_samples: int, positions: int, rows_wanted: int) -> int:
    """Output positions to sample per calibration sample for a layer with `features` inputs per
    group: enough for `rows_wanted` rows per feature over the data, at most `positions`, at least
    one (reconstruction's fits, and ThiNet's contribution statistics, onnxprune.thinet)."""
    return int(min(positions, max(1, -(-rows_wanted * features // n_samples))))


def reconstruct(original: onnx.ModelProto, pruned: onnx.ModelProto, dg: DepGraph, keep: dict[int, np.ndarray],
                feeds: dict[str, np.ndarray], options: ReconstructOptions | None = None,
                progress: bool = False) -> ReconstructReport:
    """Re-fit, in place in `pruned`, the layers that consume pruned channels (see the module
    docstring).  `dg` and `keep` are the original's dependency graph and the kept channels."""
    options = options or ReconstructOptions()
    start = time.perf_counter()
    report = ReconstructReport()
    index = ModelIndex.build(pruned)
    layers = _pruned_layers(dg, keep)
    consumers, producers = (_in_pruned(dg.index, index, nodes) for nodes in layers)
    attached = _attach_biases(pruned, index, consumers)
    if attached:  # the layers moved: index the model again (their outputs now come from the new Adds)
        index = ModelIndex.build(pruned)
        renamed = {b.output: b.unbiased for b in attached}
        consumers, producers = (_in_pruned(dg.index, index, nodes, renamed) for nodes in layers)
    writer = ModelWriter(pruned, index)
    views = []  # consumers of pruned groups, and grouped convs inside one (their groups see re-fitted inputs)
    for i in sorted(consumers | producers):
        ctx = NodeContext(index, i)
        view = ctx.rule.linear_view(ctx)
        if view is None:
            if i in consumers:
                report.skipped.append(f"{index.node_label(i)}: its weight or bias cannot be re-fitted")
            continue
        if i in consumers or (i in producers and view.groups > 1):
            views.append(view)
    if not views:
        report.seconds = time.perf_counter() - start
        return report
    parts = list(batches(feeds, options.batch))
    n_samples = sample_count(feeds)
    per_sample = [positions_per_sample(view.matrices(index.const(pruned.graph.node[view.node].input[view.weight_slot])).shape[1],
                                       n_samples, options.positions, options.rows_wanted) for view in views]
    bar = tqdm(total=len(views) + 1, desc="reconstruct", unit="layer", disable=not progress, leave=False)
    with tempfile.TemporaryDirectory(prefix="onnxprune-reconstruct-") as scratch:
        folder = Path(scratch)
        budget = options.memory_mb << 19  # half for the targets, half for the pruned model's cut
        targets = _Spill(folder, "targets", budget)
        _original_targets(dg, keep, views, per_sample, parts, targets, np.random.default_rng(options.seed))
        bar.update(1)
        ours = _Stepper(pruned, index, parts, folder, "pruned")
        ours.budget = budget
        for k, view in enumerate(views):
            stats = None
            for j, x_part in enumerate(ours.advance(view.node, [view.input], {v.input for v in views[k:]})):
                pos, y = targets.pop((k, j))
                rows = view.rows(x_part[view.input], pos)
                stats = stats or _Stats(rows.shape[0], rows.shape[2], y.shape[2])
                stats.add(rows, y)
            report.layers.append(_fit(view, stats, index, writer, options))
            bar.update(1)
    bar.close()
    _drop_unused_biases(pruned, attached)
    report.seconds = time.perf_counter() - start
    return report


def _fit(view, stats: _Stats, index: ModelIndex, writer: ModelWriter, options: ReconstructOptions) -> LayerFit:
    """Solve one layer and write its weight and bias when that lowers its calibration error."""
    node = index.model.graph.node[view.node]
    weight = index.const(node.input[view.weight_slot])
    w0 = view.matrices(weight.astype(np.float64))
    n_out = w0.shape[0] * w0.shape[2]
    b0 = (view.bias.vector(n_out) if view.bias is not None else np.zeros(n_out)).reshape(w0.shape[0], -1)
    stats.flush()
    groups, features, outputs = w0.shape
    with _blas_threads(groups * features ** 2 * (features + outputs)):
        before = stats.error(w0, b0)
        if stats.n >= options.rows_per_feature * features:
            w, b = stats.solve(options.ridge, view.bias is not None)
        elif view.bias is not None:
            w, b = w0, stats.compensate(w0)
        else:
            w, b = w0, b0
        after = stats.error(w, b)
    fitted = bool(np.all(np.isfinite(w)) and after < before)
    if fitted:
        if w is not w0:
            writer.set_input_const(view.node, view.weight_slot, view.weight_from(w, weight))
        if view.bias is not None:
            writer.set_input_const(view.bias.node, view.bias.slot, view.bias.stored(b.reshape(-1), weight.dtype))
    return LayerFit(index.node_label(view.node), int(w0.shape[0]), int(w0.shape[1]), int(stats.n),
                    before, after if fitted else before, fitted, w is w0)


def recover(original: onnx.ModelProto, pruned: onnx.ModelProto, dg: DepGraph, keep: dict[int, np.ndarray],
            feeds: dict[str, np.ndarray], options: ReconstructOptions | None, labels: np.ndarray | None = None,
            progress: bool = False) -> tuple[onnx.ModelProto, Recovery]:
    """The quality report of a prune with data, reconstructing first when `options` is given.
    Reconstruction that would make the model agree less with the original on the calibration data
    than plain pruning is dropped (the report says so: `reconstructed` is then None)."""
    parts = list(batches(feeds, QUALITY_BATCH))
    if options is None:
        (plain,) = measure_all(original, [pruned], parts, labels, dg.index.external)
        return pruned, Recovery(plain)
    plain_bytes = pruned.SerializeToString()
    report = reconstruct(original, pruned, dg, keep, feeds, options, progress)
    plain, fitted = measure_all(original, [plain_bytes, pruned], parts, labels, dg.index.external)
    if _worse(fitted, plain):
        restored = onnx.ModelProto.FromString(plain_bytes)
        return restored, Recovery(plain, None, report)
    return pruned, Recovery(plain, fitted, report)


def _worse(fitted: Quality, plain: Quality) -> bool:
    """Whether the reconstructed model agrees less with the original: by top-1 agreement where the
    output is classifier-like (a largest-difference measure can rise while every decision
    improves), else by the relative error."""
    if fitted.top1_agreement is not None and plain.top1_agreement is not None:
        return fitted.top1_agreement < plain.top1_agreement
    return fitted.rel_error > plain.rel_error
