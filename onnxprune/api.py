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
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from .groups import KeepMasks, Scores
from . import cost
from .cost import CostModel, ModelCost
from .allocation import AllocationOptions, allocate
from .data import load_calibration, verification_inputs
from .depgraph import DepGraph, build_depgraph
from .errors import InputError
from .graph import ModelIndex, weightless_copy
from .inputs import ChosenInputs, check_input_shapes, choose_inputs
from .importance import CRITERIA, NORMALIZATIONS, Criterion, activation_criterion, importance
from .load import LoadedModel, check_supported, load_model
from .ops import OUT, PARAM
from .plan import Plan, make_plan, resolve
from .save import save_model
from .surgery import apply_keep
from . import verify as verification  # looked up at call time, so tests can make verification fail
from .verify import VerifyReport


@dataclass
class LayerChange:
    """One layer before and after pruning, as summaries show it."""

    node: str
    op: str
    channels: tuple[int | None, int | None]
    params: tuple[int, int]
    macs: tuple[int, int]


@dataclass
class PruneResult:
    model: onnx.ModelProto
    plan: Plan
    report: VerifyReport
    before: ModelCost
    after: ModelCost
    layers: list[LayerChange] = field(default_factory=list)
    exact: bool = False
    external_data: bool | None = None
    """How `save` stores the weights: as the original did (a .data file beside the model when the
    original had one); None: inline unless they exceed protobuf's 2 GB limit."""

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


