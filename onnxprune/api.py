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

from . import cost
from .allocation import AllocationOptions, allocate
from .data import load_calibration, verification_inputs
from .depgraph import DepGraph, build_depgraph
from .errors import InputError
from .graph import ModelIndex, weightless_copy
from .importance import CRITERIA, NORMALISATIONS, Criterion, activation_criterion, importance
from .load import LoadedModel, check_supported, load_model
from .plan import Plan, make_plan, resolve
from .save import save_model
from .surgery import apply_keep
from .timings import Stage, Timings

if TYPE_CHECKING:
    from .verify import VerifyReport


@dataclass
class PruneResult:
    model: onnx.ModelProto
    plan: Plan
    report: "VerifyReport"
    before: dict
    after: dict
    layers: list[dict] = field(default_factory=list)
    exact: bool = False

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


def load(path: str | Path, mapped: bool = False) -> "PrunableModel":
    """Load an ONNX file (external data only from inside its folder) for analysis and pruning.

    `mapped` memory-maps external data instead of reading it (load.map_external): faster, and the
    original's weights stay file pages.  `model.model` then holds stubs for those initializers,
    so it suits the pipeline (plan, apply: the pruned model holds all its data) rather than code
    that reads the original's weights from the ModelProto itself."""
    timings = Timings()
    with timings.stage(Stage.LOAD):
        model = PrunableModel(load_model(path, mapped=mapped))
    model.timings = timings
    return model


def save(model: onnx.ModelProto, path: str | Path, external_data: bool | None = None) -> Path:
    """Save atomically; external data when asked for or when the weights exceed 1 GB."""
    return save_model(model, path, external_data)


