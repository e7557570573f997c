"""Stage 5: allocation, deciding how many channels each group loses and which.

Strategies: a threshold on importance; a uniform ratio per group; a global ranking across groups
(importance is normalised per group, see importance.py) with a per-group cap; and cost
targets (`target_macs`, `target_params`: keep that fraction) met by bisection on the ratio.
Every strategy keeps at least one channel in every group and in every layer of a group, and
`round_to` makes kept counts multiples of N where the group is large enough.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .depgraph import DepGraph
from .errors import InputError
from .groups import Group, KeepMasks, Scores
from .ops import OUT, PARAM


@dataclass
class AllocationOptions:
    ratio: float | None = None
    threshold: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    global_ranking: bool = False
    max_ratio: float = 0.9
    round_to: int = 1
    ignore: list[str] = field(default_factory=list)
    protect_ends: bool = False

    def validate(self) -> None:
        chosen = [n for n in ("ratio", "threshold", "target_macs", "target_params") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise InputError(f"options: choose one of --ratio, --threshold, --target-macs, --target-params (got {', '.join(chosen)})")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise InputError(f"options: --ratio {self.ratio} is outside [0, 1)")
        for name in ("target_macs", "target_params"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise InputError(f"options: --{name.replace('_', '-')} {value} is outside (0, 1] (the fraction to keep)")
        if not 0 < self.max_ratio < 1:
            raise InputError(f"options: --max-ratio {self.max_ratio} is outside (0, 1)")
        if self.round_to < 1:
            raise InputError(f"options: --round-to {self.round_to} must be at least 1")
        if self.threshold is not None and self.threshold < 0:
            raise InputError(f"options: --threshold {self.threshold} is negative")
        compile_patterns(self.ignore)


def compile_patterns(patterns: list[str]) -> list[re.Pattern]:
    """`--ignore` regular expressions, or an InputError naming the one that does not compile."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise InputError(f"options: --ignore '{pattern}' is not a valid regular expression ({exc})") from None
    return compiled


def eligible_groups(dg: DepGraph, options: AllocationOptions) -> list[Group]:
    """Prunable groups minus the ignored ones and, if asked, those of the first and last layers."""
    groups = dg.prunable_groups
    patterns = compile_patterns(options.ignore)
    ends: set[int] = set()
    if options.protect_ends:
        weighted = sorted({d.use for g in dg.groups for d in g.const_dims if g.roles.get(d, PARAM).is_weight})
        ends = {weighted[0], weighted[-1]} if weighted else set()
    chosen = []
    for group in groups:
        names = [d.tensor for d in group.const_dims] + [dg.index.model.graph.node[d.use].name for d in group.const_dims]
        if any(p.search(n) for p in patterns for n in names):
            continue
        if ends & {d.use for d in group.const_dims if group.roles.get(d) == OUT}:
            continue
        chosen.append(group)
    return chosen


def _rounded_keep(n: int, n_keep: int, round_to: int) -> int:
    n_keep = max(1, min(n, n_keep))
    if round_to > 1 and n >= round_to:
        n_keep = min(n, max(round_to, int(math.ceil(n_keep / round_to)) * round_to))
    return n_keep


def _keep_top(group: Group, scores: np.ndarray, n_keep: int, round_to: int = 1) -> np.ndarray:
    """Keep the `n_keep` best channels (stable order), then make sure no layer is emptied.  Channels
    kept back for an emptied layer would break `round_to`, so the next best ones fill the count up
    to a multiple of it again (or to the whole group)."""
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(group.n_channels, dtype=bool)
    mask[order[:n_keep]] = True
    for dim in group.dims:  # a Concat input whose channels all lost: keep its best one
        classes = np.unique(group.classes[dim])
        if not mask[classes].any():
            mask[classes[np.argmax(scores[classes])]] = True
    wanted = _rounded_keep(group.n_channels, int(mask.sum()), round_to)
    for channel in order:
        if mask.sum() >= wanted:
            break
        mask[channel] = True
    return mask


def by_threshold(groups: list[Group], scores: Scores, threshold: float, round_to: int) -> KeepMasks:
    keep = {}
    for group in groups:
        s = scores[group.id]
        n_keep = _rounded_keep(group.n_channels, int(np.count_nonzero(s > threshold)), round_to)
        keep[group.id] = _keep_top(group, s, n_keep, round_to)
    return keep


