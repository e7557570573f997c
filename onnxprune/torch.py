"""Hand-back to PyTorch: slice the original `nn.Module` in place so that it equals the pruned ONNX
model, ready for fine-tuning.  torch is an optional extra (`pip install onnxprune[torch]`).

Members of a plan are mapped to modules in this order:
1. the initializer name is a state_dict key (the default dynamo exporter keeps them);
2. otherwise the member's `scope` names the module (dynamo `name_scopes` metadata, legacy node
   names such as `/features/features.0/Conv`).
A BatchNorm that the exporter folded into the preceding conv (dynamo's default `optimize=True`,
the legacy exporter's constant folding) has no ONNX member of its own: it is found from the conv
node's scope (dynamo names the BN there) or from the module's data flow, traced with forward hooks
on `example_inputs`, and sliced with the conv's output channels.

Transformers (attention head counts, GPT-2's Conv1D, embedding columns, RMSNorm, the HF config) are
handled by onnxprune.torch_transformers.

Everything is worked out and checked before the first tensor changes, so a plan that does not fit
the module raises `InputError` naming the first mismatch and leaves the module untouched.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import torch_transformers as tt
from .errors import InputError
from .ops import Role
from .plan import Member, Plan

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _is_layer(mod: nn.Module | None) -> bool:
    """A layer with input and output channels (conv, linear, GPT-2's Conv1D)."""
    return isinstance(mod, CONV + CONV_T + (nn.Linear,)) or (mod is not None and tt.is_conv1d(mod))


def _is_channelwise(mod: nn.Module | None) -> bool:
    """A module whose parameters all index its (output) channels: norms, PReLU, embedding columns."""
    return isinstance(mod, NORM + (nn.PReLU, nn.LayerNorm)) or (mod is not None and tt.is_rmsnorm(mod))


class Side(Enum):
    """Which channels of a module a plan member cuts."""

    OUT = "out"      # output channels (filters, output features, a norm's channels)
    IN = "in"        # input channels
    PARAM = "param"  # one axis of a bare parameter (a layer scale), not a module's channels


@dataclass(frozen=True)
class Target:
    """Where a plan member lands in the module: a module's outputs or inputs, or a bare parameter
    (`param` is its state_dict key)."""

    module: str
    side: Side
    param: str | None = None


@dataclass
class ModuleCut:
    """Kept output / input channel indices of one module."""

    out: np.ndarray | None = None
    inp: np.ndarray | None = None
    axis: int = 0  # for a bare parameter (a layer scale): the axis `out` indexes
    sources: list[str] = field(default_factory=list)


def _merge(current: np.ndarray | None, new: np.ndarray, what: str) -> np.ndarray:
    if current is not None and not np.array_equal(current, new):
        raise InputError(f"plan: {what} is cut in two different ways by the plan")
    return new


def _dataflow_successors(module: nn.Module, example_inputs) -> dict[str, list[str]]:
    """Module name -> names of the modules that consume its output directly (one traced forward)."""
    produced: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # a freed tensor's id can be reused by a later one: keep them all
    successors: dict[str, list[str]] = {}
    handles = []

    def hook(name):
        def record(_mod, inputs, output):
            for value in inputs:
                if isinstance(value, torch.Tensor) and id(value) in produced:
                    successors.setdefault(produced[id(value)], []).append(name)
            if isinstance(output, torch.Tensor):
                produced[id(output)] = name
                alive.append(output)
        return record

    for name, sub in module.named_modules():
        if name and not list(sub.children()):
            handles.append(sub.register_forward_hook(hook(name)))
    _forward_once(module, example_inputs, handles)
    return successors


def _forward_once(module: nn.Module, example_inputs, handles: list) -> None:
    """One forward pass without gradients, for the hooks `handles` to watch; removes them after."""
    try:
        with torch.no_grad():
            module(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()


class _Mapper:
    def __init__(self, module: nn.Module, example_inputs):
        self.module = module
        self.state = dict(module.state_dict(keep_vars=True))
        self.modules = dict(module.named_modules())
        self.example_inputs = example_inputs
        self._successors: dict[str, list[str]] | None = None

    def successors(self, name: str, member: Member) -> list[str]:
        if self.example_inputs is None:
            raise InputError(f"plan: '{member.initializer}' (node {member.node}) was folded by the exporter; "
                             f"pass example_inputs so onnxprune can trace which BatchNorm follows module '{name}'")
        return self.dataflow().get(name, [])

    def dataflow(self) -> dict[str, list[str]]:
        """Module name -> the modules that consume its output (traced once on example_inputs)."""
        if self._successors is None:
            self._successors = _dataflow_successors(self.module, self.example_inputs)
        return self._successors

    def target(self, member: Member) -> Target:
        """Where a plan member lands in the module."""
        if member.initializer in self.state:
            owner, _, attr = member.initializer.rpartition(".")
            module = self.modules.get(owner)
            if self._shared_with_another_layer(owner, module, member):
                return self._scope_target(member)
            if _is_layer(module) and attr in ("weight", "bias"):
                return Target(owner, self._weight_side(module, member, attr))
            if _is_channelwise(module) or (isinstance(module, nn.Embedding) and member.axis == 1):
                return Target(owner, Side.OUT)
            return Target(owner, Side.PARAM, member.initializer)
        return self._scope_target(member)

    def _shared_with_another_layer(self, owner: str, module: nn.Module | None, member: Member) -> bool:
        """Whether the state_dict key names the wrong layer: exporters share one initializer between
        equal tensors of different layers (freshly initialised BatchNorms are all ones and zeros, a
        BN-folded conv's zero bias equals a BatchNorm's bias), so `a.norm1.bias` may be what the node
        of `b.conv1` reads.  The node's own layer (its scope) is then the one to cut, unless it is
        the BatchNorm the exporter folded into this very conv (dynamo names it in the conv's scope)."""
        user = self.resolve_scope(member.scope)
        if not user or user == owner or module is None or user.startswith(f"{owner}.") or owner.startswith(f"{user}."):
            return False
        other = self.modules[user]
        if isinstance(other, NORM) and _is_layer(module):
            return False
        return _is_layer(other) or _is_channelwise(other) or isinstance(other, nn.Embedding)  # a tied LM head's name

    def _scope_target(self, member: Member) -> Target:
        """(module name, side) from the member's scope (its node's layer)."""
        scope = self.resolve_scope(member.scope)
        scope_module = self.modules.get(scope) if scope is not None else None
        if scope_module is None:
            raise InputError(f"plan: cannot map '{member.initializer}' (node {member.node}, scope {member.scope}) "
                             "to a parameter of this module: is it the module that was exported?")
        if _is_layer(scope_module):
            return Target(scope, self._weight_side(scope_module, member, "bias" if member.role == Role.PARAM else "weight"))
        if _is_channelwise(scope_module) or (isinstance(scope_module, nn.Embedding) and member.axis == 1):
            return Target(scope, Side.OUT)
        raise InputError(f"plan: '{member.initializer}' (node {member.node}) maps to module '{member.scope}' "
                         f"({type(scope_module).__name__}), which onnxprune cannot slice")

    def resolve_scope(self, scope: str | None) -> str | None:
        """The module path a node scope names: a dotted path (dynamo), or the legacy exporter's
        chain (`layer1/layer1.0/conv1`, `features/denseblock1/denselayer1/conv1`, `1/body/body.0`),
        each part of which names a module inside the previous one either by its full path or by
        its path relative to some enclosing module: the closest module inside the previous part
        whose path ends with the part is taken (None when there is none, or two equally close)."""
        if not scope:
            return None
        if scope in self.modules:
            return scope
        current = ""
        for part in scope.split("/"):
            prefix = f"{current}." if current else ""
            found = [name for name in self.modules if name.startswith(prefix) and name != current
                     and (name == part or name.endswith("." + part))]
            if not found:
                return None
            shortest = min(len(name) for name in found)
            closest = [name for name in found if len(name) == shortest]
            if len(closest) > 1:
                return None
            current = closest[0]
        return current

    @staticmethod
    def _weight_side(module: nn.Module, member: Member, attr: str) -> Side:
        if tt.is_conv1d(module) and attr == "weight" and member.role is not Role.PARAM:
            return Side.OUT if member.axis == 1 else Side.IN  # Conv1D stores its weight [in, out]
        if attr == "weight" and member.role == Role.PARAM:
            # a weight read through a run-time Transpose (dynamo without optimize): the MatMul sees an
            # activation, so the plan has no role for it; its own axis says which side it is
            first = Side.IN if isinstance(module, CONV_T) else Side.OUT
            return first if member.axis == 0 else (Side.OUT if first is Side.IN else Side.IN)
        if attr == "bias" or member.role in (Role.OUT, Role.PARAM):
            return Side.OUT
        return Side.IN

    def fused_norm(self, owner: str, member: Member) -> str | None:
        """The BatchNorm folded into this conv/linear's output, if any."""
        scope = self.resolve_scope(member.scope)
        if scope and scope != owner and isinstance(self.modules.get(scope), NORM):
            return scope  # dynamo names the folded BN in the conv node's scope
        if member.initializer not in self.state:  # legacy constant folding renamed the weight
            follow = [s for s in self.successors(owner, member) if isinstance(self.modules[s], NORM)]
            return follow[0] if len(follow) == 1 else None
        return None


@dataclass
class Cuts:
    """What a plan cuts in a module: channels of submodules by name, and axes of bare parameters
    by state_dict key."""

    modules: dict[str, ModuleCut] = field(default_factory=dict)
    params: dict[str, ModuleCut] = field(default_factory=dict)
    heads: list[tt.HeadCut] = field(default_factory=list)
    """Attention modules whose head counts change (their projections are in `modules`)."""


def plan_cuts(module: nn.Module, plan: Plan, example_inputs=None) -> Cuts:
    """Work out, without changing anything, which channels of which module the plan keeps."""
    mapper = _Mapper(module, example_inputs)
    cuts = Cuts()
    for group in plan.groups:
        if len(group.keep) == group.channels:
            continue  # nothing to cut: its members need not map (a constant the exporter folded may not)
        keep = set(group.keep)
        for member in group.members:
            kept = member.kept(keep)
            target = mapper.target(member)
            owner = target.module
            if target.side is Side.PARAM:
                if member.axis >= mapper.state[target.param].dim():
                    raise InputError(f"plan: parameter '{target.param}' has no axis {member.axis}")
                cuts.params[target.param] = ModuleCut(out=kept, axis=member.axis)
                continue
            cut = cuts.modules.setdefault(owner, ModuleCut())
            if target.side is Side.OUT:
                cut.out = _merge(cut.out, kept, f"output channels of '{owner}'")
            else:
                cut.inp = _merge(cut.inp, kept, f"input channels of '{owner}'")
            cut.sources.append(member.initializer)
            if target.side is Side.OUT and _is_layer(mapper.modules[owner]):
                norm = mapper.fused_norm(owner, member)
                if norm:
                    norm_cut = cuts.modules.setdefault(norm, ModuleCut())
                    norm_cut.out = _merge(norm_cut.out, kept, f"channels of '{norm}'")
    _check_sizes(mapper, cuts.modules, plan)
    cuts.heads = tt.plan_heads(module, {name: cut.out for name, cut in cuts.modules.items() if cut.out is not None})
    return cuts


def _sizes(mod: nn.Module) -> tuple[int | None, int | None]:
    if isinstance(mod, CONV):
        return mod.out_channels, mod.in_channels
    if isinstance(mod, CONV_T):
        return mod.out_channels, mod.in_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    if isinstance(mod, NORM):
        return mod.num_features, None
    if isinstance(mod, nn.PReLU):
        return mod.num_parameters, None
    if isinstance(mod, nn.LayerNorm):
        return mod.normalized_shape[0], None
    if tt.is_conv1d(mod):
        return mod.weight.shape[1], mod.weight.shape[0]
    if isinstance(mod, nn.Embedding):
        return mod.embedding_dim, None
    if tt.is_rmsnorm(mod):
        return mod.weight.shape[0], None
    return None, None


def _check_sizes(mapper: _Mapper, cuts: dict[str, ModuleCut], plan: Plan) -> None:
    for name, cut in cuts.items():
        mod = mapper.modules[name]
        out, inp = _sizes(mod)
        for kept, size, side in ((cut.out, out, "output"), (cut.inp, inp, "input")):
            if kept is not None and size is not None and len(kept) and kept.max() >= size:
                raise InputError(f"plan: module '{name}' has {size} {side} channels but the plan keeps index {kept.max()} "
                                 "(plan for another model?)")
        if isinstance(mod, CONV + CONV_T) and mod.groups > 1 and cut.out is not None:
            per_group = mod.out_channels // mod.groups
            if len(cut.out) % per_group:
                raise InputError(f"plan: grouped module '{name}' would keep a partial group")


def _take(param: torch.Tensor, axis: int, kept: np.ndarray) -> torch.Tensor:
    return param.detach().index_select(axis, torch.as_tensor(kept, dtype=torch.long, device=param.device)).clone()


def _set(mod: nn.Module, attr: str, value: torch.Tensor) -> None:
    old = getattr(mod, attr)
    if isinstance(old, nn.Parameter):
        setattr(mod, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(mod, attr, value)


def _cut_dense(mod: nn.Module, cut: ModuleCut, out_axis: int, sizes: tuple[str, str]) -> None:
    """Slice a linear layer's weight (output features on `out_axis`, inputs on the other) and bias,
    and set its size attributes `sizes` (output, input; an absent one is left alone)."""
    if cut.out is not None:
        _set(mod, "weight", _take(mod.weight, out_axis, cut.out))
        if mod.bias is not None:
            _set(mod, "bias", _take(mod.bias, 0, cut.out))
        setattr(mod, sizes[0], len(cut.out))
    if cut.inp is not None:
        _set(mod, "weight", _take(mod.weight, 1 - out_axis, cut.inp))
        if hasattr(mod, sizes[1]):
            setattr(mod, sizes[1], len(cut.inp))


def _cut_module(mod: nn.Module, cut: ModuleCut, exact_layernorm: bool = True) -> None:
    if isinstance(mod, CONV + CONV_T):
        transposed = isinstance(mod, CONV_T)
        out_axis, in_axis = (1, 0) if transposed else (0, 1)
        if cut.out is not None:
            if mod.groups > 1:  # whole groups go: the grouped axis is the full-size one
                per_out = mod.out_channels // mod.groups
                new_groups = len(cut.out) // per_out
                per_in = mod.in_channels // mod.groups
                if transposed:
                    in_kept = np.concatenate([np.arange(g * per_in, (g + 1) * per_in) for g in np.unique(cut.out // per_out)])
                    _set(mod, "weight", _take(mod.weight, 0, in_kept))
                else:
                    _set(mod, "weight", _take(mod.weight, 0, cut.out))
                mod.in_channels, mod.groups = per_in * new_groups, new_groups
            else:
                _set(mod, "weight", _take(mod.weight, out_axis, cut.out))
            if mod.bias is not None:
                _set(mod, "bias", _take(mod.bias, 0, cut.out))
            mod.out_channels = len(cut.out)
        if cut.inp is not None and mod.groups == 1:
            _set(mod, "weight", _take(mod.weight, in_axis, cut.inp))
            mod.in_channels = len(cut.inp)
    elif isinstance(mod, nn.Linear):
        _cut_dense(mod, cut, out_axis=0, sizes=("out_features", "in_features"))
    elif isinstance(mod, NORM):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if getattr(mod, attr, None) is not None:
                _set(mod, attr, _take(getattr(mod, attr), 0, cut.out))
        mod.num_features = len(cut.out)
    elif isinstance(mod, nn.PReLU):
        if mod.num_parameters > 1:
            _set(mod, "weight", _take(mod.weight, 0, cut.out))
            mod.num_parameters = len(cut.out)
    elif isinstance(mod, nn.LayerNorm):
        width = getattr(mod, "original_width", mod.normalized_shape[0])
        for attr in ("weight", "bias"):
            if getattr(mod, attr, None) is not None:
                _set(mod, attr, _take(getattr(mod, attr), 0, cut.out))
        mod.normalized_shape = (len(cut.out),) + tuple(mod.normalized_shape[1:])
        if exact_layernorm and len(mod.normalized_shape) == 1 and len(cut.out) != width:
            mod.__class__ = _original_width_class(type(mod))  # the statistics the pruned ONNX computes
            mod.original_width = width
    elif tt.is_conv1d(mod):
        _cut_dense(mod, cut, out_axis=1, sizes=("nf", "nx"))  # GPT-2's Conv1D stores its weight [in, out]
    elif isinstance(mod, nn.Embedding):
        _set(mod, "weight", _take(mod.weight, 1, cut.out))
        mod.embedding_dim = len(cut.out)
    elif tt.is_rmsnorm(mod):
        weight, eps = tt.rescaled_rmsnorm(mod, cut.out)
        _set(mod, "weight", weight)
        tt.set_rmsnorm_eps(mod, eps, len(cut.out))


class ZeroBranch(nn.Module):
    """Stands for a residual branch the plan removed (`x + f(x)` became `x`): returns zeros shaped
    like the input the branch module was called with (`source`: a positional index or a keyword),
    inside a tuple of `outputs` entries when the module returned one (HF attention returns
    `(output, weights)`; the others are None).  The block's sum then adds nothing, exactly."""

    def __init__(self, replaced: str, source: int | str, outputs: int | None):
        super().__init__()
        self.replaced, self.source, self.outputs = replaced, source, outputs

    def forward(self, *args, **kwargs):
        x = args[self.source] if isinstance(self.source, int) else kwargs[self.source]
        zero = torch.zeros_like(x)
        return zero if self.outputs is None else (zero,) + (None,) * (self.outputs - 1)

    def extra_repr(self) -> str:
        return f"replaced={self.replaced!r}"


def _branch_calls(module: nn.Module, names: list[str], example_inputs) -> dict[str, tuple]:
    """Module name -> (args, kwargs, output) of its call in one traced forward (the last call)."""
    calls: dict[str, tuple] = {}
    modules = dict(module.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, a, k, o, n=n: calls.__setitem__(n, (a, k, o)), with_kwargs=True)
               for n in names]
    _forward_once(module, example_inputs, handles)
    return calls


def _zero_branch(name: str, call: tuple | None, block, exit: bool) -> ZeroBranch:
    """The ZeroBranch for module `name`, from its traced call.  The branch's last module (`exit`)
    returns zeros of its output's shape, made from the first input of that shape and dtype; a
    module before it returns zeros of its first tensor input: what it returns only feeds other
    replaced modules, and keeping the input's shape lets them see the widths the plan leaves."""
    where = f"plan: dropped block at node '{block.add}' (branch module '{name}')"
    if call is None:
        raise InputError(f"{where}: the module is not called on example_inputs")
    args, kwargs, output = call
    first = output[0] if isinstance(output, tuple) and output else output
    if not isinstance(first, torch.Tensor):
        raise InputError(f"{where}: the module does not return a tensor (or a tuple starting with one)")
    same = (lambda v: isinstance(v, torch.Tensor) and v.shape == first.shape and v.dtype == first.dtype) if exit else \
        (lambda v: isinstance(v, torch.Tensor))
    sources = [k for k, v in enumerate(args) if same(v)] + [k for k, v in kwargs.items() if same(v)]
    if not sources:
        raise InputError(f"{where}: none of its inputs has the shape of its output {tuple(first.shape)}, so its "
                         "zeros cannot be made without running it")
    return ZeroBranch(name, sources[0], len(output) if isinstance(output, tuple) else None)


def _folded_partners(mapper: _Mapper, names: set[str]) -> set[str]:
    """The conv/linear and BatchNorm pairs that an exporter folded into one node, of which the
    ONNX scope names only one: the BN after each conv/linear in `names`, the conv/linear before
    each BN (each the other's only neighbour in the traced data flow)."""
    successors = mapper.dataflow()
    predecessors: dict[str, list[str]] = {}
    for source, targets in successors.items():
        for target in targets:
            predecessors.setdefault(target, []).append(source)
    found = set()
    for name in names:
        mod = mapper.modules[name]
        if isinstance(mod, CONV + CONV_T + (nn.Linear,)):
            follow = successors.get(name, [])
            if len(follow) == 1 and isinstance(mapper.modules[follow[0]], NORM):
                found.add(follow[0])
        elif isinstance(mod, NORM):
            before = predecessors.get(name, [])
            if len(before) == 1 and isinstance(mapper.modules[before[0]], CONV + CONV_T + (nn.Linear,)) \
                    and successors.get(before[0]) == [name]:
                found.add(before[0])
    return found - names


def plan_branches(module: nn.Module, plan: Plan, example_inputs) -> dict[str, ZeroBranch]:
    """Module name -> the ZeroBranch that replaces it, for every residual block the plan drops:
    every outermost module of the branch that the exporter's scopes name (dynamo and the legacy
    exporter name nodes by module path), with the conv or BatchNorm the exporter folded into one of
    them.  The branch's last module (or the BatchNorm right after it, when folded) returns zeros
    of the branch's shape; no module of the branch is left to see widths the plan prunes.  A block
    whose branch is not one module raises InputError naming it; nothing changes here."""
    if not plan.blocks:
        return {}
    if example_inputs is None:
        raise InputError("plan: it drops residual blocks; pass example_inputs so onnxprune can trace how each "
                         "branch module is called")
    mapper = _Mapper(module, example_inputs)
    exits, others = {}, {}
    for block in plan.blocks:
        where = f"plan: dropped block at node '{block.add}' ({block.origin or 'no layer name'})"
        if not block.module:
            raise InputError(f"{where}: its branch is not computed by one module of the exported model, so the hand-back "
                             "cannot replace it by zeros")
        for scope in dict.fromkeys([block.module] + list(block.modules)):
            name = mapper.resolve_scope(scope)
            if name is None:
                raise InputError(f"{where}: no module of this model is named by its branch's scope '{scope}' "
                                 "(plan for another model?)")
            if scope == block.module and isinstance(mapper.modules[name], CONV + CONV_T + (nn.Linear,)):
                follow = [n for n in mapper.successors(name, None) if isinstance(mapper.modules[n], NORM)]
                if len(follow) == 1:  # the exporter folded this BN into the conv: the BN's output is the branch's
                    others[name] = block
                    name = follow[0]
            (exits if scope == block.module else others)[name] = block
        for name in _folded_partners(mapper, {n for n, b in {**exits, **others}.items() if b is block}):
            others.setdefault(name, block)
    others = {n: b for n, b in others.items() if n not in exits and not any(n.startswith(f"{e}.") for e in exits)}
    calls = _branch_calls(module, list(exits) + list(others), example_inputs)
    branches = {name: _zero_branch(name, calls.get(name), block, exit=True) for name, block in exits.items()}
    branches.update({name: _zero_branch(name, calls.get(name), block, exit=False) for name, block in others.items()})
    return branches


def _replace_branches(module: nn.Module, branches: dict[str, ZeroBranch]) -> None:
    for name, zero in branches.items():
        owner, _, child = name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, child, copy.deepcopy(zero))


def _calls_layer_norm_forward(cls: type) -> bool:
    """`cls` (an nn.LayerNorm subclass) normalises through nn.LayerNorm.forward: it does not
    override it, or its forward calls `super().forward` (ConvNeXt's permuting LayerNorm2d)."""
    if cls.forward is nn.LayerNorm.forward or issubclass(cls, OriginalWidthLayerNorm):
        return True
    try:
        return "super().forward(" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def _original_width_class(cls: type) -> type:
    """`cls` with nn.LayerNorm.forward replaced by OriginalWidthLayerNorm.forward (for a subclass,
    a class whose MRO puts it right after `cls`, so the subclass's own forward still runs)."""
    if cls is nn.LayerNorm or issubclass(cls, OriginalWidthLayerNorm):
        return OriginalWidthLayerNorm if cls is nn.LayerNorm else cls
    if not _calls_layer_norm_forward(cls):
        raise InputError(f"plan: {cls.__name__} computes its own LayerNorm statistics, which the hand-back cannot make "
                         "divide by the original width as the pruned ONNX does; prune with inexact_layernorm "
                         "(--inexact-layernorm) for a module that matches")
    return type(f"OriginalWidth{cls.__name__}", (cls, OriginalWidthLayerNorm), {})


class OriginalWidthLayerNorm(nn.LayerNorm):
    """A LayerNorm whose mean and variance still divide by the width it had before pruning, as the
    exactly pruned ONNX model's does (the removed channels count as zeros; see
    onnxprune/ops/norm.py).  The hand-back turns a sliced nn.LayerNorm into one unless the plan
    asked for `inexact_layernorm`; it stays an nn.LayerNorm (same parameters, state_dict keys)."""

    original_width: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.original_width
        mean = x.sum(-1, keepdim=True) / n
        centred = x - mean
        var = (centred.pow(2).sum(-1, keepdim=True) + (n - x.shape[-1]) * mean.pow(2)) / n
        y = centred / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


def apply_plan(module: nn.Module, plan: Plan | str | Path, example_inputs=None) -> nn.Module:
    """Slice `module` in place to match the pruned ONNX model; returns it.  `example_inputs` (a
    tuple) is needed when the exporter folded BatchNorms under new names (legacy exporter) and
    when the plan drops residual blocks (each branch module is replaced by a ZeroBranch)."""
    plan = Plan.read(plan) if isinstance(plan, (str, Path)) else plan
    branches = plan_branches(module, plan, example_inputs)
    cuts = plan_cuts(module, plan, example_inputs)
    exact_layernorm = not plan.options.get("inexact_layernorm", False)
    modules = dict(module.named_modules())
    for name, cut in cuts.modules.items():  # refuse a LayerNorm it cannot keep exact before any slicing
        mod = modules[name]
        if exact_layernorm and isinstance(mod, nn.LayerNorm) and cut.out is not None \
                and len(cut.out) != getattr(mod, "original_width", mod.normalized_shape[0]):
            _original_width_class(type(mod))
    if example_inputs is not None:  # rehearse on a copy: a plan the code cannot follow leaves `module` untouched
        trial = copy.deepcopy(module)
        _replace_branches(trial, branches)
        _apply_cuts(trial, cuts, exact_layernorm)
        try:
            with torch.no_grad():
                trial.eval()(*example_inputs)
        except RuntimeError as exc:
            raise InputError(f"plan: the sliced module does not run ({str(exc).splitlines()[0]}); its code fixes a channel "
                             "count the plan changes (torch.chunk/split sizes, a hard-coded view?)") from None
    _replace_branches(module, branches)
    _apply_cuts(module, cuts, exact_layernorm)
    return module


def _apply_cuts(module: nn.Module, cuts: Cuts, exact_layernorm: bool = True) -> None:
    modules = dict(module.named_modules())
    for name, cut in cuts.params.items():
        owner, _, attr = name.rpartition(".")
        target = modules[owner] if owner else module
        _set(target, attr, _take(getattr(target, attr), cut.axis, cut.out))
    widths = {name: (_sizes(modules[name])[0], len(cut.out)) for name, cut in cuts.modules.items() if cut.out is not None}
    shared = _shared_parameters(module)
    for name, cut in cuts.modules.items():
        _cut_module(modules[name], cut, exact_layernorm)
    _retie(shared)
    tt.apply_heads(module, cuts.heads)
    tt.update_configs(module, cuts.heads, widths,
                      [tt.rmsnorm_eps(modules[name]) for name in cuts.modules if tt.is_rmsnorm(modules[name])])


def _shared_parameters(module: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """(module, attribute) pairs that hold one Parameter together (tied embedding and output
    projection): slicing replaces each holder's Parameter, so the tie is restored afterwards."""
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in module.modules():
        for attr, param in mod.named_parameters(recurse=False):
            holders.setdefault(id(param), []).append((mod, attr))
    return [h for h in holders.values() if len(h) > 1]


def _retie(shared: list[list[tuple[nn.Module, str]]]) -> None:
    for holders in shared:
        first = getattr(*holders[0])
        for mod, attr in holders[1:]:
            other = getattr(mod, attr)
            if other is not first and other.shape == first.shape and torch.equal(other, first):
                setattr(mod, attr, first)


def apply_masks(module: nn.Module, masks: dict[str, np.ndarray], optimizer: torch.optim.Optimizer | None = None) -> "MaskHandle":
    """Keep fine-grained pruned weights at zero during training: multiplies each named parameter by
    its mask now, zeroes the masked gradients, and, given the optimizer, re-applies the masks after
    each of its steps (momentum or weight decay accumulated before would otherwise move masked
    weights).  Call `handle.remove()` to stop."""
    state = dict(module.named_parameters())
    missing = [name for name in masks if name not in state]
    if missing:
        raise InputError(f"masks: '{missing[0]}' is not a parameter of this module")
    tensors = {name: torch.as_tensor(np.asarray(mask), dtype=state[name].dtype) for name, mask in masks.items()}
    for name, mask in tensors.items():
        if tuple(mask.shape) != tuple(state[name].shape):
            raise InputError(f"masks: '{name}' has shape {tuple(mask.shape)}, the parameter {tuple(state[name].shape)}")
    return MaskHandle(module, tensors, optimizer)


class MaskHandle:
    """Masks gradients during backward and, with an optimizer, the weights after every step."""

    def __init__(self, module: nn.Module, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None):
        self.module = module
        self.masks = masks
        params = dict(module.named_parameters())
        self.hooks = [params[n].register_hook(lambda g, m=m: g * m) for n, m in masks.items()]
        if optimizer is not None:
            self.hooks.append(optimizer.register_step_post_hook(lambda *_: self.apply()))
        self.apply()

    def apply(self) -> None:
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, mask in self.masks.items():
                params[name].mul_(mask)

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def export(module: nn.Module, example_inputs, path: str | Path, dynamic_batch: bool = True) -> Path:
    """Export with the default (dynamo) exporter, batch axis dynamic, quietly."""
    import contextlib
    import io
    import logging
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        shapes = tuple({0: batch} for _ in example_inputs)
    module.eval()
    logging.getLogger("torch").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(example_inputs), str(path), dynamic_shapes=shapes, verbose=False)
    return path


def prune(module: nn.Module, example_inputs, criterion="l1", data=None, workdir: str | Path | None = None,
          **options) -> tuple[nn.Module, Plan]:
    """Export, plan, and slice `module` in place: the one-call PyTorch flow.  Options are those of
    `PrunableModel.plan` (ratio, target_macs, threshold, round_to, ...).  Returns (module, plan)."""
    import tempfile

    from .api import load

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = export(module, example_inputs, Path(tmp) / "model.onnx")
        model = load(path)
        plan = model.plan(criterion=criterion, data=data, **options)
    apply_plan(module, plan, example_inputs)
    return module, plan


@dataclass
class IterationRecord:
    step: int
    target_macs: float
    macs: float
    params: float
    score: float


def iterative_prune(module: nn.Module, example_inputs, finetune, evaluate, target_macs: float = 0.5, steps: int = 4,
                    schedule: str = "linear", tolerance: float | None = None, criterion="l1", data=None,
                    **options) -> tuple[nn.Module, list[IterationRecord]]:
    """Prune a little, fine-tune, prune again (the Vitis AI optimizer's and PaddlePaddle's loop).

    At step k the fraction of the original MACs removed follows `schedule` (linear, paddle_log
    with interval 1 and end `steps`, or cubic) up to 1 - target_macs.  `finetune(module, step)`
    trains in place with the user's own data and loss; `evaluate(module) -> float` scores it
    (higher is better).  With `tolerance`, the loop stops when the score falls more than that
    below the unpruned score and the last acceptable model is returned: the smallest model that
    stays within the tolerance.  Returns (module, history); `module` is sliced in place."""
    from . import schedule as schedules
    from .api import load

    import tempfile

    baseline = evaluate(module)
    history = [IterationRecord(0, 1.0, 1.0, 1.0, baseline)]
    total = 1.0 - target_macs
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        first = load(export(module, example_inputs, Path(tmp) / "step0.onnx"))
        macs0, params0 = first.inspect()["macs"], first.inspect()["params"]
        for step in range(1, steps + 1):
            if schedule == "paddle_log":
                removed = schedules.paddle_log(step, total, interval_pass=1, end_pass=steps)
            elif schedule == "cubic":
                removed = schedules.cubic(step, total, n=steps)
            else:
                removed = schedules.linear(step, steps, total)
            model = load(export(module, example_inputs, Path(tmp) / f"step{step}.onnx"))
            current = model.inspect()
            keep_fraction = min(1.0, (1.0 - removed) * macs0 / current["macs"])
            if keep_fraction < 0.999:
                plan = model.plan(criterion=criterion, data=data, target_macs=keep_fraction, **options)
                if tolerance is not None:
                    best = copy.deepcopy(module)
                apply_plan(module, plan, example_inputs)
            finetune(module, step)
            score = evaluate(module)
            after = load(export(module, example_inputs, Path(tmp) / f"step{step}_done.onnx")).inspect()
            history.append(IterationRecord(step, 1.0 - removed, after["macs"] / macs0, after["params"] / params0, score))
            if tolerance is not None and score < baseline - tolerance and best is not None:
                return best, history
    return module, history


__all__ = ["apply_plan", "apply_masks", "export", "iterative_prune", "plan_branches", "plan_cuts", "prune", "IterationRecord",
           "MaskHandle", "ZeroBranch"]
