"""Depth pruning: find the residual blocks of a graph, rank them on data, remove whole ones.

A *residual block* is a residual sum `y = x + f(x)` (an op whose rule reports `residual_pairs`)
whose branch f is a subgraph that exists only to compute it: every value f computes is consumed
inside f or by the sum, none is a graph output, and f reads x (the shortcut forks into the
branch).  Removing f then leaves y = x exactly: the sum's consumers read x, and f's nodes and
weights go.  Transformer layers have two such blocks (attention, MLP); a ResNet block with an
identity shortcut is one.  A block whose shortcut itself computes something (a downsampling conv)
cannot be removed: without its branch the output would not be the block's input.

Blocks are ranked by ShortGPT's block influence (Men et al. 2024): 1 - cos(x, y) between the
block's input and output, per token / spatial position along the channel axis, averaged over
positions and samples.  A block that hardly turns its input is the one to drop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import ModelIndex, _outer_names, with_data
from .ops import OUT, Dim, NodeContext, op_label, rule_for
from .ops.build import identity_node
from .origin import layer_name, scope_chain


@dataclass(frozen=True)
class Block:
    """One removable residual block `output = shortcut + f(shortcut)`."""

    id: int
    add: str
    """The residual sum's node name (its first output's name when unnamed)."""
    shortcut: str
    branch: str
    """The tensor f(x) the sum reads."""
    output: str
    nodes: tuple[str, ...]
    """The nodes computing f, in graph order."""
    module: str | None
    """The origin-framework layer that computes exactly f (as the exporter spells its scope:
    `blocks.0.attn`, legacy `blocks/blocks.0/attn`), None when no single layer does."""
    modules: tuple[str, ...]
    """Every outermost layer inside the branch (`blocks.0.norm1`, `blocks.0.attn`): what the
    hand-back replaces, so that no layer of the removed branch is left to see the pruned widths."""
    origin: str | None
    """The layer the sum belongs to, for tables (`blocks.0`)."""
    macs: int
    params: int


@dataclass(frozen=True)
class NotRemovable:
    """A sum that looks like a residual block but cannot be removed, and why (for `inspect`)."""

    add: str
    origin: str | None
    reason: str


@dataclass
class BlockSearch:
    blocks: list[Block] = field(default_factory=list)
    refused: list[NotRemovable] = field(default_factory=list)


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def exclusive_producers(index: ModelIndex, tensor: str, stop: str | None) -> set[int]:
    """The nodes that exist only to compute `tensor`: its producer and, transitively, every node
    all of whose outputs are consumed by those nodes alone (and none is a graph output).  The walk
    does not go past `stop` (the shortcut).  Each node is checked again whenever another of its
    consumers joins, so the result is the largest such set."""
    first = index.producer.get(tensor)
    if first is None:
        return set()
    nodes = index.model.graph.node
    members, todo = {first}, [first]
    while todo:
        for name in nodes[todo.pop()].input:
            producer = index.producer.get(name) if name and name != stop else None
            if producer is None or producer in members:
                continue
            outputs = [o for o in nodes[producer].output if o]
            if any(o in index.graph_outputs or any(c not in members for c, _ in index.consumers.get(o, []))
                   for o in outputs):
                continue
            members.add(producer)
            todo.append(producer)
    return members


def _reads(index: ModelIndex, members: set[int], tensor: str) -> bool:
    return any(c in members for c, _ in index.consumers.get(tensor, []))


def _inside(layers: Mapping[str, list[int]], members: set[int], later: set[int], scope: str) -> bool:
    """Every node of layer `scope` (`layers`: scope -> its nodes) is a branch node, or one that does
    not depend on the shortcut (`later`: the nodes that do): an attention mask or rotary table the
    exporter computed once for every layer and named after the first."""
    return all(i in members or i not in later for i in layers[scope])


def _branch_module(chains: list[list[str]], layers: Mapping[str, list[int]], members: set[int], add: int, later: set[int],
                   last: list[str]) -> str | None:
    """The outermost layer around the branch's last node (`last`: its scope chain), not around the
    sum, that computes the branch alone: the layer whose output is f(x) (`blocks.0.attn`, a ResNet
    block's `body`)."""
    around_sum = set(chains[add])
    return next((scope for scope in last if scope not in around_sum and _inside(layers, members, later, scope)), None)


def _branch_modules(chains: list[list[str]], layers: Mapping[str, list[int]], members: set[int], add: int,
                    later: set[int]) -> tuple[str, ...]:
    """The outermost layers that compute nothing but branch values, in graph order."""
    around_sum = set(chains[add])
    found: list[str] = []
    for k in sorted(members):
        for scope in chains[k]:
            if scope in around_sum:
                continue
            if scope in found or _inside(layers, members, later, scope):
                if scope not in found:
                    found.append(scope)
                break
    return tuple(found)


def _producer_chain(index: ModelIndex, chains: list[list[str]], members: set[int], add: int) -> list[str]:
    """The scope chain of the branch node the sum reads (its last node)."""
    node = index.model.graph.node[add]
    last = [index.producer[name] for name in node.input if index.producer.get(name) in members]
    return chains[last[0]] if last else []


def _descendants(index: ModelIndex, tensor: str) -> set[int]:
    """The nodes whose values depend on `tensor`."""
    nodes = index.model.graph.node
    found: set[int] = set()
    todo = [c for c, _ in index.consumers.get(tensor, [])]
    while todo:
        k = todo.pop()
        if k in found or k < 0:
            continue
        found.add(k)
        todo.extend(c for o in nodes[k].output if o for c, _ in index.consumers.get(o, []))
    return found


def _cost(members: set[int], index: ModelIndex, costs: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    nodes = index.model.graph.node
    found = [costs.get(_name(nodes[i]), (0, 0)) for i in members]
    return sum(p for p, _ in found), sum(m for _, m in found)


def _boundary(index: ModelIndex, members: set[int]) -> set[str]:
    """The activations a set of nodes reads from outside itself."""
    nodes = index.model.graph.node
    inside = {o for k in members for o in nodes[k].output}
    return {name for k in members for name in nodes[k].input
            if name and name not in inside and not index.is_const(name) and index.const(name) is None}


def same_shape(shortcut, output) -> bool:
    """The shortcut has the sum's shape (no broadcasting), as far as shapes are known: equal sizes,
    or two run-time sizes (shape inference names equal run-time sizes differently, `unk__1` and
    `unk__22`); a run-time size where the sum has a fixed one could broadcast, and is refused."""
    if shortcut is None or output is None or len(shortcut) != len(output):
        return False
    return all(a == b or (not isinstance(a, int) and not isinstance(b, int)) or (isinstance(a, int) and a != 1 and not isinstance(b, int))
               for a, b in zip(shortcut, output))


def find_blocks(index: ModelIndex, costs: Mapping[str, tuple[int, int]]) -> BlockSearch:
    """Every removable residual block of the graph, and the sums that look like one but are not
    removable (with the reason).  `costs`: node name -> (params, MACs), for the blocks' sizes; a
    branch without multiply-accumulates is part of an activation (GELU's `x + 0.044715 x^3`), not
    a layer, and is not a block."""
    nodes = index.model.graph.node
    chains = [scope_chain(n) for n in nodes]
    layers: dict[str, list[int]] = {}
    for k, chain in enumerate(chains):
        for scope in chain:
            layers.setdefault(scope, []).append(k)
    search = BlockSearch()
    for i, node in enumerate(nodes):
        ctx = NodeContext(index, i)
        pairs = rule_for(node, index.opset).residual_pairs(ctx)
        if not pairs or any(index.is_const(name) for name in node.input):
            continue
        y = node.output[0]
        found, reasons = None, []  # reasons: (MACs of the shortcut's own layers, why): the cheaper side is the shortcut
        for s_slot, r_slot in pairs:
            s, r = node.input[s_slot], node.input[r_slot]
            members = exclusive_producers(index, r, s)
            params, macs = _cost(members, index, costs)
            if not members or macs == 0:
                continue
            if not _reads(index, members, s):
                reason = _projection(index, costs, members, s, y)
                if reason:
                    reasons.append(reason)
            elif index.consumers.get(r, []) != [(i, r_slot)] or r in index.graph_outputs:
                reasons.append((0, "the branch's output is also used outside the block"))
            elif any(c < 0 for _, c in index.consumers.get(y, [])):
                reasons.append((0, "its output is read inside a subgraph (control flow)"))
            elif not same_shape(index.shape(s), index.shape(y)):
                reasons.append((0, "the shortcut's shape is not the sum's (broadcast, or unknown)"))
            else:
                later = _descendants(index, s)
                found = Block(len(search.blocks), _name(node), s, r, y, tuple(_name(nodes[k]) for k in sorted(members)),
                              _branch_module(chains, layers, members, i, later, _producer_chain(index, chains, members, i)),
                              _branch_modules(chains, layers, members, i, later), layer_name(node), macs, params)
                break
        if found is not None:
            search.blocks.append(found)
        elif reasons:
            search.refused.append(NotRemovable(_name(node), layer_name(node), min(reasons)[1]))
    return search


def _projection(index: ModelIndex, costs, branch: set[int], s: str, y: str) -> tuple[int, str] | None:
    """Why a sum of two computed paths from one input (a ResNet block with a downsampling
    shortcut) is not removable, or None when the two paths share no input of the sum's shape (not
    a residual block at all: an attention mask added to the scores); the common input must have
    the sum's rank."""
    shortcut = exclusive_producers(index, s, None)
    shortcut_macs = _cost(shortcut, index, costs)[1]
    common = _boundary(index, branch) & _boundary(index, shortcut)
    rank = len(index.shape(y) or ())
    if not shortcut_macs or not any(len(index.shape(t) or ()) == rank for t in common):
        return None
    nodes = index.model.graph.node
    layer = next(nodes[k] for k in sorted(shortcut) if _cost({k}, index, costs)[1])
    return (shortcut_macs, f"the shortcut is not the identity: it passes through {op_label(layer)} "
            f"'{layer_name(layer, index.initializers) or _name(layer)}' (a projection or downsampling), so without "
            "the branch the output would not be the block's input")


def channel_axis(dg, block: Block) -> int | None:
    """The axis of the block's output that the branch's layers produce as channels (the axis whose
    channel group holds the producing weights of a branch node): the vector ShortGPT compares
    per position.  None when no axis is tied to a branch weight (then whole samples are compared)."""
    shape = dg.index.shape(block.output)
    nodes = dg.index.model.graph.node
    inside = set(block.nodes)
    for axis in range(len(shape or ())):
        group = dg.group_of(Dim(block.output, axis))
        if group is not None and any(group.roles.get(d) == OUT and _name(nodes[d.use]) in inside for d in group.const_dims):
            return axis
    return None


def _cosine_sums(x: np.ndarray, y: np.ndarray, axis: int | None) -> tuple[float, int]:
    """Sum over positions of cos(x, y) along `axis` (or over whole samples when None), and the
    number of positions.  Two zero vectors count as equal (cosine 1)."""
    if axis is None:
        a, b = x.reshape(len(x), -1), y.reshape(len(y), -1)
    else:
        a = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        b = np.moveaxis(y, axis, -1).reshape(-1, y.shape[axis])
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 1.0)
    return float(cos.sum()), len(cos)


def block_influence(index: ModelIndex, blocks: list[Block], axes: Mapping[int, int | None],
                    feeds: dict[str, np.ndarray], batch: int = 8) -> dict[int, float]:
    """ShortGPT's block influence of each block on `feeds`: 1 - mean cos(input, output) along its
    channel axis (`axes`: block id -> axis), over all positions and samples, from one onnxruntime
    pass that returns every block's input and output."""
    from .runtime import batches, make_session, run_chunked, with_outputs

    if not blocks:
        return {}
    names = sorted({t for b in blocks for t in (b.shortcut, b.output)})
    model, arrays = with_outputs(index, names)
    session = make_session(model, arrays=arrays)
    sums = {b.id: 0.0 for b in blocks}
    counts = {b.id: 0 for b in blocks}
    for chunk in batches(feeds, batch):
        values = dict(zip(names, run_chunked(session, chunk, names)))
        for b in blocks:
            total, n = _cosine_sums(values[b.shortcut], values[b.output], axes.get(b.id))
            sums[b.id] += total
            counts[b.id] += n
    return {b.id: 1.0 - sums[b.id] / max(counts[b.id], 1) for b in blocks}


def least_influential(blocks: list[Block], influence: Mapping[int, float], n: int) -> list[Block]:
    """The `n` blocks of least influence (ties in graph order), skipping a block nested in the
    branch of one already chosen or holding one (removing the outer one removes the inner)."""
    chosen: list[Block] = []
    for block in sorted(blocks, key=lambda b: (influence[b.id], b.id)):
        if len(chosen) == n:
            break
        if any(block.add in c.nodes or c.add in block.nodes for c in chosen):
            continue
        chosen.append(block)
    return sorted(chosen, key=lambda b: b.id)


def remove_blocks(index: ModelIndex, blocks: list[Block]) -> onnx.ModelProto:
    """A copy of the model without the blocks' branches: each sum's consumers read its shortcut
    (a sum that is a graph output becomes an Identity of it, so the output keeps its name), then
    every node, initializer and value_info nothing uses any more is dropped.  Weights that are
    memory-mapped stubs in the index's model get their data, so the copy is complete."""
    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    graph = model.graph
    sums = {b.add: b for b in blocks}
    redirect = {b.output: b.shortcut for b in blocks if b.output not in index.graph_outputs}

    def source(name: str) -> str:
        while name in redirect:
            name = redirect[name]
        return name

    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        block = sums.get(_name(node))
        if block is not None:
            if block.output in index.graph_outputs:
                kept.append(identity_node(source(block.shortcut), block.output, _name(node)))
            continue
        for k, name in enumerate(node.input):
            node.input[k] = source(name)
        kept.append(node)
    kept = _live(kept, {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    for node in kept:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                used |= _outer_names(sub)
    initializers = [with_data(t, index.external[t.name]) if t.name in index.external else t
                    for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    present = used | {o for node in kept for o in node.output}
    value_info = [vi for vi in graph.value_info if vi.name in present]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    names = {t.name for t in initializers}
    inputs = [vi for vi in graph.input if vi.name in names or vi.name not in index.initializers]
    del graph.input[:]
    graph.input.extend(inputs)
    return model


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes a graph output depends on (subgraph reads count), in their order."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    alive: set[int] = set()
    todo = [producer[o] for o in outputs if o in producer]
    while todo:
        k = todo.pop()
        if k in alive:
            continue
        alive.add(k)
        reads = set(nodes[k].input)
        for attr in nodes[k].attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                reads |= _outer_names(sub)
        todo.extend(producer[name] for name in reads if name in producer)
    return [n for k, n in enumerate(nodes) if k in alive]
