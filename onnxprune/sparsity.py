"""Fine-grained (element-wise) magnitude sparsity: zero the smallest weights of Conv,
ConvTranspose, Gemm and MatMul layers, verify, and optionally store the result compactly.

Channel pruning (the rest of onnxprune) makes a model faster on any runtime; zeroing single weights
does not (dense kernels multiply zeros as fast as anything else) but shrinks the file, because
runs of zeros compress and an ONNX sparse initializer stores only the non-zeros.  Three rules
decide what goes:

- per-layer sparsity S (PaddlePaddle's pruning hook): in every layer the round(S * n) smallest
  |w| go, so each layer reaches S within half a weight;
- Han et al. (2015), "Learning both weights and connections": in every layer the weights with
  |w| < quality * std(w) go (population standard deviation of the layer's weights);
- either rule with `global_ranking`: one ranking (or one std) across all selected layers.

Weights of equal magnitude are ranked by position (a stable sort), so counts are exact and the
same input and options give the same masks.  A mask is True where a weight stays; masks are keyed
by initializer name, an initializer shared by several nodes is masked once, and weights reached
through element-preserving ops (Transpose, Reshape, ...) are masked on the initializer itself.

Defaults: depthwise convs are left dense (each filter has only k*k weights, so a few zeros remove
most of a channel's signal, and they hold a tiny share of the parameters); the first and last
layers are pruned like the others unless `protect_ends` is set, as in `prune`.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .api import PrunableModel
from .allocation import compile_patterns
from .errors import InputError, OnnxPruneError
from .graph import ModelIndex
from .load import load_model
from .ops import NodeContext, op_label
from .origin import node_scope
from .runtime import make_session, run_chunked
from .save import save_model, write_atomic
from .verify import VerifyReport, _io_signature, verify

from .cost import FLOAT_TYPES

GZIP_LEVEL = 6
"""gzip's own default: level 9 is several times slower for about 1% smaller weights."""


@dataclass
class SparsityOptions:
    """How much to zero (one of `sparsity`, `quality`) and where."""

    sparsity: float | None = None
    quality: float | None = None
    global_ranking: bool = False
    ignore: list[str] = field(default_factory=list)
    include_depthwise: bool = False
    protect_ends: bool = False

    def validate(self) -> None:
        if (self.sparsity is None) == (self.quality is None):
            raise InputError("options: say how much to zero: one of --sparsity S or --quality Q")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise InputError(f"options: --sparsity {self.sparsity} is outside [0, 1) (a fraction: 0.75 zeroes 75% of the weights)")
        if self.quality is not None and not self.quality >= 0:
            raise InputError(f"options: --quality {self.quality} is negative (it multiplies each layer's weight std)")
        compile_patterns(self.ignore)


@dataclass
class WeightUse:
    """One initializer that feeds the weight input of one or more layers."""

    name: str
    op: str
    nodes: list[str]
    node_ids: list[int]
    depthwise: bool
    scope: str | None


@dataclass
class LayerSparsity:
    """One row of the report: a masked initializer and how many of its weights are zero."""

    name: str
    op: str
    nodes: list[str]
    params: int
    zeros: int
    scope: str | None = None
    """Origin-framework layer of the first node using the weight (onnxprune.origin.node_scope): how
    to find the parameter when the initializer name is not one (legacy `onnx::Conv_12` names)."""

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0


# --- choosing the weights --------------------------------------------------------------------

def _source_initializer(index: ModelIndex, name: str) -> str | None:
    """The initializer a weight input comes from, directly or through element-preserving ops."""
    for _ in range(16):
        if name in index.initializers:
            return name
        producer = index.producer.get(name)
        if producer is None:
            return None
        ctx = NodeContext(index, producer)
        if not ctx.rule.preserves_elements:
            return None
        name = ctx.input(0)
    return None


