"""Stage 4: importance of each channel of a group.

Every criterion returns one score per channel, and every criterion gives exactly 0 to a *dead*
channel and a positive score to every other one, so `--threshold 0` removes exactly the dead
channels whatever the criterion.  A channel is dead when it is exactly zero wherever it is consumed
by a weight (a Conv or Gemm input): it can then go without changing any output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .depgraph import DepGraph
from .groups import Group
from .ops import BN_SCALE, IN, OUT, Dim, NodeContext, ZeroView

Criterion = Callable[[DepGraph, Group], "np.ndarray | list[np.ndarray]"]
"""A user-pluggable importance function: (dependency graph, group) -> a score per channel, or one
array of scores per producing layer (aggregated with sum, mean or max)."""


def _slice_zero(value: np.ndarray, axis: int) -> np.ndarray:
    """Bool per index along `axis`: all zero there.  The leading axes are folded first (a fast
    contiguous OR) instead of moving `axis` to the front, which copied the whole weight."""
    nonzero = value != 0
    if axis:
        nonzero = nonzero.reshape(-1, *value.shape[axis:]).any(axis=0)
    return ~nonzero.reshape(value.shape[axis], -1).any(axis=1)


def _view(dg: DepGraph, zero: dict[Dim, np.ndarray], in_dim: Dim, out: Dim, n: int) -> ZeroView | None:
    if not dg.graph.has_edge(in_dim, out):
        return None
    edge = dg.graph.edges[in_dim, out]["edges"][0]
    z_in = zero.get(in_dim)
    if z_in is None and in_dim.is_const:  # only constants an op actually reads are worth a scan
        z_in = zero[in_dim] = _slice_zero(dg.index.const(in_dim.tensor), in_dim.axis)
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
    producers = sorted({index.producer[d.tensor] for d in group.dims if not d.is_const and d.tensor in index.producer})
    for node_i in producers:
        ctx = NodeContext(index, node_i)
        rule = ctx.rule
        for name in ctx.node.output:
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
    dead = np.ones(group.n_channels, dtype=bool)
    for dim in consumption_points(dg, group):
        alive_here = np.zeros(group.n_channels, dtype=bool)
        np.logical_or.at(alive_here, group.classes[dim], ~zero.get(dim, np.zeros(group.sizes[dim], dtype=bool)))
        dead &= ~alive_here
    return dead


def consumption_points(dg: DepGraph, group: Group) -> list[Dim]:
    """The activation axes where a weight consumes the group's channels (Conv and Gemm inputs),
    or an activation-only computation reads them (DepGraph.consumed: Q.K^T, RMSNorm's mean).
    A channel that is zero at all of them can be removed without changing any output, which is
    what dead-channel detection and mask-based sensitivity analysis both rely on."""
    consumed = [d for d in group.dims if not d.is_const and (_feeds_weight(dg, d) or d in dg.consumed)]
    return consumed or [d for d in group.dims if not d.is_const]


def _feeds_weight(dg: DepGraph, dim: Dim) -> bool:
    """A neighbour consumes the channels as a weight's input axis (a constant weight, or one a
    DequantizeLinear computes from integer weights)."""
    return any(dg.roles.get(other) == IN for other in dg.graph.neighbors(dim))


def _producer_rows(dg: DepGraph, group: Group, dtype=np.float64):
    """(dim, rows) for each producing weight of the group: rows[e] is the filter of element e
    (as `dtype`; None keeps the weight's own type and spares a float64 copy of it)."""
    for dim in group.dims_with_role(OUT):
        value = dg.index.const(dim.tensor)
        value = value if dtype is None else value.astype(dtype)
        yield dim, np.moveaxis(value, dim.axis, 0).reshape(value.shape[dim.axis], -1)


def _per_channel(group: Group, dim, per_element: np.ndarray) -> np.ndarray:
    scores = np.zeros(group.n_channels)
    np.add.at(scores, group.classes[dim], per_element)
    return scores


def l1(dg: DepGraph, group: Group) -> list[np.ndarray]:
    """Sum of |w| of the filters producing each channel (Li et al. 2017)."""
    # |w| is exact in the weight's own type; summing in float64 spares a float64 copy of the weight
    return [_per_channel(group, d, np.abs(rows).sum(axis=1, dtype=np.float64)) for d, rows in _producer_rows(dg, group, None)]


def l2(dg: DepGraph, group: Group) -> list[np.ndarray]:
    """L2 norm of the filters producing each channel."""
    return [np.sqrt(_per_channel(group, d, (rows ** 2).sum(axis=1))) for d, rows in _producer_rows(dg, group)]


def fpgm(dg: DepGraph, group: Group) -> list[np.ndarray]:
    """Distance of each filter to the others (He et al. 2019, geometric median): filters near the
    median are replaceable by the rest and score low."""
    scores = []
    for dim, rows in _producer_rows(dg, group):
        squared = (rows ** 2).sum(axis=1)
        dist2 = np.maximum(squared[:, None] + squared[None, :] - 2 * rows @ rows.T, 0)
        scores.append(_per_channel(group, dim, np.sqrt(dist2).sum(axis=1)))
    return scores


def lamp(dg: DepGraph, group: Group) -> list[np.ndarray]:
    """LAMP (Lee et al. 2021) on filter energies: each channel's squared norm divided by the sum of
    the squared norms of the channels at least as large, which makes layers comparable."""
    scores = []
    for dim, rows in _producer_rows(dg, group):
        energy = _per_channel(group, dim, (rows ** 2).sum(axis=1))
        order = np.argsort(energy, kind="stable")
        tail = np.cumsum(energy[order][::-1])[::-1]
        score = np.empty_like(energy)
        score[order] = energy[order] / np.maximum(tail, 1e-300)
        scores.append(score)
    return scores


lamp.normalize = False  # LAMP scores are comparable across layers by construction


def bn_scale(dg: DepGraph, group: Group) -> list[np.ndarray]:
    """|gamma| of the group's BatchNormalization layers (network slimming).  When the exporter
    folded BN into the conv (PyTorch's default export), gamma lives in the conv filters and the
    L1 norm of those filters is used instead."""
    dims = group.dims_with_role(BN_SCALE)
    if not dims:
        return l1(dg, group)
    return [_per_channel(group, d, np.abs(dg.index.const(d.tensor).astype(np.float64))) for d in dims]


def _producer_affine(dg: DepGraph, dim, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bias, scale, shift) of the `n` channels a producing weight makes: its layer's bias (folded
    BatchNorm exports carry gamma and beta there) and the per-channel affine of a node that
    alone consumes the layer's output (an unfolded BatchNormalization); identity otherwise."""
    index = dg.index
    ctx = NodeContext(index, dim.use)
    view = ctx.rule.linear_view(ctx)
    bias = np.zeros(n)
    output = ctx.output(0)
    if view is not None and _channels_of(index, view) == n:  # the weight axis makes the layer's channels
        bias = view.bias.vector(n) if view.bias is not None else bias
        output = view.output
    scale, shift = np.ones(n), np.zeros(n)
    users = index.consumers.get(output, [])
    if len(users) == 1:
        user = NodeContext(index, users[0][0])
        affine = user.rule.channel_affine(user)
        if affine is not None and affine[0].shape == (n,):
            scale, shift = affine
    return bias, scale, shift