class PrunableModel:
    """One loaded model and its channel-dependency graph."""

    def __init__(self, loaded: LoadedModel | onnx.ModelProto, show_progress: bool = False):
        if isinstance(loaded, onnx.ModelProto):
            check_supported(loaded, Path("<model>"))
            loaded = LoadedModel(loaded, Path("<model>"), False)
        self.loaded = loaded
        self.show_progress = show_progress
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
            return ModelIndex.build(self.model, self.loaded.arrays)

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
        prunable_nodes = {d.use for g in dg.prunable_groups for d in g.const_dims if g.roles.get(d) in ("out", "in")}
        layers = []
        node_index = {(n.name or n.output[0]): i for i, n in enumerate(self.model.graph.node)}
        for layer in cost.layer_costs(self.index):
            layers.append({"node": layer.node, "op": layer.op_type, "params": layer.params, "macs": layer.macs,
                           "channels": layer.channels, "prunable": node_index[layer.node] in prunable_nodes})
        params, macs = cost.total_params(self.index), sum(l["macs"] for l in layers)
        groups = []
        for g in dg.groups:
            if not g.has_weights:
                continue
            outs = g.dims_with_role("out")
            channels = g.n_channels or (g.sizes[outs[0]] if outs else 0)
            groups.append({"id": g.id, "channels": channels, "prunable": g.prunable,
                           "blocked": None if g.prunable else (g.blocked[0] if g.blocked else "a single channel"),
                           "layers": sorted({self.model.graph.node[d.use].name or self.model.graph.node[d.use].output[0] for d in g.const_dims}),
                           "producers": [d.tensor for d in outs]})
        return {"model": str(self.path), "opset": self.index.opset, "params": params, "macs": macs,
                "prunable_params": sum(l["params"] for l in layers if l["prunable"]) / max(params, 1),
                "prunable_macs": sum(l["macs"] for l in layers if l["prunable"]) / max(macs, 1),
                "groups": groups, "layers": layers}

    def calibration(self, data: str | Path | dict | None) -> dict[str, np.ndarray] | None:
        if data is None or isinstance(data, dict):
            return data
        return load_calibration(data, self.index)

    def importance(self, criterion: str | Criterion = "l1", data=None, aggregate: str = "sum",
                   normalise: str = "mean") -> dict[int, np.ndarray]:
        """Score per channel for every prunable group (0 exactly for dead channels)."""
        if criterion in ("activation", "apoz"):
            feeds = self.calibration(data)
            if feeds is None:
                raise InputError(f"options: --criterion {criterion} needs calibration data (--data FILE.npz)")
            criterion = activation_criterion(self.depgraph, feeds, "mean" if criterion == "activation" else "nonzero")
        elif isinstance(criterion, str) and criterion not in CRITERIA:
            raise InputError(f"options: unknown criterion '{criterion}' (choose from {', '.join(list(CRITERIA) + ['activation', 'apoz'])})")
        if normalise not in NORMALISATIONS:
            raise InputError(f"options: unknown normalisation '{normalise}' (choose from {', '.join(NORMALISATIONS)})")
        groups = self.groups
        if self.show_progress:
            from tqdm import tqdm

            groups = tqdm(groups, desc="importance", unit="group", leave=False)
        with self.timings.stage(Stage.IMPORTANCE):
            return {g.id: importance(self.depgraph, g, criterion, aggregate, normalise) for g in groups}

    def cost(self, keep: dict[int, np.ndarray]) -> tuple[int, int]:
        """(params, MACs) after keeping these channels (estimated without surgery)."""
        return cost.estimate(self.depgraph, keep)

    def plan(self, criterion: str | Criterion = "l1", data=None, aggregate: str = "sum", **options) -> Plan:
        """Choose the channels to remove.  Options are those of `AllocationOptions` (ratio,
        threshold, target_macs, target_params, global_ranking, max_ratio, round_to, ignore,
        protect_ends), plus normalise ("mean", "max", "none": see importance.importance),
        sensitivity / max_loss (allocation from a sensitivity analysis) and allocator: your own
        strategy, called as allocator(depgraph, scores, options, cost_of) -> {group id: keep mask},
        where cost_of(keep) -> (params, MACs) prices a candidate without surgery."""
        sensitivity = options.pop("sensitivity", None)
        max_loss = options.pop("max_loss", None)
        normalise = options.pop("normalise", "mean")
        allocator = options.pop("allocator", allocate)
        latency = self._latency_allocator(options)
        allocator = latency or allocator
        opts = AllocationOptions(**options)
        opts.validate()
        scores = self.importance(criterion, data, aggregate, normalise)
        chosen = None
        with self.timings.stage(Stage.ALLOCATION):
            if sensitivity is not None or max_loss is not None:
                keep, chosen = self._allocate_from_sensitivity(sensitivity, scores, opts, max_loss)
            else:
                keep = allocator(self.depgraph, scores, opts, self.cost)
        plan = make_plan(self.depgraph, keep, {"file": self.path.name, "sha256": self.sha256},
                         {"criterion": criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom"),
                          "aggregate": aggregate, "normalise": normalise, **{k: v for k, v in vars(opts).items() if v not in (None, [], False)}})
        if latency is not None:
            plan.options.update(latency.options.plan_options(), measured_latency=latency.measured)
        if chosen is not None:
            plan.options["sensitivity_ratios"] = {str(g): r for g, r in sorted(chosen.items())}
            if max_loss is not None:
                plan.options["max_loss"] = max_loss
        params, macs = self.cost(keep)
        plan.summary = {"params": [cost.total_params(self.index), params], "macs": [cost.total_macs(self.index), macs]}
        return plan

    def _latency_allocator(self, options: dict):
        """The latency-budget strategy (onnxprune.latency) when `target_latency` is among the options
        (with `latency_batch`, `latency_threads`, `latency_cache`), else None."""
        if options.get("target_latency") is None:
            for name in ("target_latency", "latency_batch", "latency_threads", "latency_cache"):
                options.pop(name, None)
            return None
        from .latency import LatencyAllocator, LatencyOptions

        batch, threads, cache = (options.pop(k, None) for k in ("latency_batch", "latency_threads", "latency_cache"))
        lat = LatencyOptions(options.pop("target_latency"), 1 if batch is None else batch, threads or 0,
                             cache_dir=Path(cache) if cache else None)
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
        return sens_mod.allocate(self, sens, scores, opts.target_macs, opts.target_params, max_loss)

    # --- surgery -------------------------------------------------------------------------
    def apply(self, plan: Plan, data=None, source: str = "plan", release_original: bool = False) -> PruneResult:
        """Apply a plan, verify the result against the original, and return it (nothing saved).

        `release_original` drops this object's copy of the original model once the pruned one
        exists, so verification never holds both models' weights and an onnxruntime session at
        once (the CLI uses it; the object cannot be used again afterwards)."""
        from . import verify as verification  # looked up at call time, so tests can make verification fail

        keep = resolve(plan, self.depgraph, source)
        timings = self.timings
        with timings.stage(Stage.VERIFICATION):
            exact = all(self._all_dead(gid, mask) for gid, mask in keep.items())
            feeds = verification_inputs(self.index, data)
            # onnxruntime reads the original from its file where there is one (no serialised copy) and,
            # when our copy is released, only after the release: the two are never in memory together.
            from_file = self.path.is_file() and (release_original or self.loaded.had_external_data)
            late = release_original and self.path.is_file()
            reference = None if late else verification.reference_outputs(str(self.path) if from_file else self.model, feeds)
        before = {"params": cost.total_params(self.index), "macs": cost.total_macs(self.index)}
        old_layers = {c.node: c for c in cost.layer_costs(self.index)}
        with timings.stage(Stage.SURGERY):
            pruned = apply_keep(self.depgraph, keep)
        original = weightless_copy(self.model)  # inputs, outputs and graph: all verification needs of it
        if release_original:
            self._release()
        with timings.stage(Stage.VERIFICATION):
            if reference is None:
                reference = verification.reference_outputs(str(self.path), feeds)
            report = verification.verify(original, pruned, feeds, exact=exact, reference=reference)
        after_index = ModelIndex.build(pruned)
        after = {"params": cost.total_params(after_index), "macs": cost.total_macs(after_index)}
        plan.summary = {"params": [before["params"], after["params"]], "macs": [before["macs"], after["macs"]]}
        layers = [{"node": c.node, "op": c.op_type, "channels": [old_layers[c.node].channels, c.channels],
                   "params": [old_layers[c.node].params, c.params], "macs": [old_layers[c.node].macs, c.macs]}
                  for c in cost.layer_costs(after_index) if c.node in old_layers]
        return PruneResult(pruned, plan, report, before, after, layers, exact)

    def _release(self) -> None:
        """Let go of the original model and everything derived from it (its weights' memory
        returns to the system once nothing refers to the ModelProto)."""
        for name in ("index", "depgraph"):
            self.__dict__.pop(name, None)
        self.loaded = LoadedModel(onnx.ModelProto(), self.loaded.path, self.loaded.had_external_data, self.loaded.sha256)  # no arrays: the maps close

    def _all_dead(self, group_id: int, keep: np.ndarray) -> bool:
        from .importance import dead_channels

        group = self.depgraph.groups[group_id]
        return bool(np.all(keep | dead_channels(self.depgraph, group)))

    def prune(self, criterion: str | Criterion = "l1", data=None, aggregate: str = "sum", **options) -> PruneResult:
        """plan() then apply()."""
        return self.apply(self.plan(criterion, data, aggregate, **options), data)