def load(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> "PrunableModel":
    """Load an ONNX file (external data only from inside its folder) for analysis and pruning.
    `input_shapes` (input name -> shape) are the sizes the model really runs at: costs (MACs,
    `target_macs`) are counted there instead of counting dynamic sizes as 1, and verification's
    random inputs have them (without it those sizes are chosen so that the original runs)."""
    model = PrunableModel(load_model(path), input_shapes=input_shapes)
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

    @property
    def model(self) -> onnx.ModelProto:
        return self.loaded.model

    @property
    def path(self) -> Path:
        return self.loaded.path

    @cached_property
    def index(self) -> ModelIndex:
        return ModelIndex.build(self.model)

    @cached_property
    def depgraph(self) -> DepGraph:
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
        for layer in cost.layer_costs(self.cost_index):
            layers.append({"node": layer.node, "op": layer.op_type, "params": layer.params, "macs": layer.macs,
                           "channels": layer.channels, "prunable": node_index[layer.node] in prunable_nodes})
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
                           "producers": [d.tensor for d in outs]})
        control_flow = [n.name or n.output[0] for n in self.model.graph.node
                        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)]
        return {"model": str(self.path), "opset": self.index.opset, "params": params, "macs": macs,
                "control_flow": control_flow,
                "prunable_params": sum(l["params"] for l in layers if l["prunable"]) / max(params, 1),
                "prunable_macs": sum(l["macs"] for l in layers if l["prunable"]) / max(macs, 1),
                "groups": groups, "layers": layers}

    def check_runs(self, data: str | Path | dict | None = None) -> ChosenInputs:
        """The inputs verification uses (the first samples of `data`, or inputs chosen so that the
        original runs, see inputs.choose_inputs) and the original's outputs on them, computed once.
        Run first, so that a model onnxruntime cannot run on them is refused (bad input, naming
        what to pass) before any work, and never blamed on the pruning."""
        key = data if data is None or isinstance(data, (str, Path)) else id(data)
        if self._checked is not None and self._checked[0] == key:
            return self._checked[1]
        runnable = str(self.path) if self.path.is_file() else self.model  # from the file: no serialised copy
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
        groups = tqdm(self.groups, desc="importance", unit="group", disable=not self.show_progress, leave=False)
        if normalize not in NORMALIZATIONS:
            raise InputError(f"options: unknown --normalize '{normalize}' (choose from {', '.join(NORMALIZATIONS)})")
        return {g.id: importance(self.depgraph, g, criterion, aggregate, normalize) for g in groups}

    @cached_property
    def cost_index(self) -> ModelIndex:
        """The index costs are counted on: at `input_shapes` when given."""
        return ModelIndex.build(self.model, self.input_shapes) if self.input_shapes else self.index

    @cached_property
    def cost_model(self) -> CostModel:
        return CostModel(self.depgraph, self.cost_index)

    def cost(self, keep: KeepMasks) -> ModelCost:
        """Params and MACs after keeping these channels: a dry run of surgery, nothing written."""
        return self.cost_model.estimate(keep)

    def plan(self, criterion: str | Criterion = "l1", data=None, aggregate: str = "sum", **options) -> Plan:
        """Choose the channels to remove.  Options are those of `AllocationOptions` (ratio,
        threshold, target_macs, target_params, global_ranking, max_ratio, round_to, ignore,
        protect_ends), plus normalize ("mean", "max", "none": see importance.importance),
        sensitivity / max_loss (allocation from a sensitivity analysis) and allocator: your own
        strategy, called as allocator(depgraph, scores, options, cost_of) -> {group id: keep mask},
        where cost_of(keep) -> ModelCost(params, macs) prices a candidate without surgery."""
        sensitivity = options.pop("sensitivity", None)
        max_loss = options.pop("max_loss", None)
        normalize = options.pop("normalize", "mean")
        allocator = options.pop("allocator", allocate)
        opts = AllocationOptions(**options)
        opts.validate()
        scores = self.importance(criterion, data, aggregate, normalize)
        chosen = None
        if sensitivity is not None or max_loss is not None:
            keep, chosen = self._allocate_from_sensitivity(sensitivity, scores, opts, max_loss)
        else:
            keep = allocator(self.depgraph, scores, opts, self.cost)
        plan = make_plan(self.depgraph, keep, {"file": self.path.name, "sha256": self.sha256},
                         {"criterion": criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom"),
                          "aggregate": aggregate, "normalize": normalize, **{k: v for k, v in vars(opts).items() if v not in (None, [], False)}})
        if chosen is not None:
            plan.options["sensitivity_ratios"] = {str(g): r for g, r in sorted(chosen.items())}
            if max_loss is not None:
                plan.options["max_loss"] = max_loss
        estimate = self.cost(keep)
        base = self.cost_model.base
        plan.summary = {"params": [base.params, estimate.params], "macs": [base.macs, estimate.macs]}
        return plan

    def _allocate_from_sensitivity(self, sensitivity, scores, opts: AllocationOptions, max_loss):
        from . import sensitivity as sens_mod

        if sensitivity is None:
            raise InputError("options: --max-loss needs --sensitivity SENS.json")
        sens = sensitivity if isinstance(sensitivity, sens_mod.Sensitivity) else sens_mod.Sensitivity.read(Path(sensitivity))
        return sens_mod.allocate(self, sens, scores, opts.target_macs, opts.target_params, max_loss)

    # --- surgery -------------------------------------------------------------------------
    def surgery(self, plan: Plan, data=None, source: str = "plan") -> "Pruning":
        """Apply a plan: the pruned model, not yet verified.  What `Pruning.verify` needs of the
        original travels with it (its inputs and outputs, its outputs on the verification inputs
        or the file to compute them from), so this object may be dropped before verifying: the
        CLI does, and the original's weights, the pruned model and an onnxruntime session are
        then never in memory together."""
        keep = resolve(plan, self.depgraph, source)
        exact = all(self._all_dead(gid, mask) for gid, mask in keep.items())
        checked = self.check_runs(data)  # the original's outputs, computed before surgery
        before_layers = {c.node: c for c in cost.layer_costs(self.cost_index)}
        return Pruning(apply_keep(self.depgraph, keep), plan, weightless_copy(self.model), checked.feeds, exact,
                       self.cost_model.base, before_layers, self.path, checked.outputs, self.loaded.had_external_data,
                       self.input_shapes)

    def apply(self, plan: Plan, data=None, source: str = "plan") -> PruneResult:
        """Apply a plan, verify the result against the original, and return it (nothing saved)."""
        return self.surgery(plan, data, source).verify()

    def _all_dead(self, group_id: int, keep: np.ndarray) -> bool:
        from .importance import dead_channels

        group = self.depgraph.groups[group_id]
        return bool(np.all(keep | dead_channels(self.depgraph, group)))

    def prune(self, criterion: str | Criterion = "l1", data=None, aggregate: str = "sum", **options) -> PruneResult:
        """plan() then apply()."""
        return self.apply(self.plan(criterion, data, aggregate, **options), data)


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

    def verify(self) -> PruneResult:
        """Check the pruned model against the original (verify.verify) and summarise the change."""
        reference = self.reference if self.reference is not None else verification.reference_outputs(str(self.path), self.feeds)
        report = verification.verify(self.original, self.model, self.feeds, exact=self.exact, reference=reference)
        after_index = ModelIndex.build(self.model, self.input_shapes)
        after = cost.model_cost(after_index)
        self.plan.summary = {"params": [self.before.params, after.params], "macs": [self.before.macs, after.macs]}
        old = self.before_layers
        layers = [LayerChange(c.node, c.op_type, (old[c.node].channels, c.channels), (old[c.node].params, c.params),
                              (old[c.node].macs, c.macs)) for c in cost.layer_costs(after_index) if c.node in old]
        return PruneResult(self.model, self.plan, report, self.before, after, layers, self.exact,
                           True if self.external_data else None)