def _channels_of(index, view) -> int | None:
    """The size of the channel axis of a LinearView's output, when known."""
    shape = index.shape(view.output) or ()
    size = shape[view.channel_axis] if shape else None
    return size if isinstance(size, int) else None


def scaled(dg: DepGraph, group: Group) -> list[np.ndarray]:
    """What a channel can put into the layers that read it, from the weights alone: the producing
    filter's L2 norm times the per-channel scale that follows it, combined with the channel's
    constant part (bias, folded or BatchNorm shift) as sqrt((s |w|)^2 + (s b + t)^2), times the L2
    norm of the consuming weights on the channel.  The filter norm alone (l1, l2) misses both
    the scale after the filter and the bias, and on folded-BatchNorm exports with large biases
    ranks worse than random; this ranks by the channel's effect at its consumers (input scale
    assumed even across channels)."""
    return _scaled_scores(group, _producer_parts(dg, group), _consumer_norms(dg, group))


def _squares(value: np.ndarray, axis: int) -> np.ndarray:
    """The float64 sum of squares over every axis but `axis` (as the criteria compute it)."""
    value = value.astype(np.float64)
    return (np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1) ** 2).sum(axis=1)


def _squares_fast(value: np.ndarray, axis: int) -> np.ndarray:
    """`_squares` to within rounding (about 1e-6 relative on float32), three times faster and
    without a copy of the weight: einsum reads it in place, in its own type (float32 for any
    other, so float16 cannot overflow).  For checks that compare rankings and means
    (structure_warning), not for scores."""
    value = value if value.dtype in (np.float32, np.float64) else value.astype(np.float32)
    letters = "abcdefghijklmnopqrstuvwxyz"[:value.ndim]
    return np.einsum(f"{letters},{letters}->{letters[axis]}", value, value).astype(np.float64)


