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
from .importance import (CRITERIA, NORMALIZATIONS, WEIGHT_CRITERIA, ChannelTally, Criterion, ScoreStats, activation_criterion, importance,
                         structure_warning, wanda_criterion)
from .names import DATA_CRITERION_NAMES
from .load import LoadedModel, check_supported, load_model
from .ops import OUT, PARAM, RewriteOptions, is_alias
from .origin import alias_consumers, group_origins, layer_name, scope_path
from .plan import Plan, make_plan, resolve
from .save import save_model
from .surgery import apply_keep, inexact_rewrites
from .timings import Stage, Timings

if TYPE_CHECKING:
    from .staging import StagedOutput
    from .blocks import Block, BlockSearch
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

    staged: StagedOutput | None = None
    """Where the pruned weights were written as surgery made them (`PrunableModel.surgery` with
    `output`): `model` then holds stubs for them, and saving to that output renames the staged
    files into place."""

    def save(self, path: str | Path) -> Path:
        """Save the pruned model atomically, its weights stored as the original's were."""
        if self.staged is not None and Path(path).resolve() == self.staged.target.resolve():
            return self.staged.commit()  # `model`'s stubs name the data file relative to it: still right
        self.materialize()
        return save_model(self.model, path, self.external_data)

    def materialize(self) -> None:
        """Read the staged weights into `model` (for code that edits it, such as --simplify) and
        drop the staged files; a no-op when nothing is staged."""
        if self.staged is None:
            return
        model = onnx.load(str(self.staged.header_path))  # with its external data
        self.staged.discard()
        self.staged, self.model = None, model

    def discard(self) -> None:
        """Remove staged files that were not saved (nothing of them is left behind)."""
        if self.staged is not None and not self.staged.committed:
            self.staged.discard()
            self.staged = None

    def weights(self) -> dict[str, np.ndarray]:
        """Every float initializer of the pruned model by name: the original initializer names (a
        copy made for one use of a shared initializer is named `<name>__<node>`)."""
        from onnx import numpy_helper

        mapped = self.staged.arrays(self.model) if self.staged is not None else {}
        return {t.name: np.array(mapped[t.name]) if t.name in mapped else numpy_helper.to_array(t)
                for t in self.model.graph.initializer if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"}

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
        self._without_blocks: dict[tuple[str, ...], PrunableModel] = {}
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
                "groups": groups, "layers": layers,
                "blocks": [{"id": b.id, "node": b.add, "origin": b.origin, "module": scope_path(b.module), "macs": b.macs,
                            "params": b.params}
                           for b in self.residual_blocks.blocks],
                "blocks_refused": [{"node": r.add, "origin": r.origin, "reason": r.reason} for r in self.residual_blocks.refused]}

    def origins(self) -> dict[str, str | None]:
        """ONNX node name -> origin-framework layer name (onnxprune.origin.layer_name), for every node."""
        inits, nodes = self.index.initializers, self.model.graph.node
        names = {}
        for i, node in enumerate(nodes):
            users = alias_consumers(self.index, i) if is_alias(node) else []
            names[node.name or node.output[0]] = layer_name(nodes[users[0]] if len(users) == 1 else node, inits)
        return names

    def check_runs(self, data: str | Path | dict | None = None, watch: bool = True) -> ChosenInputs:
        """The inputs verification uses (the first samples of `data`, or inputs chosen so that the
        original runs, see inputs.choose_inputs) and the original's outputs on them, computed once.
        Run first, so that a model onnxruntime cannot run on them is refused (bad input, naming
        what to pass) before any work, and never blamed on the pruning.  The same run measures
        the channels' activations (`activity`, for plan()'s structure warning) up to
        FILE_ROUTE_ABOVE, unless `watch` is False (a plan read from a file needs no warning);
        above, a run with every channel's activation as an output costs too much to add."""
        from . import verify as verification
        from .runtime import FILE_ROUTE_ABOVE, weights_size, with_outputs

        key = data if data is None or isinstance(data, (str, Path)) else id(data)
        if self._checked is not None and self._checked[0] == key:
            return self._checked[1]
        tally = ChannelTally(self.depgraph) if watch and weights_size(self.model) <= FILE_ROUTE_ABOVE else None
        outputs = [o.name for o in self.model.graph.output]
        watched = [n for n in tally.names if n not in outputs] if tally is not None else []
        runnable, arrays = str(self.path) if self.path.is_file() else self.model, None  # from the file: no serialised copy
        if watched:
            runnable, arrays = with_outputs(self.index, watched)
        with self.timings.stage(Stage.VERIFICATION):
            if data is None:
                chosen = choose_inputs(self.index, self.input_shapes or {}, self.path, runnable, arrays=arrays)
            else:
                feeds = verification_inputs(self.index, data)
                chosen = ChosenInputs(feeds, verification.reference_outputs(runnable, feeds, str(self.path), arrays))
            if tally is not None:
                values = dict(zip(outputs + watched, chosen.outputs))
                for name in tally.names:
                    tally.add(name, values[name])
                chosen = ChosenInputs(chosen.feeds, chosen.outputs[:len(outputs)], tally.criterion())
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
        elif criterion == "wanda":
            feeds = self.calibration(data)
            if feeds is None:
                raise InputError("options: --criterion wanda needs calibration data (--data FILE.npz)")
            criterion = wanda_criterion(self.depgraph, feeds)
        elif criterion == "thinet":
            from .thinet import thinet_criterion

            feeds = self.calibration(data)
            if feeds is None:
                raise InputError("options: --criterion thinet needs calibration data (--data FILE.npz)")
            criterion = thinet_criterion(self.depgraph, feeds, progress=self.show_progress)
        elif isinstance(criterion, str) and criterion not in CRITERIA:
            raise InputError(f"options: unknown criterion '{criterion}' (choose from {', '.join(list(CRITERIA) + list(DATA_CRITERION_NAMES))})")
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
        sensitivity / max_loss (allocation from a sensitivity analysis), inexact_layernorm (opt in to
        LayerNorm statistics over the pruned width, Torch-Pruning's behaviour: outputs change; kept
        in the plan for surgery, see RewriteOptions) and allocator: your own
        strategy, called as allocator(depgraph, scores, options, cost_of) -> {group id: keep mask},
        where cost_of(keep) -> ModelCost(params, macs) prices a candidate without surgery."""
        drop_blocks = options.pop("drop_blocks", None)
        if drop_blocks:
            return self._plan_dropping_blocks(drop_blocks, criterion, data, aggregate, options)
        sensitivity = options.pop("sensitivity", None)
        max_loss = options.pop("max_loss", None)
        normalize = options.pop("normalize", "mean")
        inexact_layernorm = bool(options.pop("inexact_layernorm", False))
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
        if inexact_layernorm:
            plan.options["inexact_layernorm"] = True
            inexact = inexact_rewrites(self.depgraph, keep, RewriteOptions(inexact_layernorm=True))
            plan.warnings += [f"inexact_layernorm: {len(inexact)} LayerNorm(s) ({', '.join(inexact[:3])}"
                              f"{', ...' if len(inexact) > 3 else ''}) normalise over the pruned width: outputs change "
                              "even where only dead channels go"] if inexact else []
        if latency is not None:
            plan.options.update(latency.options.plan_options(), measured_latency=latency.measured)
        if chosen is not None:
            plan.options["sensitivity_ratios"] = {str(g): r for g, r in sorted(chosen.items())}
            if max_loss is not None:
                plan.options["max_loss"] = max_loss
        if isinstance(criterion, str) and criterion in WEIGHT_CRITERIA:
            # the ranking just made is one of the two compared (ranks: normalisation does not matter)
            checked = self._checked[1] if self._checked is not None else self.check_runs()  # the CLI's, with --data
            warning = structure_warning(self.depgraph, known={criterion: scores} if aggregate == "sum" else None,
                                        measured=checked.activity)
            plan.warnings += [warning] if warning else []
        estimate = self.cost(keep)
        base = self.cost_model.base
        plan.summary = {"params": [base.params, estimate.params], "macs": [base.macs, estimate.macs]}
        return plan

    # --- depth: whole residual blocks (onnxprune.blocks) ------------------------------------
    @cached_property
    def residual_blocks(self) -> "BlockSearch":
        """The removable residual blocks, and the sums that look like one but are not (why)."""
        from .blocks import find_blocks

        return find_blocks(self.index, {c.node: (c.params, c.macs) for c in cost.layer_costs(self.cost_index)})

    def block_influence(self, data=None) -> dict[int, float]:
        """ShortGPT's block influence of every removable block (block id -> 1 - mean cosine between
        its input and output): on every sample of `data`, else on the inputs verification uses
        (synthesized so that the model runs: a weaker ranking, which `plan` warns about)."""
        from .blocks import block_influence, channel_axis

        blocks = self.residual_blocks.blocks
        feeds = self.calibration(data) if data is not None else self.check_runs().feeds
        return block_influence(self.index, blocks, {b.id: channel_axis(self.depgraph, b) for b in blocks}, feeds)

    def without_blocks(self, blocks: "list[Block]") -> "PrunableModel":
        """The model with these blocks removed, as a PrunableModel (for its channel groups and
        costs); costs are counted at this model's sizes."""
        from .blocks import remove_blocks

        key = tuple(b.add for b in blocks)
        cache = self._without_blocks
        if key not in cache:
            loaded = LoadedModel(remove_blocks(self.index, blocks), self.path, self.loaded.had_external_data, self.sha256)
            cache[key] = PrunableModel(loaded, self.show_progress, self.input_shapes or self.cost_shapes)
        return cache[key]

    def _plan_dropping_blocks(self, n, criterion, data, aggregate: str, options: dict) -> Plan:
        """`plan(drop_blocks=n, ...)`: remove the n least influential residual blocks, then prune
        channels of what is left with the other options (targets stay fractions of this model)."""
        from .blocks import least_influential
        from .plan import BlockPlan

        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"options: --drop-blocks must be a whole number of blocks, not {n!r}")
        for name in ("target_latency", "sensitivity", "max_loss", "allocator"):
            if options.get(name) is not None:
                raise InputError(f"options: --drop-blocks cannot be combined with --{name.replace('_', '-')} yet")
        blocks = self.residual_blocks.blocks
        if n > len(blocks):
            raise InputError(f"{self.path}: --drop-blocks {n}: the model has {len(blocks)} removable residual block(s)"
                             + (f" ({self.residual_blocks.refused[0].reason})" if self.residual_blocks.refused else ""))
        influence = self.block_influence(data)
        chosen = least_influential(blocks, influence, n)
        if len(chosen) < n:
            raise InputError(f"{self.path}: --drop-blocks {n}: only {len(chosen)} of the blocks are not nested in one another")
        inner = self.without_blocks(chosen)
        base, rest = self.cost_model.base, inner.cost_model.base
        for target, total, left in (("target_macs", base.macs, rest.macs), ("target_params", base.params, rest.params)):
            if options.get(target) is not None:  # a fraction of this model, met by what is left
                options[target] = options[target] * total / max(left, 1)
                if options[target] >= 1:
                    options[target] = None
        if any(options.get(k) is not None for k in ("ratio", "threshold", "target_macs", "target_params")):
            plan = inner.plan(criterion, data, aggregate, **options)
        else:
            plan = make_plan(inner.depgraph, {}, options={"drop_blocks": n})
        plan.model = {"file": self.path.name, "sha256": self.sha256}
        plan.options["drop_blocks"] = n
        plan.blocks = [BlockPlan(b.add, b.shortcut, b.branch, b.output, b.module, list(b.modules), b.origin, b.macs,
                                 round(influence[b.id], 6))
                       for b in chosen]
        estimate = inner.cost(resolve(plan, inner.depgraph))
        plan.summary = {"params": [base.params, estimate.params], "macs": [base.macs, estimate.macs]}
        if data is None:
            plan.warnings.append("blocks were ranked on synthesized inputs (no --data): block influence says most about "
                                 "a model on inputs like the ones it serves; pass --data CALIB.npz")
        return plan

    def plan_blocks(self, plan: Plan, source: str = "plan") -> "list[Block]":
        """The model's blocks a plan removes, matched by their sum's node and tensors; a plan for
        another model is refused, naming the first block that does not match."""
        by_add = {b.add: b for b in self.residual_blocks.blocks}
        found = []
        for bp in plan.blocks:
            block = by_add.get(bp.add)
            if block is None or (block.shortcut, block.branch, block.output) != (bp.shortcut, bp.branch, bp.output):
                raise InputError(f"{source}: block at node '{bp.add}' is not a removable residual block of this model "
                                 "(plan for another model?)")
            found.append(block)
        return found

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
                labels: np.ndarray | None = None, output: str | Path | None = None) -> "Pruning":
        """Apply a plan: the pruned model, not yet verified.  What `Pruning.verify` needs of the
        original travels with it (its inputs and outputs, its outputs on the verification inputs
        or the file to compute them from), so this object may be dropped before verifying: the
        CLI does, and the original's weights, the pruned model and an onnxruntime session are
        then never in memory together.  With `data`, the result carries a quality report
        (`quality`: agreement with the original on all of the data, accuracy with labels);
        `reconstruct` (True or ReconstructOptions) first re-fits the layers that consume pruned
        channels on that data (onnxprune.recovery, which needs the original's weights here) and
        reports agreement before and after it (`recovery`).

        `output`, the file the result will be saved to, lets a model with external data be
        written as it goes (onnxprune.staging): each pruned weight goes to a staged data file
        beside `output` as surgery makes it, verification reads the staged files, and
        `PruneResult.save(output)` renames them into place.  Reconstruction, which re-fits the
        pruned weights in memory, keeps the whole pruned model in memory instead."""
        depgraph = self.without_blocks(self.plan_blocks(plan, source)).depgraph if plan.blocks else self.depgraph
        keep = resolve(plan, depgraph, source)
        if reconstruct and data is None:
            raise InputError("options: --reconstruct needs calibration data (--data FILE.npz)")
        if reconstruct and plan.blocks:
            raise InputError("options: --reconstruct cannot be combined with dropped blocks yet")
        rewrite = RewriteOptions(inexact_layernorm=bool(plan.options.get("inexact_layernorm", False)))
        with self.timings.stage(Stage.VERIFICATION):
            exact = not plan.blocks and all(self._all_dead(gid, mask) for gid, mask in keep.items())
            exact = exact and not (rewrite.inexact_layernorm and inexact_rewrites(depgraph, keep, rewrite))
            checked = self.check_runs(data)  # the original's outputs, computed before surgery
            chunks, quality_labels = self._quality_inputs(data)
            quality_labels = labels if labels is not None else quality_labels
            quality_reference = None
            if chunks is not None and not self.path.is_file():
                from .quality import first_output

                quality_reference = first_output(self.model, chunks)
        before_layers = {c.node: c for c in cost.layer_costs(self.cost_index)}
        sink = None
        if output is not None and self.loaded.had_external_data and not (reconstruct and not exact):
            from .staging import StagedOutput

            sink = StagedOutput(output)
        try:
            with self.timings.stage(Stage.SURGERY):
                pruned, recovery = apply_keep(depgraph, keep, sink, rewrite), None
                if sink is not None:
                    sink.write_header(pruned)
            if reconstruct and not exact:
                from .recovery import ReconstructOptions, recover

                options = reconstruct if isinstance(reconstruct, ReconstructOptions) else ReconstructOptions()
                pruned, recovery = recover(self.model, pruned, self.depgraph, keep, self.calibration(data), options,
                                           quality_labels, self.show_progress)
            return Pruning(pruned, plan, weightless_copy(self.model), checked.feeds, exact,
                           self.cost_model.base, before_layers, self.path, checked.outputs, self.loaded.had_external_data,
                           self.cost_shapes, recovery, self.origins(), chunks, quality_labels, quality_reference,
                           self.timings, sink)
        except BaseException:
            if sink is not None:
                sink.discard()
            raise

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
    staged: StagedOutput | None = None
    """The pruned weights as written so far (see PrunableModel.surgery's `output`); `model` holds stubs."""

    def discard(self) -> None:
        """Remove the staged files of a pruning that is not saved (a failed check, an error)."""
        if self.staged is not None and not self.staged.committed:
            self.staged.discard()

    def verify(self) -> PruneResult:
        """Check the pruned model against the original (verify.verify) and summarise the change.
        On failure the staged files are removed: nothing of them is written."""
        try:
            return self._verify()
        except BaseException:
            self.discard()
            raise

    def _verify(self) -> PruneResult:
        from . import verify as verification

        staged = str(self.staged.header_path) if self.staged is not None else None
        with self.timings.stage(Stage.VERIFICATION):
            reference = self.reference if self.reference is not None else verification.reference_outputs(str(self.path), self.feeds)
            report = verification.verify(self.original, self.model, self.feeds, exact=self.exact, reference=reference,
                                         source=staged)
            measured = None
            if self.quality_batches is not None:
                from .quality import compare, first_output, measure_all

                if self.quality_reference is not None:
                    measured = compare(self.quality_reference, first_output(staged or self.model, self.quality_batches), self.labels)
                else:  # streamed: one batch of outputs at a time
                    (measured,) = measure_all(str(self.path), [staged or self.model], self.quality_batches, self.labels)
        mapped = self.staged.arrays(self.model) if self.staged is not None else None  # stubs' data: the staged file
        after_index = ModelIndex.build(self.model, self.input_shapes, mapped)
        after = cost.model_cost(after_index)
        self.plan.summary = {"params": [self.before.params, after.params], "macs": [self.before.macs, after.macs]}
        old = self.before_layers
        layers = [LayerChange(c.node, c.op_type, (old[c.node].channels, c.channels), (old[c.node].params, c.params),
                              (old[c.node].macs, c.macs), self.origins.get(c.node))
                  for c in cost.layer_costs(after_index) if c.node in old]
        return PruneResult(self.model, self.plan, report, self.before, after, layers, self.exact,
                           True if self.external_data else None, measured, self.recovery, self.staged)
