"""Stage 4: importance of each channel of a group.

Every criterion returns one score per channel, and every criterion gives exactly 0 to a *dead*
channel and a positive score to every other one, so `--threshold 0` removes exactly the dead
channels whatever the criterion.  A channel is dead when it is exactly zero wherever it is consumed
by a weight (a Conv or Gemm input): it can then go without changing any output.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .depgraph import DepGraph
from .groups import Group
from .ops import BN_SCALE, IN, OUT, Dim, NodeContext, ZeroView, rule_for

Criterion = Callable[[DepGraph, Group], np.ndarray]
"""A user-pluggable importance function: (dependency graph, group) -> score per channel."""


def _slice_zero(value: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
    return ~np.any(moved != 0, axis=1)


def _view(dg: DepGraph, zero: dict[Dim, np.ndarray], in_dim: Dim, out: Dim, n: int) -> ZeroView | None:
    if not dg.graph.has_edge(in_dim, out):
        return None
    edge = dg.graph.edges[in_dim, out]["edges"][0]
    z_in = zero.get(in_dim)
    if z_in is None:
        return ZeroView(np.zeros(n, dtype=bool), np.ones(n, dtype=bool), False)
    if edge.is_identity:
        return ZeroView(z_in, np.ones(n, dtype=bool), False)
    ia, ib = (edge.a_idx, edge.b_idx) if edge.a == in_dim else (edge.b_idx, edge.a_idx)
    aligned = np.ones(n, dtype=bool)
    cover = np.zeros(n, dtype=bool)
    np.logical_and.at(aligned, ib, z_in[ia])
    cover[ib] = True
    return ZeroView(aligned & cover, cover, False)


def dead_channels(dg: DepGraph, group: Group) -> np.ndarray:
    """Bool per channel: exactly zero at every point where a weight consumes it."""
    index = dg.index
    zero: dict[Dim, np.ndarray] = {}
    for dim in group.const_dims:
        zero[dim] = _slice_zero(index.const(dim.tensor), dim.axis)
    producers = sorted({index.producer[d.tensor] for d in group.dims if not d.is_const and d.tensor in index.producer})
    for node_i in producers:
        ctx = NodeContext(index, node_i)
        rule = rule_for(ctx.node)
        for out_slot, name in enumerate(ctx.node.output):
            for out in [d for d in group.dims if d.tensor == name and not d.is_const]:
                n = group.sizes[out]
                views = {}
                for slot in range(ctx.n_inputs):
                    if not ctx.input(slot):
                        continue
                    view = None
                    for axis in range(ctx.in_rank(slot) or 0):
                        view = _view(dg, zero, ctx.in_dim(slot, axis), out, n)
                        if view is not None:
                            break
                    if view is None:
                        value = ctx.const(slot)
                        whole = value is not None and not np.any(value != 0)
                        view = ZeroView(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), whole)
                    views[slot] = view
                zero[out] = rule.zero(ctx, views, n)
    consumed = [d for d in group.dims if not d.is_const and _feeds_weight(dg, d)]
    points = consumed or [d for d in group.dims if not d.is_const]
    dead = np.ones(group.n_channels, dtype=bool)
    for dim in points:
        alive_here = np.zeros(group.n_channels, dtype=bool)
        np.logical_or.at(alive_here, group.classes[dim], ~zero.get(dim, np.zeros(group.sizes[dim], dtype=bool)))
        dead &= ~alive_here
    return dead


def _feeds_weight(dg: DepGraph, dim: Dim) -> bool:
    return any(other.is_const and dg.roles.get(other) == IN for other in dg.graph.neighbors(dim))


def _weight_norms(dg: DepGraph, group: Group, ord: int) -> np.ndarray:
    scores = np.zeros(group.n_channels)
    for dim in group.dims_with_role(OUT):
        value = np.abs(dg.index.const(dim.tensor).astype(np.float64))
        moved = np.moveaxis(value, dim.axis, 0).reshape(value.shape[dim.axis], -1)
        per_element = moved.sum(axis=1) if ord == 1 else (moved ** 2).sum(axis=1)
        np.add.at(scores, group.classes[dim], per_element)
    return scores if ord == 1 else np.sqrt(scores)


def l1(dg: DepGraph, group: Group) -> np.ndarray:
    """Sum of |w| of the filters producing each channel (Li et al. 2017)."""
    return _weight_norms(dg, group, 1)


def l2(dg: DepGraph, group: Group) -> np.ndarray:
    """L2 norm of the filters producing each channel."""
    return _weight_norms(dg, group, 2)


def bn_scale(dg: DepGraph, group: Group) -> np.ndarray:
    """|gamma| of the group's BatchNormalization layers (network slimming).  When the exporter
    folded BN into the conv (PyTorch's default), the conv filters carry gamma: L1 is used then."""
    dims = group.dims_with_role(BN_SCALE)
    if not dims:
        return l1(dg, group)
    scores = np.zeros(group.n_channels)
    for dim in dims:
        np.add.at(scores, group.classes[dim], np.abs(dg.index.const(dim.tensor).astype(np.float64)))
    return scores


def random(dg: DepGraph, group: Group) -> np.ndarray:
    """A baseline: reproducible random scores (seeded by the group id)."""
    return np.random.default_rng(group.id).random(group.n_channels) + 1e-3


CRITERIA: dict[str, Criterion] = {"l1": l1, "l2": l2, "bn": bn_scale, "random": random}


def importance(dg: DepGraph, group: Group, criterion: str | Criterion = "l1") -> np.ndarray:
    """Scores per channel; 0 exactly for dead channels, positive for all others."""
    fn = CRITERIA[criterion] if isinstance(criterion, str) else criterion
    scores = np.asarray(fn(dg, group), dtype=np.float64)
    if scores.shape != (group.n_channels,):
        raise ValueError(f"importance function returned shape {scores.shape}, expected ({group.n_channels},)")
    dead = dead_channels(dg, group)
    tiny = np.finfo(np.float64).tiny
    return np.where(dead, 0.0, np.maximum(np.abs(scores), tiny))