def _consumer_norms(dg: DepGraph, group: Group, squares=_squares) -> np.ndarray:
    """Per channel, the L2 norm of the consuming weights on it (ones when nothing consumes it)."""
    consumer = np.zeros(group.n_channels)
    for dim in group.dims_with_role(IN):
        consumer += _per_channel(group, dim, squares(dg.index.const(dim.tensor), dim.axis))
    return np.sqrt(consumer) if group.dims_with_role(IN) else np.ones(group.n_channels)


ProducerPart = tuple[Dim, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""(dim, filter L2 norms, bias, scale, shift) of one producing weight of a group."""


def _producer_parts(dg: DepGraph, group: Group, squares=_squares) -> list[ProducerPart]:
    parts = []
    for dim in group.dims_with_role(OUT):
        norms = np.sqrt(squares(dg.index.const(dim.tensor), dim.axis))
        parts.append((dim, norms, *_producer_affine(dg, dim, len(norms))))
    return parts


def _scaled_scores(group: Group, parts: list[ProducerPart], consumer: np.ndarray) -> list[np.ndarray]:
    return [_per_channel(group, dim, np.hypot(scale * norms, scale * bias + shift)) * consumer
            for dim, norms, bias, scale, shift in parts]


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)


def structure_warning(dg: DepGraph, threshold: float = 0.3, known: dict[str, dict[int, np.ndarray]] | None = None,
                      measured: Criterion | None = None) -> str | None:
    """A warning when filter norms misjudge this model: in at least a quarter of the prunable
    groups the channels' constant parts (folded biases, BatchNorm shifts) outweigh their filters,
    or in at least half of them the l1 ranking correlates below `threshold` (Spearman) with the
    scale-aware one, or, given `measured` (the channels' mean |activation| on the inputs
    verification runs the original on, ChannelTally), the l1 ranking correlates below `threshold`
    (median over the groups) with it.  The last check is the one that sees a model like PP-OCRv4 rec,
    where neither the filters nor the biases alone tell what a channel carries (scalar affine
    blocks and activations between the layers): there l1 is uncorrelated with the activations
    (median -0.01) while the activations on synthetic inputs agree with those on real text lines
    (median 0.54); on the shipped digits CNN, where l1 works, the median is 0.42.

    `known` holds scores already computed ("l1" or "scaled" -> group id -> scores, as `plan`
    ranked with): only ranks are compared, which any normalisation keeps, so they are not
    computed again.  Each group's weights are read once here (dead channels, filter norms and
    affines shared by both criteria and the bias test, norms by `_squares_fast`): for ResNet-50
    this check cost five times the l1 scoring it accompanies."""
    known = known or {}
    groups = [g for g in dg.prunable_groups if g.n_channels > 2]
    disagree, bias_heavy = 0, 0
    rhos = []
    for group in groups:
        parts = _producer_parts(dg, group, _squares_fast)
        scores = {name: known[name][group.id] for name in ("l1", "scaled") if group.id in known.get(name, {})}
        dead = next((s == 0 for s in scores.values()), None)  # importance scores dead channels exactly 0
        for name in ("l1", "scaled"):
            if name in scores:
                continue
            raw = l1(dg, group) if name == "l1" else _scaled_scores(group, parts, _consumer_norms(dg, group, _squares_fast))
            dead = dead_channels(dg, group) if dead is None else dead
            scores[name] = _finish(dg, group, CRITERIA[name], raw, "sum", "none", dead)
        a, b = scores["l1"], scores["scaled"]
        if np.std(a) > 0 and np.std(b) > 0 and np.corrcoef(_ranks(a), _ranks(b))[0, 1] < threshold:
            disagree += 1
        if measured is not None:
            carries = _finish(dg, group, measured, measured(dg, group), "sum", "none", a == 0)
            if np.std(a) > 0 and np.std(carries) > 0:
                rhos.append(np.corrcoef(_ranks(a), _ranks(carries))[0, 1])
        if any(np.mean(np.abs(scale * bias + shift)) > np.mean(np.abs(scale) * norms)
               for _, norms, bias, scale, shift in parts):
            bias_heavy += 1
    carried = float(np.median(rhos)) if rhos else None
    if not groups or (bias_heavy < len(groups) / 4 and disagree < len(groups) / 2
                      and (carried is None or carried >= threshold)):
        return None
    run = f", on the verification inputs it correlates {carried:.2f} (median Spearman) with the channels' activations" \
        if carried is not None else ""
    return (f"the filter norms misjudge this model: in {disagree} of {len(groups)} groups the l1 ranking disagrees with "
            f"the scale-aware one, in {bias_heavy} the channels' biases outweigh their filters (folded BatchNorm){run}; "
            "weight criteria may remove channels that carry much: rank with --data CALIB.npz (activation), and use --reconstruct")


def random(dg: DepGraph, group: Group) -> np.ndarray:
    """A baseline: reproducible random scores (seeded by the group id)."""
    return np.random.default_rng(group.id).random(group.n_channels) + 1e-3


class ChannelTally:
    """Per-channel statistics of the activations where each prunable group's channels are consumed
    (consumption_points), accumulated batch by batch: the mean |activation| ("mean"), the
    fraction of non-zero activations ("nonzero", 1 - APoZ, Hu et al. 2016) or the L2 norm over
    every position ("l2", Wanda's ||X||_2).  The names to watch
    are `names`; a run of the model that returns them feeds `add`.  Verification's run of the
    original watches them too (api.check_runs), so that the structure warning needs no run of its own."""

    def __init__(self, dg: DepGraph, statistic: str = "mean"):
        self.points = {g.id: consumption_points(dg, g) for g in dg.prunable_groups}
        self.axes = {d.tensor: d.axis for dims in self.points.values() for d in dims}
        self.names = sorted(self.axes)
        self.statistic = statistic
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: np.ndarray) -> None:
        axis = self.axes[name]
        moved = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
        if self.statistic == "l2":
            stat = (moved.astype(np.float64) ** 2).sum(axis=1)
        else:
            stat = np.abs(moved).sum(axis=1) if self.statistic == "mean" else (moved != 0).sum(axis=1)
        self._sums[name] = self._sums.get(name, 0) + stat
        self._counts[name] = self._counts.get(name, 0) + moved.shape[1]

    def values(self) -> dict[str, np.ndarray]:
        """Watched tensor -> the statistic per channel, over everything added so far."""
        if self.statistic == "l2":
            return {name: np.sqrt(total) for name, total in self._sums.items()}
        return {name: total / self._counts[name] for name, total in self._sums.items()}

    def criterion(self) -> Criterion:
        """The statistics so far as a criterion (weight l1 for a group none of whose points was seen)."""
        means = self.values()

        def criterion(dg_: DepGraph, group: Group) -> list[np.ndarray]:
            return [_per_channel(group, d, means[d.tensor]) for d in self.points.get(group.id, [])
                    if d.axis == self.axes[d.tensor] and d.tensor in means] or l1(dg_, group)

        return criterion


def activation_criterion(dg: DepGraph, feeds: dict[str, np.ndarray], statistic: str = "mean", batch: int = 16) -> Criterion:
    """A data-driven criterion: each channel's ChannelTally statistic where it is consumed,
    measured with onnxruntime on the calibration inputs in one pass for all groups."""
    return _tally(dg, feeds, statistic, batch).criterion()


def _tally(dg: DepGraph, feeds: dict[str, np.ndarray], statistic: str, batch: int) -> ChannelTally:
    """A ChannelTally over one onnxruntime pass of `feeds` (in batches) through the model."""
    from .runtime import batches, make_session, run_chunked, with_outputs

    tally = ChannelTally(dg, statistic)
    model, arrays = with_outputs(dg.index, tally.names)
    session = make_session(model, arrays=arrays)  # the index's weights, read in place
    for chunk in batches(feeds, batch):
        for name, value in zip(tally.names, run_chunked(session, chunk, tally.names)):
            tally.add(name, value)
    return tally


def wanda_criterion(dg: DepGraph, feeds: dict[str, np.ndarray], batch: int = 16) -> Criterion:
    """Wanda (Sun et al. 2024), structured: a channel scores sum |W| x ||X||_2 over the weights
    that consume it, where |W| sums the consuming weight's magnitudes on the channel and ||X||_2
    is the L2 norm of the activation feeding that weight, over every calibration position.  A
    channel read by large weights but always small (or the reverse) scores low, which weight
    norms and activation means alone each miss.  Elements of a head group sum into their head.
    Points where an activation-only computation reads the channel (Q.K^T, a norm's statistics)
    count with ||X||_2 alone; a group without calibration points falls back to l1."""
    tally = _tally(dg, feeds, "l2", batch)
    points, axes_of, norms = tally.points, tally.axes, tally.values()

    def criterion(dg_: DepGraph, group: Group) -> list[np.ndarray]:
        scores = []
        for point in points.get(group.id, []):
            if point.axis != axes_of[point.tensor]:
                continue
            x = norms[point.tensor]
            weights = [w for w in dg_.graph.neighbors(point) if dg_.roles.get(w) == IN]
            for w in weights:
                value = dg_.index.const(w.tensor)
                magnitude = np.abs(np.moveaxis(value, w.axis, 0).reshape(value.shape[w.axis], -1)).sum(axis=1, dtype=np.float64)
                edge = dg_.graph.edges[point, w]["edges"][0]
                if edge.is_identity:
                    scores.append(_per_channel(group, point, magnitude * x))
                    continue
                ia, ib = (edge.a_idx, edge.b_idx) if edge.a == point else (edge.b_idx, edge.a_idx)
                scores.append(_per_channel(group, point, np.bincount(ia, magnitude[ib] * x[ia], minlength=len(x))))
            if not weights:
                scores.append(_per_channel(group, point, x))
        return scores or l1(dg_, group)

    return criterion


CRITERIA: dict[str, Criterion] = {"l1": l1, "l2": l2, "bn": bn_scale, "fpgm": fpgm, "lamp": lamp, "random": random,
                                  "scaled": scaled}
WEIGHT_CRITERIA = ("l1", "l2", "bn", "fpgm", "lamp", "scaled")
"""Criteria that read only the weights: `structure_warning` says when they misjudge a model."""
AGGREGATES = {"sum": np.sum, "mean": np.mean, "max": np.max}


NORMALIZATIONS = ("mean", "max", "none")


def importance(dg: DepGraph, group: Group, criterion: str | Criterion = "l1", aggregate: str = "sum",
               normalize: str = "mean") -> np.ndarray:
    """Scores per channel, aggregated over the group's producing layers; 0 exactly for dead channels.

    `normalize` decides what a global ranking compares: "mean" (default, as Torch-Pruning does)
    divides by the group's mean, so each layer competes on the spread of its own channels and
    layers with many inputs (large norms) are not spared; "max" divides by the largest score;
    "none" compares raw scores, so a layer whose weights are small overall loses more."""
    fn = CRITERIA[criterion] if isinstance(criterion, str) else criterion
    return _finish(dg, group, fn, fn(dg, group), aggregate, normalize)


def _finish(dg: DepGraph, group: Group, fn: Criterion, raw, aggregate: str, normalize: str,
            dead: np.ndarray | None = None) -> np.ndarray:
    """A criterion's raw output as `importance` returns it (aggregated, normalised, dead channels 0)."""
    if isinstance(raw, list):
        raw = AGGREGATES[aggregate](np.stack(raw), axis=0) if raw else np.ones(group.n_channels)
    scores = np.abs(np.asarray(raw, dtype=np.float64))
    if scores.shape != (group.n_channels,):
        raise ValueError(f"importance function returned shape {scores.shape}, expected ({group.n_channels},)")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}")
    if getattr(fn, "normalize", True) and normalize == "mean":
        scores = scores / max(scores.mean(), 1e-300)
    elif getattr(fn, "normalize", True) and normalize == "max":
        scores = scores / max(scores.max(), 1e-300)
    dead = dead_channels(dg, group) if dead is None else dead
    return np.where(dead, 0.0, np.maximum(scores, np.finfo(np.float64).tiny))


@dataclass
class ScoreStats:
    """The distribution of one group's scores, as `--threshold` compares them (so a user can pick T)."""

    group: int
    channels: int
    min: float
    q25: float
    median: float
    q75: float
    max: float
    zeros: int
    """Dead channels (score exactly 0): what `--threshold 0` removes."""

    @classmethod
    def of(cls, group_id: int, scores: np.ndarray) -> "ScoreStats":
        q = np.quantile(scores, [0.0, 0.25, 0.5, 0.75, 1.0]) if len(scores) else np.zeros(5)
        return cls(group_id, len(scores), *(float(v) for v in q), int(np.count_nonzero(scores == 0)))
