"""The Python API: the whole pipeline in a few calls.

    import onnxprune
    model = onnxprune.load("model.onnx")
    print(model.inspect()["groups"][0])
    plan = model.plan(target_macs=0.5, criterion="l1")
    plan.groups[0].keep = plan.groups[0].keep[:8]        # edit by hand if you like
    result = model.apply(plan)                             # verified pruned ModelProto + report
    onnxprune.save(result.model, "pruned.onnx")
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .groups import KeepMasks, Scores
from . import cost
from .cost import CostModel, ModelCost
from .allocation import AllocationOptions, allocate
from .data import load_calibration, model_inputs, verification_inputs
from .depgraph import DepGraph, build_depgraph
from .errors import InputError
from .graph import ModelIndex, weightless_copy
from .inputs import ChosenInputs, check_input_shapes, choose_inputs, declared_dims
from .importance import (CRITERIA, NORMALIZATIONS, WEIGHT_CRITERIA, Criterion, ScoreStats, activation_criterion, importance,
                         structure_warning)
from .load import LoadedModel, check_supported, load_model
from .ops import OUT, PARAM, is_alias
from .origin import alias_consumers, group_origins, layer_name
from .plan import Plan, make_plan, resolve
from .save import save_model
from .surgery import apply_keep
from .timings import Stage, Timings

if TYPE_CHECKING:
    from .quality import Quality
    from .recovery import ReconstructOptions, Recovery
    from .verify import VerifyReport

# onnxprune.verify (and with it onnxruntime) is imported where verification runs, and looked up at
# call time, so tests can make verification fail.


@dataclass
class LayerChange:
    """One layer before and after pruning, as summaries show it."""

    node: str
    op: str
    channels: tuple[int | None, int | None]
    params: tuple[int, int]
    macs: tuple[int, int]
    origin: str | None = None
    """The origin-framework layer name (onnxprune.origin.layer_name); tables show it, else `node`."""


@dataclass
class PruneResult:
    model: onnx.ModelProto
    plan: Plan
    report: "VerifyReport"
    before: ModelCost
    after: ModelCost
    layers: list[LayerChange] = field(default_factory=list)
    exact: bool = False
    external_data: bool | None = None
    """How `save` stores the weights: as the original did (a .data file beside the model when the
    original had one); None: inline unless they exceed protobuf's 2 GB limit."""
    quality: Quality | None = None
    """Agreement with the original on every sample of the data given (None without data)."""
    recovery: Recovery | None = None
    """With reconstruction: agreement with the original before and after it (onnxprune.recovery)."""

    def save(self, path: str | Path) -> Path:
        """Save the pruned model atomically, its weights stored as the original's were."""
        return save_model(self.model, path, self.external_data)

    def weights(self) -> dict[str, np.ndarray]:
        """Every float initializer of the pruned model by name: the original initializer names (a
        copy made for one use of a shared initializer is named `<name>__<node>`)."""
        from onnx import numpy_helper

        return {t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer
                if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"}

    def write_weights(self, path: str | Path) -> None:
        """Save `weights()` as an .npz (atomically), for loading back into the origin framework."""
        import io

        from .save import write_atomic

        buffer = io.BytesIO()
        np.savez(buffer, **self.weights())
        write_atomic(Path(path), buffer.getvalue())


def load(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None, mapped: bool = False) -> "PrunableModel":
    """Load an ONNX file (external data only from inside its folder) for analysis and pruning.
    `input_shapes` (input name -> shape) are the sizes the model really runs at: costs (MACs,
    `target_macs`) are counted there instead of counting dynamic sizes as 1, and verification's
    random inputs have them (without it those sizes are chosen so that the original runs).

    `mapped` memory-maps external data instead of reading it (load.map_external): faster, and the
    original's weights stay file pages.  `model.model` then holds stubs for those initializers,
    so it suits the pipeline (plan, surgery, apply: the pruned model holds all its data) rather
    than code that reads the original's weights from the ModelProto itself."""
    timings = Timings()
    with timings.stage(Stage.LOAD):
        model = PrunableModel(load_model(path, mapped=mapped), input_shapes=input_shapes)
    model.timings = timings
    if input_shapes:
        check_input_shapes(model.index, input_shapes, model.path)
    return model


def save(model: onnx.ModelProto | PruneResult, path: str | Path, external_data: bool | None = None) -> Path:
    """Save atomically; external data when asked for or when the weights exceed 1 GB.  A
    PruneResult is saved as `PruneResult.save` does (weights stored as the original's were)."""
    if isinstance(model, PruneResult):
        return model.save(path) if external_data is None else save_model(model.model, path, external_data)
    return save_model(model, path, external_data)


class PrunableModel:
    """One loaded model and its channel-dependency graph."""

    def __init__(self, loaded: LoadedModel | onnx.ModelProto, show_progress: bool = False,
                 input_shapes: dict[str, tuple[int, ...]] | None = None):
        if isinstance(loaded, onnx.ModelProto):
            check_supported(loaded, Path("<model>"))
            loaded = LoadedModel(loaded, Path("<model>"), False)
        self.loaded = loaded
        self.show_progress = show_progress
        self.input_shapes = dict(input_shapes) if input_shapes else None
        self._checked: tuple[object, ChosenInputs] | None = None
        self.timings = Timings()
        """Time spent per stage so far (`onnxprune prune --timings`)."""

    @property
    def model(self) -> onnx.ModelProto:
        return self.loaded.model

    @property
    def path(self) -> Path:
        return self.loaded.path

    @cached_property
    def index(self) -> ModelIndex:
        with self.timings.stage(Stage.DEPGRAPH):  # shape inference: part of building the graph
            return ModelIndex.build(self.model, external=self.loaded.arrays)

    @cached_property
    def depgraph(self) -> DepGraph:
        with self.timings.stage(Stage.DEPGRAPH):
            return build_depgraph(self.index)

    @property
    def groups(self):
        """The prunable groups."""
        return self.depgraph.prunable_groups

    @cached_property
    def sha256(self) -> str:
        if self.loaded.sha256:  # load_model hashed the bytes it read (see load.file_digest)
            return self.loaded.sha256
        return hashlib.sha256(self.model.SerializeToString()).hexdigest() if self.model.ByteSize() < (1 << 31) - 1 else ""

    # --- analysis ------------------------------------------------------------------------
    def inspect(self) -> dict:
        """Groups, per-layer cost, and how much of the model can be pruned."""
        dg = self.depgraph
        prunable_nodes = {d.use for g in dg.prunable_groups for d in g.const_dims if g.roles.get(d, PARAM).is_weight}
        layers = []
        node_index = {(n.name or n.output[0]): i for i, n in enumerate(self.model.graph.node)}
        origins = self.origins()
        for layer in cost.layer_costs(self.cost_index):
            layers.append({"node": layer.node, "origin": origins.get(layer.node), "op": layer.op_type, "params": layer.params,
                           "macs": layer.macs, "channels": layer.channels, "prunable": node_index[layer.node] in prunable_nodes})
        params, macs = cost.total_params(self.cost_index), sum(l["macs"] for l in layers)
        groups = []
        for g in dg.groups:
            if not g.has_weights:
                continue
            outs = g.dims_with_role(OUT)
            channels = g.n_channels or (g.sizes[outs[0]] if outs else 0)
            groups.append({"id": g.id, "channels": channels, "prunable": g.prunable,
                           "blocked": None if g.prunable else (g.blocked[0] if g.blocked else "a single channel"),
                           "layers": sorted({self.model.graph.node[d.use].name or self.model.graph.node[d.use].output[0] for d in g.const_dims}),
                           "origins": group_origins(self.model.graph.node, {d.use for d in g.const_dims}, origins),
                           "producers": [d.tensor for d in outs]})
        control_flow = [n.name or n.output[0] for n in self.model.graph.node
                        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)]
        shapes = self.cost_shapes
        return {"model": str(self.path), "opset": self.index.opset, "params": params, "macs": macs,
                "cost_shapes": {k: list(v) for k, v in shapes.items()} if shapes else None,
                "control_flow": control_flow,
                "prunable_params": sum(l["params"] for l in layers if l["prunable"]) / max(params, 1),
                "prunable_macs": sum(l["macs"] for l in layers if l["prunable"]) / max(macs, 1),
                "groups": groups, "layers": layers}

    def origins(self) -> dict[str, str | None]:
        """ONNX node name -> origin-framework layer name (onnxprune.origin.layer_name), for every node."""
        inits, nodes = self.index.initializers, self.model.graph.node
        names = {}
        for i, node in enumerate(nodes):
            users = alias_consumers(self.index, i) if is_alias(node) else []
            names[node.name or node.output[0]] = layer_name(nodes[users[0]] if len(users) == 1 else node, inits)
        return names

    def check_runs(self, data: str | Path | dict | None = None) -> ChosenInputs:
        """The inputs verification uses (the first samples of `data`, or inputs chosen so that the
        original runs, see inputs.choose_inputs) and the original's outputs on them, computed once.
        Run first, so that a model onnxruntime cannot run on them is refused (bad input, naming
        what to pass) before any work, and never blamed on the pruning."""
        from . import verify as verification

        key = data if data is None or isinstance(data, (str, Path)) else id(data)
        if self._checked is not None and self._checked[0] == key:
            return self._checked[1]
        runnable = str(self.path) if self.path.is_file() else self.model  # from the file: no serialised copy
        with self.timings.stage(Stage.VERIFICATION):
            if data is None:
                chosen = choose_inputs(self.index, self.input_shapes or {}, self.path, runnable)
            else:
                feeds = verification_inputs(self.index, data)
                chosen = ChosenInputs(feeds, verification.reference_outputs(runnable, feeds, str(self.path)))
        self._checked = (key, chosen)
        return chosen

    def calibration(self, data: str | Path | dict | None) -> dict[str, np.ndarray] | None:
        if data is None or isinstance(data, dict):
            return data
        return load_calibration(data, self.index)

    def importance(self, criterion: str | Criterion = "l1", data=None, aggregate: str = "sum",
                   normalize: str = "mean") -> Scores:
        """Score per channel for every prunable group (0 exactly for dead channels)."""
        if criterion in ("activation", "apoz"):
            feeds = self.calibration(data)
            if feeds is None:
                raise InputError(f"options: --criterion {criterion} needs calibration data (--data FILE.npz)")
            criterion = activation_criterion(self.depgraph, feeds, "mean" if criterion == "activation" else "nonzero")
        elif isinstance(criterion, str) and criterion not in CRITERIA:
            raise InputError(f"options: unknown criterion '{criterion}' (choose from {', '.join(list(CRITERIA) + ['activation', 'apoz'])})")
        if normalize not in NORMALIZATIONS:
            raise InputError(f"options: unknown --normalize '{normalize}' (choose from {', '.join(NORMALIZATIONS)})")
        groups = self.groups
        if self.show_progress:
            from tqdm import tqdm

            groups = tqdm(groups, desc="importance", unit="group", leave=False)
        with self.timings.stage(Stage.IMPORTANCE):
            return {g.id: importance(self.depgraph, g, criterion, aggregate, normalize) for g in groups}

    def score_stats(self, criterion: str | Criterion = "l1", data=None, aggregate: str = "sum",
                    normalize: str = "mean") -> list[ScoreStats]:
        """Each prunable group's score distribution, as `plan(threshold=T)` compares it."""
        scores = self.importance(criterion, data, aggregate, normalize)
        return [ScoreStats.of(gid, s) for gid, s in scores.items()]

    @cached_property
    def cost_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """The input sizes costs are counted at: `input_shapes` when given; else, for a model with
        dynamic sizes beyond the batch (an image of any size, a sequence of any length), the sizes
        verification runs it at (check_runs), one sample; else None (the batch counts as 1)."""
        if self.input_shapes:
            return self.input_shapes
        declared = {vi.name: declared_dims(vi) for vi in model_inputs(self.index)}
        if not any(None in dims[1:] for dims in declared.values()):
            return None
        feeds = self.check_runs().feeds
        return {name: tuple(1 if k == 0 and dims and dims[0] is None else s for k, s in enumerate(feeds[name].shape))
                for name, dims in declared.items() if name in feeds}

    @cached_property
    def cost_index(self) -> ModelIndex:
        """The index costs are counted on: at `cost_shapes`."""
        shapes = self.cost_shapes
        return ModelIndex.build(self.model, shapes, self.loaded.arrays) if shapes else self.index

    @cached_property
    def cost_model(self) -> CostModel:
        return CostModel(self.depgraph, self.cost_index)

    def cost(self, keep: KeepMasks) -> ModelCost:
        """Params and MACs after keeping these channels: a dry run of surgery, nothing written."""
        return self.cost_model.estimate(keep)

    def plan(self, criterion: str | Criterion | None = None, data=None, aggregate: str = "sum", **options) -> Plan:
        """Choose the channels to remove.  `criterion` None ranks by what channels carry on
        `data` ("activation") when there is data, else by the scale-aware weight criterion
        ("scaled"); a weight criterion adds a warning to `plan.warnings` when the filter norms
        misjudge the model (importance.structure_warning).  Options are those of `AllocationOptions` (ratio,
        threshold, target_macs, target_params, global_ranking, max_ratio, round_to, ignore,
        protect_ends), plus normalize ("mean", "max", "none": see importance.importance),
        sensitivity / max_loss (allocation from a sensitivity analysis) and allocator: your own
        strategy, called as allocator(depgraph, scores, options, cost_of) -> {group id: keep mask},
        where cost_of(keep) -> ModelCost(params, macs) prices a candidate without surgery."""
        sensitivity = options.pop("sensitivity", None)
        max_loss = options.pop("max_loss", None)
        normalize = options.pop("normalize", "mean")
        allocator = options.pop("allocator", allocate)
        latency = self._latency_allocator(options)
        allocator = latency or allocator
        opts = AllocationOptions(**options)
        opts.validate()
        if criterion is None:
            criterion = "activation" if data is not None else "scaled"
        scores = self.importance(criterion, data, aggregate, normalize)
        chosen = None
        with self.timings.stage(Stage.ALLOCATION):
            if sensitivity is not None or max_loss is not None:
                keep, chosen = self._allocate_from_sensitivity(sensitivity, scores, opts, max_loss)
            else:
                keep = allocator(self.depgraph, scores, opts, self.cost)
        plan = make_plan(self.depgraph, keep, {"file": self.path.name, "sha256": self.sha256},
                         {"criterion": criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom"),
                          "aggregate": aggregate, "normalize": normalize, **{k: v for k, v in vars(opts).items() if v not in (None, [], False)}})
        if latency is not None:
            plan.options.update(latency.options.plan_options(), measured_latency=latency.measured)
        if chosen is not None:
            plan.options["sensitivity_ratios"] = {str(g): r for g, r in sorted(chosen.items())}
            if max_loss is not None:
                plan.options["max_loss"] = max_loss
        if isinstance(criterion, str) and criterion in WEIGHT_CRITERIA:
            warning = structure_warning(self.depgraph, self._synthetic_feeds())
            plan.warnings += [warning] if warning else []
        estimate = self.cost(keep)
        base = self.cost_model.base
        plan.summary = {"params": [base.params, estimate.params], "macs": [base.macs, estimate.macs]}
        return plan

    def _synthetic_feeds(self) -> dict[str, np.ndarray] | None:
        """The inputs verification runs the model on (computed once, verification reuses them),
        for the structure warning's activation check; None for models above FILE_ROUTE_ABOVE,
        where a run with every channel's activation as an output costs too much at plan time."""
        from .runtime import FILE_ROUTE_ABOVE, weights_size

        return self.check_runs().feeds if weights_size(self.model) <= FILE_ROUTE_ABOVE else None

    def _latency_allocator(self, options: dict):
        """The latency-budget strategy (onnxprune.latency) when `target_latency` is among the options
        (with `latency_batch`, `latency_threads`, `latency_cache`, `latency_engine`), else None."""
        names = ("latency_batch", "latency_threads", "latency_cache", "latency_engine")
        if options.get("target_latency") is None:
            for name in ("target_latency", *names):
                options.pop(name, None)
            return None
        from .latency import Engine, LatencyAllocator, LatencyOptions

        batch, threads, cache, engine = (options.pop(k, None) for k in names)
        try:
            engine = Engine(engine or Engine.ONNXRUNTIME)
        except ValueError:
            raise InputError(f"options: --latency-engine {engine!r} is not one of {', '.join(e.value for e in Engine)}") from None
        lat = LatencyOptions(options.pop("target_latency"), 1 if batch is None else batch, threads or 0,
                             cache_dir=Path(cache) if cache else None, engine=engine)
        lat.validate()
        if any(options.get(k) is not None for k in ("ratio", "threshold", "target_macs", "target_params")):
            raise InputError("options: --target-latency cannot be combined with --ratio, --threshold, --target-macs or --target-params")
        progress = (lambda text: print(text, file=sys.stderr)) if self.show_progress else None
        return LatencyAllocator(lat, progress, self.sha256)

    def _allocate_from_sensitivity(self, sensitivity, scores, opts: AllocationOptions, max_loss):
        from . import sensitivity as sens_mod

        if sensitivity is None:
            raise InputError("options: --max-loss needs --sensitivity SENS.json")
        sens = sensitivity if isinstance(sensitivity, sens_mod.Sensitivity) else sens_mod.Sensitivity.read(Path(sensitivity))
        return sens_mod.allocate(self, sens, scores, opts.target_macs, opts.target_params, max_loss, opts)

    # --- surgery -------------------------------------------------------------------------
    def surgery(self, plan: Plan, data=None, source: str = "plan", reconstruct: bool | ReconstructOptions = False,
                labels: np.ndarray | None = None) -> "Pruning":
        """Apply a plan: the pruned model, not yet verified.  What `Pruning.verify` needs of the
        original travels with it (its inputs and outputs, its outputs on the verification inputs
        or the file to compute them from), so this object may be dropped before verifying: the
        CLI does, and the original's weights, the pruned model and an onnxruntime session are
        then never in memory together.  With `data`, the result carries a quality report
        (`quality`: agreement with the original on all of the data, accuracy with labels);
        `reconstruct` (True or ReconstructOptions) first re-fits the layers that consume pruned
        channels on that data (onnxprune.recovery, which needs the original's weights here) and
        reports agreement before and after it (`recovery`)."""
        keep = resolve(plan, self.depgraph, source)
        if reconstruct and data is None:
            raise InputError("options: --reconstruct needs calibration data (--data FILE.npz)")
        with self.timings.stage(Stage.VERIFICATION):
            exact = all(self._all_dead(gid, mask) for gid, mask in keep.items())
            checked = self.check_runs(data)  # the original's outputs, computed before surgery
            chunks, quality_labels = self._quality_inputs(data)
            quality_labels = labels if labels is not None else quality_labels
            quality_reference = None
            if chunks is not None and not self.path.is_file():
                from .quality import first_output

                quality_reference = first_output(self.model, chunks)
        before_layers = {c.node: c for c in cost.layer_costs(self.cost_index)}
        with self.timings.stage(Stage.SURGERY):
            pruned, recovery = apply_keep(self.depgraph, keep), None
        if reconstruct and not exact:
            from .recovery import ReconstructOptions, recover

            options = reconstruct if isinstance(reconstruct, ReconstructOptions) else ReconstructOptions()
            pruned, recovery = recover(self.model, pruned, self.depgraph, keep, self.calibration(data), options,
                                       quality_labels, self.show_progress)
        return Pruning(pruned, plan, weightless_copy(self.model), checked.feeds, exact,
                       self.cost_model.base, before_layers, self.path, checked.outputs, self.loaded.had_external_data,
                       self.cost_shapes, recovery, self.origins(), chunks, quality_labels, quality_reference, self.timings)

    def _quality_inputs(self, data) -> tuple[list[dict[str, np.ndarray]] | None, np.ndarray | None]:
        """Every sample of the user's data in batches, and its labels, for PruneResult.quality
        (None without data: random inputs say nothing about quality)."""
        feeds = self.calibration(data)
        if not feeds:
            return None, None
        n = len(next(iter(feeds.values())))
        from .quality import QUALITY_BATCH, labels_for
        from .runtime import batches

        return list(batches(feeds, QUALITY_BATCH)), labels_for(data, n)

    def apply(self, plan: Plan, data=None, source: str = "plan", reconstruct: bool | ReconstructOptions = False,
              labels: np.ndarray | None = None) -> PruneResult:
        """Apply a plan, verify the result against the original, and return it (nothing saved);
        `reconstruct` and `labels` as in `surgery`."""
        return self.surgery(plan, data, source, reconstruct, labels).verify()

    def _all_dead(self, group_id: int, keep: np.ndarray) -> bool:
        from .importance import dead_channels

        group = self.depgraph.groups[group_id]
        return bool(np.all(keep | dead_channels(self.depgraph, group)))

    def prune(self, criterion: str | Criterion | None = None, data=None, aggregate: str = "sum",
              reconstruct: bool | ReconstructOptions = False, **options) -> PruneResult:
        """plan() then apply()."""
        return self.apply(self.plan(criterion, data, aggregate, **options), data, reconstruct=reconstruct)