def weight_uses(index: ModelIndex) -> list[WeightUse]:
    """Every float initializer that is a layer's weight (`OpRule.weights`: Conv, ConvTranspose,
    Gemm, MatMul), in the order of its first use (ONNX node order is topological)."""
    uses: dict[str, WeightUse] = {}
    for i, node in enumerate(index.model.graph.node):
        ctx = NodeContext(index, i)
        for weight in ctx.rule.weights(ctx):
            if not ctx.input(weight.slot):
                continue
            source = _source_initializer(index, ctx.input(weight.slot))
            if source is None or index.initializers[source].data_type not in FLOAT_TYPES:
                continue
            label = node.name or node.output[0]
            use = uses.setdefault(source, WeightUse(source, op_label(node), [], [], False, node_scope(node)))
            use.nodes.append(label)
            use.node_ids.append(i)
            use.depthwise |= weight.depthwise
    return list(uses.values())


def select_weights(uses: list[WeightUse], options: SparsityOptions) -> list[WeightUse]:
    """The weights to sparsify: minus ignored names, depthwise convs (unless included) and, with
    `protect_ends`, the weights of the first and last weighted layers (by node order)."""
    patterns = compile_patterns(options.ignore)
    ends: set[int] = set()
    if options.protect_ends and uses:
        ids = [i for u in uses for i in u.node_ids]
        ends = {min(ids), max(ids)}
    return [use for use in uses
            if not any(p.search(n) for p in patterns for n in [use.name, *use.nodes])
            and (options.include_depthwise or not use.depthwise)
            and not ends & set(use.node_ids)]


# --- masks (pure functions on arrays, usable from a training loop) ---------------------------

def _magnitude(weight: np.ndarray) -> np.ndarray:
    """|w| flattened, in a float type that holds every value of the weight exactly."""
    weight = np.asarray(weight)
    return np.abs(weight.astype(np.float64 if weight.dtype == np.float64 else np.float32)).ravel()


def _keep_all_but_smallest(magnitude: np.ndarray, n_zero: int) -> np.ndarray:
    """Flat mask that drops exactly the `n_zero` smallest entries; ties go in index order."""
    keep = np.ones(magnitude.size, dtype=bool)
    keep[np.argsort(magnitude, kind="stable")[:n_zero]] = False
    return keep


def magnitude_masks(weights: dict[str, np.ndarray], sparsity: float | None = None, quality: float | None = None,
                    global_ranking: bool = False) -> dict[str, np.ndarray]:
    """Masks (True = keep) for `weights`: the round(sparsity * n) smallest |w| of each weight (or of
    all of them together with `global_ranking`) go, or, with `quality`, every |w| < quality *
    std(w) (std of each weight, or of all together).  Takes any arrays, e.g. a torch module's
    parameters during gradual pruning."""
    SparsityOptions(sparsity=sparsity, quality=quality).validate()
    magnitudes = {name: _magnitude(w) for name, w in weights.items()}
    if global_ranking and magnitudes:
        flat = np.concatenate(list(magnitudes.values()))
        if sparsity is not None:
            kept = _keep_all_but_smallest(flat, round(sparsity * flat.size))
        else:
            values = np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights.values()])
            kept = flat >= quality * float(np.std(values))
        parts = np.split(kept, np.cumsum([m.size for m in magnitudes.values()])[:-1])
    elif sparsity is not None:
        parts = [_keep_all_but_smallest(m, round(sparsity * m.size)) for m in magnitudes.values()]
    else:
        parts = [m >= quality * float(np.std(np.asarray(weights[name], dtype=np.float64)))
                 for name, m in magnitudes.items()]
    return {name: part.reshape(np.shape(weights[name])) for name, part in zip(weights, parts)}


