"""ThiNet channel selection (Luo et al. 2017, "ThiNet: A Filter Level Pruning Method"; the greedy
reconstruction-error selection also used by He et al. 2017): a data criterion, `--criterion thinet`.

A channel matters by what it adds to the outputs of the layers that read it, not by its own size:
two large channels that cancel each other in the next layer can both go.  For a consumer layer
(a Conv, Gemm or MatMul with a constant weight, read through its rule's `linear_view`), channel
c's contribution at a sampled output position s and output channel o is
z_c(s, o) = sum_k W[o, c, k] x_c(s, k), and removing a set S changes that layer's output by
sum_{c in S} z_c, a squared error of sum_{i, j in S} G_ij with the Gram matrix
G_ij = sum_{s, o} z_i(s, o) z_j(s, o).  G is all the greedy selection needs, and it is
accumulated batch by batch without ever forming z: with the im2col rows X (as reconstruction
samples them) G is the channel-block sum of (X^T X) * (W W^T), so memory is set by the layers'
widths, not by the number of samples.  A group's G sums those of all its consumers.

The greedy step (ThiNet's): starting from nothing removed, add the channel that increases the
squared error least, until every channel is ordered.  The order becomes scores, so allocation
(uniform ratio, targets, `--round-to`) is unchanged: a channel scores the error, relative to
removing the whole group, of the set removed up to and including it (its running maximum, plus a
rank-sized epsilon, so scores rise strictly along the order and keeping the k best keeps exactly
the channels the greedy removal reaches last).  Scores are therefore comparable across groups
(a global ranking removes first where removing costs least).

Statistics are per calibration sample and over a consumer's whole output (the sampled rows'
sums scaled by output positions / rows), so consumers that sample fewer positions, or have fewer,
weigh as they should when a group sums them.

`centered`: the contributions' mean over the data is subtracted first, i.e. the error left when
the removed channels' mean contribution is folded into the consumer's bias, which is what
`--reconstruct` does (bias compensation); ThiNet's own error is uncentered.

Op knowledge (patches, weight matrices, which feature reads which channel) comes from the op rules
(`linear_view`, onnxprune/ops/reconstruct.py); a consumption point with no such view (an
activation-only computation, a weight that cannot be read as a matrix) counts each channel's own
values as its contribution (orthogonal to the other channels': their energy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .depgraph import DepGraph
from .groups import Group
from .importance import Criterion, consumption_points
from .ops import IN, Dim, NodeContext
from .recovery import positions_per_sample


@dataclass
class ThinetOptions:
    """How the contribution statistics are sampled (as reconstruction samples its rows)."""

    positions: int = 64
    """Output positions sampled per calibration sample and consumer at most."""
    rows_wanted: int = 64
    """Rows per input feature a consumer should see over the data (fewer positions per sample
    for layers with few features, as `ReconstructOptions.rows_wanted`)."""
    centered: bool = False
    """Error after bias compensation (the contributions' mean removed), see the module docstring."""
    max_features: int = 4096
    """Consumers with more features per conv group (a Gemm after a Flatten) keep only the diagonal
    of G (each channel's own contribution energy): the full X^T X would not fit."""
    batch: int = 16
    seed: int = 0


class _Consumer:
    """Running sums for one (consumption point, linear consumer): G over the point's elements,
    and the channels' mean contribution for centering."""

    def __init__(self, view, weight: np.ndarray, channels: int, options: ThinetOptions):
        self.view, self.channels = view, channels
        self.mats = view.matrices(weight.astype(np.float32))  # (groups, features, outputs)
        self.owner = view.feature_channels(channels)  # (groups, features): the channel each feature reads
        local = self.owner[0] - self.owner[0, 0]
        self.starts = np.r_[0, np.flatnonzero(np.diff(local)) + 1]  # each channel's first feature
        self.ids = self.owner[:, self.starts]  # (groups, channels per group)
        self.diagonal = self.mats.shape[1] > options.max_features
        self.gram = np.zeros(channels) if self.diagonal else np.zeros((channels, channels))
        self.sum_z = np.zeros((channels, self.mats.shape[0] * self.mats.shape[2]))
        self.n = 0

    def _fold(self, m: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        """Sum `m` over each channel's features along `axes`."""
        for axis in axes:
            m = np.add.reduceat(m, self.starts, axis=axis)
        return m

    def add(self, x: np.ndarray, y_shape: tuple[int, ...], per_sample: int, rng: np.random.Generator) -> None:
        self.out_positions = int(np.prod(y_shape)) // (y_shape[0] * y_shape[self.view.channel_axis])
        pos = self.view.positions(y_shape, per_sample, rng)
        rows = np.ascontiguousarray(self.view.rows(x, pos), dtype=np.float32)  # (groups, S, features)
        self.n += rows.shape[1]
        groups, _, outputs = self.mats.shape
        mean_part = self._fold(rows.sum(axis=1, dtype=np.float64)[:, :, None] * self.mats, (1,))  # (g, c, o)
        for g in range(groups):
            self.sum_z[self.ids[g], g * outputs:(g + 1) * outputs] += mean_part[g]
        if self.diagonal:
            for g in range(groups):
                for k, (a, b) in enumerate(zip(self.starts, np.r_[self.starts[1:], rows.shape[2]])):
                    z = rows[g, :, a:b] @ self.mats[g, a:b]
                    self.gram[self.ids[g, k]] += np.einsum("so,so->", z, z, dtype=np.float64)
            return
        xx = np.matmul(rows.transpose(0, 2, 1), rows)  # (groups, features, features), float32 BLAS
        xx *= np.matmul(self.mats, self.mats.transpose(0, 2, 1))  # W W^T per batch: memory for one layer at a time
        block = self._fold(xx.astype(np.float64), (1, 2))  # (groups, c, c)
        self.gram[self.ids[:, :, None], self.ids[:, None, :]] += block

    @property
    def scale(self) -> float:
        """From sums over the sampled rows to the mean per calibration sample of sums over the
        whole output (so consumers that sample fewer positions, or have fewer, weigh right)."""
        return self.out_positions / max(self.n, 1)

    def result(self, centered: bool) -> np.ndarray:
        """G over the point's elements (a full matrix; diagonal where only that was kept), per
        calibration sample and whole output."""
        gram = np.diag(self.gram) if self.diagonal else self.gram.copy()
        if centered and self.n:
            mean = self.sum_z / self.n
            gram -= self.n * (np.diag((mean ** 2).sum(axis=1)) if self.diagonal else mean @ mean.T)
        return gram * self.scale


class _Identity:
    """A consumption point without a linear consumer: each element's own values (sum, squares)."""

    def __init__(self, channels: int):
        self.squares, self.sums, self.n, self.samples = np.zeros(channels), np.zeros(channels), 0, 0

    def add(self, x: np.ndarray, axis: int) -> None:
        moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(np.float64)
        self.squares += (moved ** 2).sum(axis=1)
        self.sums += moved.sum(axis=1)
        self.n += moved.shape[1]
        self.samples += x.shape[0] if axis else 1

    def result(self, centered: bool) -> np.ndarray:
        """Per calibration sample, as _Consumer.result."""
        energy = self.squares - (self.sums ** 2 / self.n if centered and self.n else 0)
        return np.diag(energy / max(self.samples, 1))


def greedy_order(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ThiNet's greedy removal on a Gram matrix of contributions: (order, error), where order[t]
    is the channel removed at step t and error[t] = 1^T G_SS 1 for S = order[:t + 1].  Each
    step adds the channel whose removal raises the error least (the lowest index on ties)."""
    n = len(gram)
    cross = np.zeros(n)  # sum over the removed set S of G[i, j], for every j
    removed = np.zeros(n, dtype=bool)
    order, error, total = np.empty(n, dtype=np.int64), np.empty(n), 0.0
    diag = np.diag(gram)
    for t in range(n):
        cost = np.where(removed, np.inf, 2 * cross + diag)
        j = int(np.argmin(cost))
        total += cost[j]
        removed[j] = True
        cross += gram[j]
        order[t], error[t] = j, total
    return order, error


def greedy_scores(gram: np.ndarray) -> np.ndarray:
    """Scores whose ranking is the greedy removal order (see the module docstring): the running
    maximum of the relative error of the removed set, plus a rank-sized epsilon."""
    n = len(gram)
    order, error = greedy_order(gram)
    whole = error[-1] if n and error[-1] > 0 else 1.0
    rising = np.maximum.accumulate(np.maximum(error, 0) / whole) + 1e-9 * np.arange(1, n + 1) / max(n, 1)
    scores = np.empty(n)
    scores[order] = rising
    return scores


def _fold_classes(gram: np.ndarray, classes: np.ndarray, n: int) -> np.ndarray:
    """A Gram matrix over a tensor's elements summed into one over the group's channels (a
    channel's elements go together, so their contributions add)."""
    onehot = np.zeros((len(classes), n))
    onehot[np.arange(len(classes)), classes] = 1
    return onehot.T @ gram @ onehot


def _consumers(dg: DepGraph, point: Dim) -> list:
    """The linear views of the layers that read `point`'s channels as their input features."""
    index = dg.index
    views = []
    rank = len(index.shape(point.tensor) or ())
    for node_i, slot in index.consumers.get(point.tensor, []):
        ctx = NodeContext(index, node_i)
        view = ctx.rule.linear_view(ctx)
        if view is not None and slot == 0 and view.input == point.tensor and rank and view.input_axis % rank == point.axis:
            views.append(view)
    return views


def _collect(dg: DepGraph, feeds: dict[str, np.ndarray], options: ThinetOptions,
             progress: bool) -> tuple[dict[int, list[Dim]], dict[Dim, list]]:
    """Each group's consumption points, and per point the statistics of its consumers, from one
    onnxruntime pass of the original model over `feeds` for all groups."""
    from .runtime import batches, make_session, run_chunked, sample_count, with_outputs

    index = dg.index
    points = {g.id: consumption_points(dg, g) for g in dg.prunable_groups}
    n_samples = sample_count(feeds)
    stats: dict[Dim, list] = {}
    consumed = dg.consumed
    for group in dg.prunable_groups:
        for point in points[group.id]:
            channels = group.sizes[point]
            views = _consumers(dg, point)
            stats[point] = [_Consumer(v, index.const(index.model.graph.node[v.node].input[v.weight_slot]), channels, options)
                            for v in views]
            weights = {w.use for w in dg.graph.neighbors(point) if dg.roles.get(w) == IN}
            if not views or weights - {v.node for v in views} or point in consumed:
                stats[point].append(_Identity(channels))  # read where no linear view sees it
    names = sorted({p.tensor for p in stats} | {c.view.output for cs in stats.values() for c in cs if isinstance(c, _Consumer)})
    model, arrays = with_outputs(index, names)
    session = make_session(model, arrays=arrays)  # the index's weights, read in place
    rng = np.random.default_rng(options.seed)
    for chunk in tqdm(list(batches(feeds, options.batch)), desc="thinet", unit="batch", disable=not progress, leave=False):
        values = dict(zip(names, run_chunked(session, chunk, names)))
        for point, consumers in stats.items():
            x = values[point.tensor]
            for c in consumers:
                if isinstance(c, _Identity):
                    c.add(x, point.axis)
                    continue
                per_sample = positions_per_sample(c.mats.shape[1], n_samples, options.positions, options.rows_wanted)
                c.add(x, values[c.view.output].shape, per_sample, rng)
        del values
    return points, stats


def _group_gram(group: Group, points: list[Dim], stats: dict[Dim, list], centered: bool) -> np.ndarray:
    gram = np.zeros((group.n_channels, group.n_channels))
    for point in points:
        for c in stats[point]:
            gram += _fold_classes(c.result(centered), group.classes[point], group.n_channels)
    return gram


def group_grams(dg: DepGraph, feeds: dict[str, np.ndarray], options: ThinetOptions | None = None,
                progress: bool = False) -> dict[int, np.ndarray]:
    """Per prunable group, the Gram matrix G of its channels' contributions to the layers that
    read them (summed over those layers)."""
    options = options or ThinetOptions()
    points, stats = _collect(dg, feeds, options, progress)
    return {g.id: _group_gram(g, points[g.id], stats, options.centered) for g in dg.prunable_groups}


def thinet_criterion(dg: DepGraph, feeds: dict[str, np.ndarray], options: ThinetOptions | None = None,
                     progress: bool = False) -> Criterion:
    """The ThiNet criterion on calibration inputs `feeds`: the groups' Gram matrices
    (`group_grams`), then each group's greedy order as scores."""
    options = options or ThinetOptions()
    points, stats = _collect(dg, feeds, options, progress)

    def criterion(dg_: DepGraph, group: Group) -> np.ndarray:
        return greedy_scores(_group_gram(group, points[group.id], stats, options.centered))

    criterion.__name__ = "thinet"  # what a plan records, with these options or others
    return criterion