@dataclass
class Pruning:
    """A pruned model and what its verification needs of the original (see PrunableModel.surgery)."""

    model: onnx.ModelProto
    plan: Plan
    original: onnx.ModelProto
    """The original without its weights' bytes: inputs, outputs and graph are all verification reads."""
    feeds: dict[str, np.ndarray]
    exact: bool
    before: ModelCost
    before_layers: dict[str, cost.LayerCost]
    path: Path
    reference: list[np.ndarray] | None
    """The original's outputs on `feeds`; None: computed from the file at `path` when verifying."""
    external_data: bool
    input_shapes: dict[str, tuple[int, ...]] | None = None
    """The sizes costs are counted at (PrunableModel.input_shapes)."""
    recovery: Recovery | None = None
    origins: dict[str, str | None] = field(default_factory=dict)
    """ONNX node name -> origin-framework layer name, for the summary's layers."""
    quality_batches: list[dict[str, np.ndarray]] | None = None
    """Every sample of the user's data, for PruneResult.quality (None without data)."""
    labels: np.ndarray | None = None
    quality_reference: np.ndarray | None = None
    """The original's first output on `quality_batches`; None: computed from the file at `path`."""
    timings: Timings = field(default_factory=Timings)
    """The stages so far (PrunableModel.timings); verification adds itself."""

    def verify(self) -> PruneResult:
        """Check the pruned model against the original (verify.verify) and summarise the change."""
        from . import verify as verification

        with self.timings.stage(Stage.VERIFICATION):
            reference = self.reference if self.reference is not None else verification.reference_outputs(str(self.path), self.feeds)
            report = verification.verify(self.original, self.model, self.feeds, exact=self.exact, reference=reference)
            measured = None
            if self.quality_batches is not None:
                from .quality import compare, first_output, measure_all

                if self.quality_reference is not None:
                    measured = compare(self.quality_reference, first_output(self.model, self.quality_batches), self.labels)
                else:  # streamed: one batch of outputs at a time
                    (measured,) = measure_all(str(self.path), [self.model], self.quality_batches, self.labels)
        after_index = ModelIndex.build(self.model, self.input_shapes)
        after = cost.model_cost(after_index)
        self.plan.summary = {"params": [self.before.params, after.params], "macs": [self.before.macs, after.macs]}
        old = self.before_layers
        layers = [LayerChange(c.node, c.op_type, (old[c.node].channels, c.channels), (old[c.node].params, c.params),
                              (old[c.node].macs, c.macs), self.origins.get(c.node))
                  for c in cost.layer_costs(after_index) if c.node in old]
        return PruneResult(self.model, self.plan, report, self.before, after, layers, self.exact,
                           True if self.external_data else None, measured, self.recovery)
