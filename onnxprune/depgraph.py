"""Stage 2: the channel-dependency graph.

Nodes of the networkx graph are dims (one axis of one tensor; constants per use); an edge says the
two dims hold the same channels, with an index mapping.  Each op rule contributes the edges of one
node and pins every dim it touches but does not understand.  Graph inputs and outputs are pinned
too, as are dims of unknown size.  Connected components become `Group`s (see groups.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property

import networkx as nx
import onnx
from networkx.utils import UnionFind

from .graph import ModelIndex
from .groups import Group, make_groups
from .ops import Coupling, Dim, Edge, NodeContext, Role, op_label
from .ops.registry import UNKNOWN


class PinKind(IntEnum):
    """Why a dim is pinned, in the order `inspect` names them: the root cause of a block first
    (an unknown size, a symptom of an op upstream that shape inference cannot follow, comes after
    all of these, with that op named: depgraph.unknown_size_cause)."""

    NO_RULE = 0        # an op onnxprune has no rule for
    RULE = 1           # a rule that cannot follow this dim (a reduction over it, a run-time bound, ...)
    GRAPH_IO = 2       # a graph input or output (its shape is the model's contract)


@dataclass(frozen=True)
class Pin:
    reason: str
    kind: PinKind


@dataclass
class DepGraph:
    index: ModelIndex
    graph: nx.Graph
    couplings: list[Coupling]
    pins: dict[Dim, Pin]
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


def _pin(ctx: NodeContext, dim: Dim, coupling: Coupling) -> Pin:
    if dim in coupling.pinned:
        return Pin(coupling.pinned[dim], PinKind.RULE)
    if ctx.rule is UNKNOWN:
        return Pin(f"blocked by {op_label(ctx.node)} at node '{ctx.node.name or ctx.node.output[0]}' (no pruning rule for this op)",
                   PinKind.NO_RULE)
    return Pin(f"{ctx.label} does not map axis {dim.axis} of '{dim.tensor}'", PinKind.RULE)


def unknown_size_cause(index: ModelIndex, dim: Dim) -> str:
    """Where a size got lost: the first node upstream whose inputs have known shapes but whose
    output does not (onnx shape inference cannot follow it), or the dynamic graph input."""
    name, seen = dim.tensor, set()
    while name in index.producer and name not in seen:
        seen.add(name)
        node = index.model.graph.node[index.producer[name]]
        unknown = [i for i in node.input if i and (index.shape(i) is None or None in index.shape(i))]
        if not unknown:
            return (f"size of {dim} is not known: shape inference cannot follow {op_label(node)} at node "
                    f"'{node.name or node.output[0]}'")
        name = unknown[0]
    if name in index.graph_inputs:
        return f"size of {dim} is not known (dynamic dimension of graph input '{name}')"
    return f"size of {dim} is not known (dynamic dimension)"


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
    pins: dict[Dim, Pin] = {}
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
                pins.setdefault(dim, _pin(ctx, dim, coupling))
    for name in sorted(index.graph_inputs):
        for axis in range(len(index.shape(name) or ())):
            pins.setdefault(Dim(name, axis), Pin(f"graph input '{name}'", PinKind.GRAPH_IO))
    for name in sorted(index.graph_outputs):
        for axis in range(len(index.shape(name) or ())):
            pins.setdefault(Dim(name, axis), Pin(f"graph output '{name}'", PinKind.GRAPH_IO))
    _resolve_choices(index, graph, couplings, pins)
    depgraph = DepGraph(index=index, graph=graph, couplings=couplings, pins=pins)
    sizes = {dim: _dim_size(index, dim) for dim in graph.nodes}
    depgraph.groups = make_groups(graph, pins, sizes, couplings, lambda d: unknown_size_cause(index, d))
    return depgraph


def _add_edge(graph: nx.Graph, edge: Edge) -> None:
    for dim in (edge.a, edge.b):
        if dim not in graph:
            graph.add_node(dim, order=graph.number_of_nodes())
    if graph.has_edge(edge.a, edge.b):
        graph.edges[edge.a, edge.b]["edges"].append(edge)
    else:
        graph.add_edge(edge.a, edge.b, edges=[edge])


def _resolve_choices(index: ModelIndex, graph: nx.Graph, couplings: list[Coupling], pins: dict[Dim, Pin]) -> None:
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
                pins.setdefault(edge.a, Pin(f"{label} merges several axes and follows only one of them", PinKind.RULE))
                blocked.add(union[edge.a])
            if chosen is None:
                pins.setdefault(whole, Pin(f"{label} merges axes none of which can be pruned", PinKind.RULE))
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