def zero_masked(model: onnx.ModelProto, masks: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose masked initializers hold exact zeros where their mask is False."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in masks:
            weight = numpy_helper.to_array(tensor)
            zeroed = np.where(masks[tensor.name], weight, np.zeros((), dtype=weight.dtype)).astype(weight.dtype)
            tensor.CopyFrom(numpy_helper.from_array(zeroed, tensor.name))
    return out


# --- compact storage ---------------------------------------------------------------------------

def to_sparse(model: onnx.ModelProto, names: set[str] | list[str]) -> onnx.ModelProto:
    """A copy of `model` storing the named initializers as ONNX sparse initializers (COO), where
    that is smaller.  Indices are linearised (one int64 per non-zero, not one per axis): onnx
    requires int64 indices, onnxruntime accepts the linear form and densifies at load time.  A
    float32 weight therefore costs 12 bytes per non-zero instead of 4 per element: sparse storage
    pays off above 2/3 sparsity, and below that the dense tensor stays."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    dense, sparse = [], []
    for tensor in graph.initializer:
        if tensor.name not in names:
            dense.append(tensor)
            continue
        flat = numpy_helper.to_array(tensor).ravel()
        where = np.flatnonzero(flat)
        if where.size * (flat.itemsize + 8) >= flat.size * flat.itemsize:
            dense.append(tensor)
            continue
        values = numpy_helper.from_array(flat[where], tensor.name)
        indices = numpy_helper.from_array(where.astype(np.int64), f"{tensor.name}__indices")
        sparse.append(onnx.helper.make_sparse_tensor(values, indices, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(dense)
    graph.sparse_initializer.extend(sparse)
    return out


def check_sparse(dense: onnx.ModelProto, sparse: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """The sparse-format model is valid ONNX and onnxruntime gives outputs identical to the
    dense-with-zeros model's.  Only the structural checker runs: onnx's shape inference (and so
    `full_check`) types a sparse initializer as a sparse tensor and rejects it as the input of a
    dense op, although onnxruntime densifies it at load; the dense model passed the full check."""
    try:
        onnx.checker.check_model(sparse)
    except onnx.checker.ValidationError as exc:
        raise OnnxPruneError(f"internal error: the sparse-format model fails onnx.checker ({str(exc).splitlines()[0]}); nothing written") from None
    if _io_signature(dense) != _io_signature(sparse):
        raise OnnxPruneError("internal error: sparse storage changed the model's inputs or outputs; nothing written")
    try:
        after = run_chunked(make_session(sparse), feeds)
    except Exception as exc:  # noqa: BLE001 - any runtime failure of our output is reported as ours
        raise OnnxPruneError(f"internal error: onnxruntime cannot run the sparse-format model ({str(exc).splitlines()[0]}); nothing written") from None
    before = run_chunked(make_session(dense), feeds)
    if not all(np.array_equal(a, b) for a, b in zip(before, after)):
        raise OnnxPruneError("internal error: the sparse-format model's outputs differ from the dense model's; nothing written")


def serialized_sizes(model: onnx.ModelProto) -> tuple[int, int]:
    """(bytes, gzip-compressed bytes) of the model as one file with its weights inline."""
    raw = model.SerializeToString()
    return len(raw), len(gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0))


# --- the pipeline ------------------------------------------------------------------------------

@dataclass
class SparsifyResult:
    """The sparsified model (dense, exact zeros), its masks and the per-layer report."""

    original: onnx.ModelProto
    model: onnx.ModelProto
    masks: dict[str, np.ndarray]
    layers: list[LayerSparsity]
    options: SparsityOptions
    report: VerifyReport
    feeds: dict[str, np.ndarray]
    total_params: int

    @property
    def totals(self) -> dict:
        params, zeros = sum(l.params for l in self.layers), sum(l.zeros for l in self.layers)
        return {"params": params, "zeros": zeros, "sparsity": zeros / params if params else 0.0,
                "model_params": self.total_params, "model_sparsity": zeros / self.total_params if self.total_params else 0.0}

    @cached_property
    def sparse_model(self) -> onnx.ModelProto:
        """The same model with the masked weights as sparse initializers, checked against `model`."""
        sparse = to_sparse(self.model, set(self.masks))
        check_sparse(self.model, sparse, self.feeds)
        return sparse

    def sizes(self) -> dict[str, tuple[int, int]]:
        """(bytes, gzip bytes) of the original, the dense-with-zeros and the sparse-format model."""
        return {"dense": serialized_sizes(self.original), "dense_zeros": serialized_sizes(self.model),
                "sparse": serialized_sizes(to_sparse(self.model, set(self.masks)))}

    def save(self, path: str | Path, format: str = "dense", external_data: bool | None = None) -> Path:
        """Write the model atomically, dense with zeros or (`format="sparse"`) with sparse initializers."""
        if format not in ("dense", "sparse"):
            raise InputError(f"options: --format {format} is not dense or sparse")
        return save_model(self.sparse_model if format == "sparse" else self.model, path, external_data)

    def write_masks(self, path: str | Path) -> None:
        """Save the masks as .npz keyed by initializer name (True = keep), atomically."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.masks)
        write_atomic(Path(path), buffer.getvalue())

    def summary(self) -> dict:
        """Options, layers, totals, sizes and verification as plain data (the CLI's --json)."""
        return {"options": {k: v for k, v in vars(self.options).items() if v not in (None, [], False)},
                "layers": [{"name": l.name, "op": l.op, "nodes": l.nodes, "scope": l.scope, "params": l.params,
                            "zeros": l.zeros, "sparsity": l.sparsity} for l in self.layers],
                "totals": self.totals, "sizes": self.sizes(), "max_rel_error": self.report.max_rel_error}


def _count_float_params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in FLOAT_TYPES)