def by_ratio(groups: list[Group], scores: Scores, ratio: float, options: AllocationOptions) -> KeepMasks:
    if not options.global_ranking:
        return {g.id: _keep_top(g, scores[g.id], _rounded_keep(g.n_channels, g.n_channels - int(ratio * g.n_channels), options.round_to), options.round_to)
                for g in groups}
    # Remove the n_remove lowest channels of the global ranking, ties broken by position (stable
    # sort).  Counting every channel at or below the cut score instead removes all channels tied at
    # the cut (APoZ scores are often exactly equal), far more than `ratio` asks for.
    everything = np.concatenate([scores[g.id] for g in groups]) if groups else np.zeros(0)
    n_remove = int(ratio * len(everything))
    owner = np.repeat(np.arange(len(groups)), [g.n_channels for g in groups])
    lowest = np.bincount(owner[np.argsort(everything, kind="stable")[:n_remove]], minlength=len(groups))
    keep = {}
    for i, group in enumerate(groups):
        below = int(lowest[i])
        cap = int(options.max_ratio * group.n_channels)
        removed = min(below, cap, group.n_channels - 1)
        keep[group.id] = _keep_top(group, scores[group.id], _rounded_keep(group.n_channels, group.n_channels - removed, options.round_to), options.round_to)
    return keep


def allocate(dg: DepGraph, scores: Scores, options: AllocationOptions, cost_of) -> KeepMasks:
    """Keep masks per group.  `cost_of(keep) -> ModelCost` prices a candidate for targets."""
    options.validate()
    groups = eligible_groups(dg, options)
    if options.threshold is not None:
        return by_threshold(groups, scores, options.threshold, options.round_to)
    if options.ratio is not None:
        return by_ratio(groups, scores, options.ratio, options)
    target = options.target_macs if options.target_macs is not None else options.target_params
    if target is None:
        raise InputError("options: give one of --ratio, --threshold, --target-macs or --target-params")
    which = "macs" if options.target_macs is not None else "params"
    base = getattr(cost_of({}), which)
    reach = options.max_ratio if options.global_ranking else min(options.max_ratio, 0.999)

    def fraction(r: float) -> float:
        return getattr(cost_of(by_ratio(groups, scores, r, options)), which) / max(base, 1)

    best = fraction(reach)
    if best > target * 1.01:
        name = "MACs" if which == "macs" else "parameters"
        raise InputError(f"options: cannot keep only {target:.1%} of {name}; the least reachable with these options is {best:.1%}")
    low, high = 0.0, reach
    for _ in range(40):
        mid = (low + high) / 2
        if fraction(mid) > target:
            low = mid
        else:
            high = mid
        if abs(fraction(high) - target) <= 0.01 * target:
            break
    keep = by_ratio(groups, scores, high, options)
    return _refill(groups, scores, keep, lambda k: getattr(cost_of(k), which) / max(base, 1), target, options.round_to)


def _refill(groups: list[Group], scores: Scores, keep: KeepMasks, fraction, target: float,
            round_to: int = 1) -> KeepMasks:
    """The ratio steps are coarse on small models: give back the best removed channels, `round_to`
    at a time per group (so kept counts stay multiples of it), while the cost stays under the
    target, until it is within 1% of it."""
    current = fraction(keep)
    chunks = []
    for g in groups:
        removed = np.nonzero(~keep[g.id])[0]
        removed = removed[np.argsort(-scores[g.id][removed], kind="stable")]
        for start in range(0, len(removed), round_to):
            chunk = removed[start:start + round_to]
            chunks.append((float(scores[g.id][chunk[0]]), g.id, chunk))
    chunks.sort(key=lambda item: (-item[0], item[1]))
    for _, gid, chunk in chunks:
        if current >= 0.99 * target:
            break
        if len(chunk) < round_to and np.count_nonzero(~keep[gid]) != len(chunk):
            continue  # a short remainder may only go back when it completes the group
        keep[gid][chunk] = True
        trial = fraction(keep)
        if trial <= target * 1.01:
            current = trial
        else:
            keep[gid][chunk] = False
    return keep
