"""Stage 2: the channel-dependency graph.

Nodes of the networkx graph are dims (one axis of one tensor; constants per use); an edge says the
two dims hold the same channels, with an index mapping.  Each op rule contributes the edges of one
node and pins every dim it touches but does not understand.  Graph inputs and outputs are pinned
too, as are dims of unknown size.  Connected components become `Group`s (see groups.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import onnx
from networkx.utils import UnionFind

from .graph import ModelIndex
from .groups import Group, make_groups
from .ops import Coupling, Dim, Edge, NodeContext, Role, op_label
from .ops.registry import UNKNOWN


@dataclass
class DepGraph:
    index: ModelIndex
    graph: nx.Graph
    couplings: list[Coupling]
    pins: dict[Dim, str]
    groups: list[Group] = field(default_factory=list)

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @cached_property
    def consumed(self) -> set[Dim]:
        """Activation dims read like weights by activation-only computations (Coupling.consumed)."""
        return {d for c in self.couplings for d in c.consumed}

    @cached_property
    def roles(self) -> dict[Dim, Role]:
        return {d: r for g in self.groups for d, r in g.roles.items()}

    def group_of(self, dim: Dim) -> Group | None:
        for group in self.groups:
            if dim in group.sizes:
                return group
        return None


def _touched(ctx: NodeContext) -> list[Dim]:
    dims = []
    for slot in range(ctx.n_inputs):
        if ctx.input(slot):
            dims += ctx.in_dims(slot)
    for slot, name in enumerate(ctx.node.output):
        if name:
            shape = ctx.index.shape(name)
            dims += [Dim(name, a) for a in range(len(shape or ()))]
    for attr in ctx.node.attribute:  # tensors a subgraph reads from outside
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            for name, consumers in ctx.index.consumers.items():
                if (ctx.i, -1) in consumers:
                    dims += [Dim(name, a) for a in range(len(ctx.index.shape(name) or ()))]
    return dims


def _pin_reason(ctx: NodeContext, dim: Dim, coupling: Coupling) -> str:
    if dim in coupling.pinned:
        return coupling.pinned[dim]
    if ctx.rule is UNKNOWN:
        return f"blocked by {op_label(ctx.node)} at node '{ctx.node.name or ctx.node.output[0]}' (no pruning rule for this op)"
    return f"{ctx.label} does not map axis {dim.axis} of '{dim.tensor}'"


def _dim_size(index: ModelIndex, dim: Dim) -> int | None:
    shape = index.shape(dim.tensor)
    if shape is None or dim.axis >= len(shape):
        return None
    size = shape[dim.axis]
    return size if isinstance(size, int) else None


def build_depgraph(index: ModelIndex) -> DepGraph:
    """Run every node's op rule and assemble the dependency graph and its groups."""
    graph = nx.Graph()
    couplings: list[Coupling] = []
    pins: dict[Dim, str] = {}
    for i in range(len(index.model.graph.node)):
        ctx = NodeContext(index, i)
        coupling = ctx.rule.couple(ctx)
        couplings.append(coupling)
        for edge in coupling.edges:
            _add_edge(graph, edge)
        in_choices = {d for edges in coupling.choices for e in edges for d in (e.a, e.b)}
        mentioned = coupling.mentioned() | in_choices
        for dim in _touched(ctx):
            if dim not in mentioned:
                pins.setdefault(dim, _pin_reason(ctx, dim, coupling))
    for name in sorted(index.graph_inputs):
        for axis in range(len(index.shape(name) or ())):
            pins.setdefault(Dim(name, axis), f"graph input '{name}'")
    for name in sorted(index.graph_outputs):
        for axis in range(len(index.shape(name) or ())):
            pins.setdefault(Dim(name, axis), f"graph output '{name}'")
    _resolve_choices(index, graph, couplings, pins)
    depgraph = DepGraph(index=index, graph=graph, couplings=couplings, pins=pins)
    sizes = {dim: _dim_size(index, dim) for dim in graph.nodes}
    depgraph.groups = make_groups(graph, pins, sizes, couplings)
    return depgraph


def _add_edge(graph: nx.Graph, edge: Edge) -> None:
    for dim in (edge.a, edge.b):
        if dim not in graph:
            graph.add_node(dim, order=graph.number_of_nodes())
    if graph.has_edge(edge.a, edge.b):
        graph.edges[edge.a, edge.b]["edges"].append(edge)
    else:
        graph.add_edge(edge.a, edge.b, edges=[edge])


def _resolve_choices(index: ModelIndex, graph: nx.Graph, couplings: list[Coupling], pins: dict[Dim, str]) -> None:
    """A Reshape that merges (or splits) several axes can carry channels of only one of them.
    Keep the factor whose dims are still prunable (the largest, if several), pin the others."""
    if not any(c.choices for c in couplings):
        return
    union = UnionFind()
    for a, b in graph.edges:
        union.union(a, b)
    blocked = {union[d] for d in list(pins) + [d for d in graph.nodes if _dim_size(index, d) is None]}
    preferred = _preferred(union, couplings)
    for i, coupling in enumerate(couplings):
        for edges in coupling.choices:
            whole = edges[0].b
            label = index.node_label(i)
            open_edges = [] if union[whole] in blocked else [e for e in edges if union[e.a] not in blocked]
            roots = {union[d] for d in preferred}
            chosen = max(open_edges, key=lambda e: (union[e.a] in roots, _dim_size(index, e.a) or 0, e.a.axis)) if open_edges else None
            for edge in edges:
                if edge is chosen:
                    _add_edge(graph, edge)
                    union.union(edge.a, edge.b)
                    continue
                pins.setdefault(edge.a, f"{label} merges several axes and follows only one of them")
                blocked.add(union[edge.a])
            if chosen is None:
                pins.setdefault(whole, f"{label} merges axes none of which can be pruned")
                blocked.add(union[whole])
            elif union[chosen.a] in blocked:
                blocked.add(union[whole])


def _preferred(union: UnionFind, couplings: list[Coupling]) -> list[Dim]:
    """Dims whose components a choice should follow: those rules prefer (attention heads, the
    batch axes of activation MatMuls), spread across choices until nothing changes.  A split whose
    factor reaches a preferred dim makes its whole axis preferred; a merge whose whole axis is
    preferred (grouped-query attention's `[kv, rep] -> heads`) prefers its outermost factor, the kv
    group, and with it the reshape that split the kv heads."""
    preferred = [d for c in couplings for d in c.preferred]
    if not preferred:
        return preferred
    changed = True
    while changed:
        changed = False
        roots = {union[d] for d in preferred}
        for coupling in couplings:
            for edges in coupling.choices:
                whole = edges[0].b
                if union[whole] not in roots and any(union[e.a] in roots for e in edges):
                    preferred.append(whole)
                elif union[whole] in roots and not any(union[e.a] in roots for e in edges):
                    preferred.append(edges[0].a)
                else:
                    continue
                roots.add(union[preferred[-1]])
                changed = True
    return preferred
