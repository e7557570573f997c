"""Stage 3: groups.  A connected component of the dependency graph is a group; its *channels* are
the equivalence classes of elements tied together by the edges' index mappings.  A residual add
keeps one channel per index; a Concat lays its inputs' channels side by side; a flatten ties one
channel to its H*W features; a grouped conv ties a whole conv group into one channel."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .ops import IN, OUT, Coupling, Dim, Edge


KeepMasks = dict[int, np.ndarray]
"""Which channels each group keeps, what crosses from allocation to plan, cost and surgery:
group id -> a bool per channel (True stays); a group that is not listed keeps all its channels."""

Scores = dict[int, np.ndarray]
"""Importance per group: group id -> one score per channel (exactly 0 for a dead channel)."""


@dataclass
class Group:
    id: int
    dims: list[Dim]
    sizes: dict[Dim, int]
    roles: dict[Dim, str]
    blocked: list[str]
    classes: dict[Dim, np.ndarray] = field(default_factory=dict)
    """For every dim, the channel (class) id of each of its elements."""
    n_channels: int = 0

    @property
    def prunable(self) -> bool:
        return not self.blocked and self.n_channels > 1 and any(r == OUT for r in self.roles.values())

    @property
    def has_weights(self) -> bool:
        return any(r in (OUT, IN) for r in self.roles.values())

    def dims_with_role(self, role: str) -> list[Dim]:
        return [d for d in self.dims if self.roles.get(d) == role]

    @property
    def const_dims(self) -> list[Dim]:
        return [d for d in self.dims if d.is_const]

    def kept_elements(self, dim: Dim, keep: np.ndarray) -> np.ndarray:
        """Indices of `dim`'s elements whose channel is kept (`keep` is a bool mask over channels)."""
        return np.nonzero(keep[self.classes[dim]])[0]

    def removable(self) -> np.ndarray:
        """Bool per channel: removing that channel alone leaves at least one element in every dim
        (a dim whose elements all belong to one channel can lose none of it)."""
        ok = np.ones(self.n_channels, dtype=bool)
        for dim in self.dims:
            classes = self.classes[dim]
            if len(classes) and classes.min() == classes.max():
                ok[classes[0]] = False
        return ok

    def min_keep_ok(self, keep: np.ndarray) -> bool:
        """Every dim keeps at least one element (a Concat input cannot become empty)."""
        return all(np.any(keep[self.classes[d]]) for d in self.dims)


def _pairs(edge: Edge, sizes: dict[Dim, int]) -> tuple[np.ndarray, np.ndarray]:
    if edge.is_identity:
        n = sizes[edge.a]
        return np.arange(n), np.arange(n)
    return edge.a_idx, edge.b_idx


def _element_classes(dims: list[Dim], sizes: dict[Dim, int], edges: list[Edge]) -> tuple[dict[Dim, np.ndarray], int]:
    """Union the elements tied by `edges` (min-label propagation with pointer jumping)."""
    first = sizes[dims[0]]
    if all(e.is_identity for e in edges) and all(sizes[d] == first for d in dims):
        labels = np.arange(first)
        return {d: labels for d in dims}, first
    offsets, total = {}, 0
    for d in dims:
        offsets[d] = total
        total += sizes[d]
    left, right = [], []
    for edge in edges:
        ia, ib = _pairs(edge, sizes)
        left.append(offsets[edge.a] + ia)
        right.append(offsets[edge.b] + ib)
    a, b = np.concatenate(left), np.concatenate(right)
    label = np.arange(total)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    _, first_seen, dense = np.unique(label, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_seen))  # number channels in order of first appearance
    dense = order[dense]
    return {d: dense[offsets[d]:offsets[d] + sizes[d]] for d in dims}, len(first_seen)


def _edge_problem(edge: Edge, sizes: dict[Dim, int]) -> str | None:
    sa, sb = sizes.get(edge.a), sizes.get(edge.b)
    if edge.is_identity:
        return None if sa == sb else f"sizes of {edge.a} ({sa}) and {edge.b} ({sb}) disagree"
    if len(edge.a_idx) and (edge.a_idx.max() >= sa or edge.b_idx.max() >= sb):
        return f"index mapping between {edge.a} and {edge.b} is out of range"
    return None


def make_groups(graph: nx.Graph, pins: dict, sizes: dict[Dim, int | None],
                couplings: list[Coupling], unknown_size=lambda dim: f"size of {dim} is not known (dynamic dimension)") -> list[Group]:
    """`pins` maps a dim to its depgraph.Pin; a group's `blocked` reasons list the root causes
    first (Pin.kind order); `unknown_size(dim)` says where an unknown size came from."""
    roles: dict[Dim, str] = {}
    for coupling in couplings:
        roles.update(coupling.roles)
    components = sorted((sorted(c, key=lambda d: graph.nodes[d]["order"]) for c in nx.connected_components(graph)),
                        key=lambda dims: graph.nodes[dims[0]]["order"])
    groups = []
    for dims in components:
        found = sorted({pins[d] for d in dims if d in pins}, key=lambda p: (p.kind, p.reason))
        blocked = list(dict.fromkeys(p.reason for p in found))
        unknown = [d for d in dims if sizes.get(d) is None]
        blocked += [unknown_size(d) for d in unknown[:1]]
        group_roles = {d: roles[d] for d in dims if d in roles}
        if not any(r in (OUT, IN) for r in group_roles.values()) and not blocked:
            blocked.append("no weights produce or consume these channels")
        edges = [e for a, b, data in graph.subgraph(dims).edges(data=True) for e in data["edges"]]
        group = Group(id=len(groups), dims=dims, sizes={d: sizes.get(d) for d in dims}, roles=group_roles, blocked=blocked)
        if not unknown:
            problems = [p for p in (_edge_problem(e, group.sizes) for e in edges) if p]
            if problems:
                group.blocked.append(problems[0])
            else:
                group.classes, group.n_channels = _element_classes(dims, group.sizes, edges)
                if group.n_channels > 1 and not group.blocked and not group.removable().any():
                    group.blocked.append(_why_nothing_removable(group))
        groups.append(group)
    return groups


def _why_nothing_removable(group: Group) -> str:
    tight = next((d for d in group.dims if group.classes[d].min() == group.classes[d].max()), group.dims[0])
    return f"no channel can be removed: every one is all of {tight} (size {group.sizes[tight]}), which must keep one"