def sparsify(model: str | Path | onnx.ModelProto | PrunableModel, data=None, **options) -> SparsifyResult:
    """Zero the smallest weights of `model` and verify the result (nothing saved).  Options are
    those of `SparsityOptions`: sparsity or quality, global_ranking, ignore, include_depthwise,
    protect_ends.  `data` (calibration .npz/.npy or {input: array}) feeds the verification;
    default: deterministic random inputs."""
    opts = SparsityOptions(**options)
    opts.validate()
    if isinstance(model, (str, Path)):
        model = PrunableModel(load_model(model))
    elif isinstance(model, onnx.ModelProto):
        model = PrunableModel(model)
    uses = weight_uses(model.index)
    chosen = select_weights(uses, opts)
    if not chosen:
        why = "left after --ignore, depthwise and --protect-ends" if uses else "(Conv, ConvTranspose, Gemm or MatMul with a constant float weight)"
        raise InputError(f"{model.path}: no prunable weights {why}")
    weights = {u.name: model.index.const(u.name) for u in chosen}
    masks = magnitude_masks(weights, opts.sparsity, opts.quality, opts.global_ranking)
    sparsified = zero_masked(model.model, masks)
    checked = model.check_runs(data)
    feeds = checked.feeds
    report = verify(model.model, sparsified, feeds, reference=checked.outputs)
    layers = [LayerSparsity(u.name, u.op, u.nodes, int(masks[u.name].size),
                            int(np.count_nonzero(np.where(masks[u.name], weights[u.name], 0) == 0)), u.scope) for u in chosen]
    return SparsifyResult(model.model, sparsified, masks, layers, opts, report, feeds, _count_float_params(model.model))


def format_summary(summary: dict) -> str:
    """The per-layer table, totals and file sizes as printed by `onnxprune sparsify`."""
    lines = [f"{'weight':<40} {'op':<13} {'params':>10} {'zeros':>10} {'sparsity':>8}"]
    for layer in summary["layers"]:
        lines.append(f"{layer['name'][:40]:<40} {layer['op']:<13} {layer['params']:>10} {layer['zeros']:>10} {layer['sparsity']:>8.1%}")
    t = summary["totals"]
    lines.append(f"{'total (sparsified layers)':<54} {t['params']:>10} {t['zeros']:>10} {t['sparsity']:>8.1%}")
    lines.append(f"whole model: {t['zeros']} of {t['model_params']} float parameters are zero ({t['model_sparsity']:.1%})")
    lines.append(f"\n{'size (weights inline)':<22} {'bytes':>12} {'gzip':>12}")
    for key, label in (("dense", "dense (input)"), ("dense_zeros", "dense with zeros"), ("sparse", "sparse format")):
        raw, packed = summary["sizes"][key]
        lines.append(f"{label:<22} {raw:>12} {packed:>12}")
    return "\n".join(lines)


__all__ = ["LayerSparsity", "SparsifyResult", "SparsityOptions", "check_sparse", "magnitude_masks", "select_weights",
           "serialized_sizes", "sparsify", "to_sparse", "weight_uses", "zero_masked"]
