"""Ops that move channels around without computing: Concat, Split, Slice, Gather, Transpose,
Squeeze/Unsqueeze, Flatten, Reshape, Expand, and the shape ops (Shape, which reads sizes;
Constant, ConstantOfShape, Range, which make values).  They are also the ops shape vectors flow
through, so their rules say how (`shape_entries`)."""

from __future__ import annotations

import math

import numpy as np

from .base import OUT, Coupling, Dim, Edge, NodeContext, OpRule, RewriteContext
from .registry import register
from .values import ConstEntry, DimEntry, Entry, Folds, concat_parts, refine_from_target, rewrite_const_entries


class Mover(OpRule):
    """Moves elements: a zero input element stays a zero output element."""

    zero_mode = "first"


class PassesShape(Mover, Folds):
    """A 0-D/1-D shape vector at input 0 comes out unchanged (Cast, Identity, Squeeze, ...)."""

    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 0

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        shape = ctx.out_shape(0)
        return inputs[0] if inputs and (shape is None or len(shape) <= 1) else None


@register("Transpose")
class TransposeRule(Mover):
    preserves_elements = True

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        rank = ctx.in_rank(0)
        if rank is None:
            return c
        perm = ctx.attr("perm") or list(reversed(range(rank)))
        for k, p in enumerate(perm):
            c.link(ctx.in_dim(0, int(p)), ctx.out_dim(0, k))
        return c


@register("Concat")
class ConcatRule(Folds):
    zero_mode = "cover"

    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return True

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        return None if any(p is None for p in inputs) else [e for p in inputs for e in p]

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        out = ctx.out_shape(0)
        if out is None:
            return c
        axis = int(ctx.attr("axis")) % len(out)
        shapes = [ctx.in_shape(slot) for slot in range(ctx.n_inputs)]
        if any(shape is None or len(shape) != len(out) for shape in shapes):
            return c
        if any(not isinstance(shape[axis], int) for shape in shapes):
            # parts of sizes known only at run time (RoPE's rotate_half halves head_dim with a
            # Slice whose bounds come from Shape): the other axes still pass through
            why = f"{ctx.label} joins parts whose sizes are known only at run time (like the halves of head_dim in RoPE's rotate_half)"
            for slot in range(ctx.n_inputs):
                for k in range(len(out)):
                    if k != axis:
                        c.link(ctx.in_dim(slot, k), ctx.out_dim(0, k))
                c.pin(ctx.in_dim(slot, axis), why)
            c.pin(ctx.out_dim(0, axis), why)
            return c
        offset = 0
        for slot in range(ctx.n_inputs):
            shape = ctx.in_shape(slot)
            for k in range(len(out)):
                if k != axis:
                    c.link(ctx.in_dim(slot, k), ctx.out_dim(0, k))
            size = shape[axis]
            c.link(ctx.in_dim(slot, axis), ctx.out_dim(0, axis), np.arange(size), offset + np.arange(size))
            offset += size
        return c


@register("Split")
class SplitRule(Mover):
    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        shape = ctx.in_shape(0)
        if shape is None:
            return c
        axis = int(ctx.attr("axis", 0)) % len(shape)
        offset = 0
        for slot, name in enumerate(ctx.node.output):
            out = ctx.index.shape(name)
            if out is None or not isinstance(out[axis], int):
                return Coupling()
            for k in range(len(shape)):
                if k != axis:
                    c.link(ctx.in_dim(0, k), ctx.out_dim(slot, k))
            size = out[axis]
            c.link(ctx.in_dim(0, axis), ctx.out_dim(slot, axis), offset + np.arange(size), np.arange(size))
            offset += size
        sizes = {ctx.index.shape(name)[axis] for name in ctx.node.output}
        if ctx.attr("split") is None and not ctx.input(1) and len(sizes) == 1:
            # An equal split (torch.chunk, tf.split(x, n)) stays equal: the origin framework's code
            # divides by n, so pruning keeps the same channels of every part in lockstep.
            for slot in range(1, len(ctx.node.output)):
                c.link(ctx.out_dim(0, axis), ctx.out_dim(slot, axis))
        return c

    def rewrite(self, ctx: RewriteContext) -> None:
        axis = int(ctx.attr("axis", 0)) % ctx.in_rank(0)
        old = [ctx.index.shape(n)[axis] for n in ctx.node.output]
        new = [ctx.new_size(ctx.out_dim(s, axis), o) for s, o in enumerate(old)]
        if new == old:
            return
        sizes = np.array(new, dtype=np.int64)
        if ctx.attr("split") is not None:
            ctx.set_attr("split", new)
        elif ctx.index.opset >= 13:
            ctx.writer.remove_attr(ctx.i, "num_outputs")
            ctx.set_const(1, sizes)
        else:
            ctx.set_attr("split", new)


def _slice_spec(ctx: NodeContext) -> list[tuple[int, int, int, int]] | None:
    """[(axis, start, end, step)] normalised against the input shape, or None if not constant."""
    shape = ctx.in_shape(0)
    if shape is None:
        return None
    if ctx.index.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        values = [ctx.const(s) if ctx.input(s) else None for s in range(1, 5)]
        if values[0] is None or values[1] is None or (ctx.input(3) and values[2] is None) or (ctx.input(4) and values[3] is None):
            return None
        starts, ends = values[0].tolist(), values[1].tolist()
        axes = values[2].tolist() if values[2] is not None else list(range(len(starts)))
        steps = values[3].tolist() if values[3] is not None else [1] * len(starts)
    spec = []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis = int(axis) % len(shape)
        size = shape[axis]
        if not isinstance(size, int):
            spec.append((axis, int(start), int(end), int(step)))
            continue
        start, end, _ = slice(int(start), int(end), int(step)).indices(size)
        spec.append((axis, start, end, int(step)))
    return spec


@register("Slice")
class SliceRule(Mover, Folds):
    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 0

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        spec = _slice_spec(ctx) if inputs and inputs[0] is not None else None
        if spec is None or len(spec) != 1 or spec[0][0] != 0 or spec[0][3] == 0:
            return None
        _, start, end, step = spec[0]
        return inputs[0][slice(start, end, step)]

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        spec = _slice_spec(ctx)
        if spec is None:
            return self._couple_runtime_bounds(ctx)
        sliced = {axis: (start, end, step) for axis, start, end, step in spec}
        for k in range(ctx.in_rank(0)):
            if k not in sliced:
                c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
                continue
            start, end, step = sliced[k]
            size = ctx.in_shape(0)[k]
            if step != 1 or not isinstance(size, int):
                c.pin(ctx.in_dim(0, k), f"{ctx.label} slices with step {step}")
                continue
            n = max(end - start, 0)
            c.link(ctx.in_dim(0, k), ctx.out_dim(0, k), start + np.arange(n), np.arange(n))
        return c

    def refine_shape(self, ctx: NodeContext):
        """Axes a Slice does not slice keep their size (inference gives up when bounds are
        computed at run time)."""
        src, out = ctx.in_shape(0), ctx.out_shape(0)
        sliced = self._sliced_axes(ctx)
        if src is None or sliced is None:
            return None
        out = out if out is not None and len(out) == len(src) else (None,) * len(src)
        refined = tuple(s if k not in sliced and not isinstance(o, int) else o for k, (s, o) in enumerate(zip(src, out)))
        return refined if refined != ctx.out_shape(0) else None

    def _sliced_axes(self, ctx: NodeContext) -> set[int] | None:
        rank = ctx.in_rank(0)
        axes = ctx.const(3) if ctx.index.opset >= 10 and ctx.input(3) else None
        return None if rank is None or axes is None else {int(a) % rank for a in axes.reshape(-1)}

    def _couple_runtime_bounds(self, ctx: NodeContext) -> Coupling:
        """Bounds known only at run time: the sliced axes are pinned; when the `axes` input is
        constant, every other axis passes through whole."""
        c = Coupling()
        rank, sliced = ctx.in_rank(0), self._sliced_axes(ctx)
        why = f"{ctx.label} has bounds computed at run time"
        if sliced is None:
            c.pin(ctx.in_dim(0, 1) if rank and rank > 1 else ctx.in_dim(0, 0), why)
            return c
        for k in range(rank):
            if k in sliced:
                c.pin(ctx.in_dim(0, k), why)
            else:
                c.link(ctx.in_dim(0, k), ctx.out_dim(0, k))
        return c

    def rewrite(self, ctx: RewriteContext) -> None:
        spec = _slice_spec(ctx)
        if spec is None:
            return
        starts, ends, changed = [], [], False
        for axis, start, end, _ in spec:
            kept = ctx.kept_of(ctx.in_dim(0, axis))
            if kept is None:
                starts.append(start)
                ends.append(end)
                continue
            changed = True
            starts.append(int(np.count_nonzero(kept < start)))
            ends.append(int(np.count_nonzero(kept < end)))
        if not changed:
            return
        if ctx.index.opset < 10:
            ctx.set_attr("starts", starts)
            ctx.set_attr("ends", ends)
            ctx.set_attr("axes", [a for a, *_ in spec])
        else:
            ctx.set_const(1, np.array(starts, dtype=ctx.const(1).dtype))
            ctx.set_const(2, np.array(ends, dtype=ctx.const(2).dtype))
            if not ctx.input(3):
                ctx.set_const(3, np.array([a for a, *_ in spec], dtype=np.int64))


def _axes_arg(ctx: NodeContext) -> list[int] | None:
    if ctx.attr("axes") is not None:
        return list(ctx.attr("axes"))
    if ctx.n_inputs > 1 and ctx.input(1):
        value = ctx.const(1)
        return None if value is None else value.reshape(-1).tolist()
    return []


def _couple_unit_axes(ctx: NodeContext, rank: int, axes: set[int], squeeze: bool) -> Coupling:
    """Squeeze drops the size-1 `axes` of its input, Unsqueeze inserts them into its output; every
    other axis of the wider side maps to the next axis of the narrower side."""
    c = Coupling()
    narrow = 0
    for k in range(rank):
        wide = ctx.in_dim(0, k) if squeeze else ctx.out_dim(0, k)
        if k in axes:
            c.free(wide)
            continue
        c.link(wide, ctx.out_dim(0, narrow) if squeeze else ctx.in_dim(0, narrow))
        narrow += 1
    return c


@register("Squeeze")
class SqueezeRule(PassesShape):
    preserves_elements = True

    def couple(self, ctx: NodeContext) -> Coupling:
        shape, axes = ctx.in_shape(0), _axes_arg(ctx)
        if shape is None or axes is None:
            return Coupling()
        axes = {a % len(shape) for a in axes} or {k for k, s in enumerate(shape) if s == 1}
        return _couple_unit_axes(ctx, len(shape), axes, squeeze=True)


@register("Unsqueeze")
class UnsqueezeRule(PassesShape):
    preserves_elements = True

    def couple(self, ctx: NodeContext) -> Coupling:
        out, axes = ctx.out_shape(0), _axes_arg(ctx)
        if out is None or axes is None:
            return Coupling()
        return _couple_unit_axes(ctx, len(out), {a % len(out) for a in axes}, squeeze=False)


def _same(a, b) -> bool:
    return a == b and a is not None


def reshape_blocks(src, dst) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape into blocks of source axes and target axes with equal products."""
    blocks, i, j = [], 0, 0
    while i < len(src) and j < len(dst):
        if _same(src[i], dst[j]):
            blocks.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        if not (isinstance(src[i], int) and isinstance(dst[j], int)):
            return None
        ia, jb, pa, pb = [i], [j], src[i], dst[j]
        while pa != pb:
            if pa < pb:
                i += 1
                if i >= len(src) or not isinstance(src[i], int):
                    return None
                ia.append(i)
                pa *= src[i]
            else:
                j += 1
                if j >= len(dst) or not isinstance(dst[j], int):
                    return None
                jb.append(j)
                pb *= dst[j]
        blocks.append((ia, jb))
        i, j = i + 1, j + 1
    if any(s != 1 for s in src[i:]) or any(s != 1 for s in dst[j:]):
        return None
    blocks += [([k], []) for k in range(i, len(src))] + [([], [k]) for k in range(j, len(dst))]
    return blocks


def _factor_edges(whole: Dim, whole_size: int, factors: list[tuple[Dim, int]]) -> list[Edge]:
    """Edges tying each element of a merged axis to its coordinate along each factor axis."""
    edges = []
    stride = whole_size
    elements = np.arange(whole_size)
    for dim, size in factors:
        stride //= size
        if size > 1:
            edges.append(Edge(dim, whole, (elements // stride) % size, elements))
    return edges


def couple_blocks(ctx: NodeContext, blocks, src, dst) -> Coupling:
    c = Coupling()
    for ia, jb in blocks:
        if len(ia) == 1 and len(jb) == 1:
            c.link(ctx.in_dim(0, ia[0]), ctx.out_dim(0, jb[0]))
        elif not ia or not jb:
            c.free(*[ctx.in_dim(0, k) for k in ia] + [ctx.out_dim(0, k) for k in jb])
        elif any(not isinstance(src[k], int) for k in ia) or any(not isinstance(dst[k], int) for k in jb):
            c.pin(ctx.in_dim(0, ia[0]), f"{ctx.label} merges axes of unknown size")
        elif len(jb) == 1 or len(ia) == 1:
            merged = len(jb) == 1
            whole = ctx.out_dim(0, jb[0]) if merged else ctx.in_dim(0, ia[0])
            parts = [(ctx.in_dim(0, k), src[k]) for k in ia] if merged else [(ctx.out_dim(0, k), dst[k]) for k in jb]
            edges = _factor_edges(whole, math.prod(s for _, s in parts), parts)
            c.free(*[d for d, s in parts if s == 1])
            if len(edges) == 1:
                c.edges.extend(edges)
            elif edges:
                c.choose(edges)
        else:
            c.pin(ctx.in_dim(0, ia[0]), f"{ctx.label} regroups several axes into several axes")
    return c


@register("Flatten")
class FlattenRule(Mover):
    preserves_elements = True

    def couple(self, ctx: NodeContext) -> Coupling:
        src = ctx.in_shape(0)
        if src is None:
            return Coupling()
        axis = int(ctx.attr("axis", 1)) % (len(src) + 1)
        blocks = [(list(range(0, axis)), [0]), (list(range(axis, len(src))), [1])]
        dst = ctx.out_shape(0)
        if dst is None or len(dst) != 2:
            return Coupling()
        if not blocks[0][0]:  # axis 0: the first output axis is a new 1
            blocks[0] = ([], [0])
        return couple_blocks(ctx, blocks, src, dst)


def _link_dim_entries(ctx: NodeContext, c: Coupling, entries) -> None:
    """A target-shape element read from another tensor's axis ties that axis to the output axis.
    A size computed from constants at run time (ConstEntry.computed) has no constant surgery could
    rewrite: its output axis is pinned."""
    for pos, entry in enumerate(entries):
        if isinstance(entry, DimEntry):
            tensor_is_const = ctx.index.is_const(entry.tensor)
            source = Dim(entry.tensor, entry.axis, entry.shape_node, 0) if tensor_is_const else Dim(entry.tensor, entry.axis)
            size = ctx.index.shape(entry.tensor)[entry.axis] if ctx.index.shape(entry.tensor) else None
            if entry.factor == 1:
                c.link(source, ctx.out_dim(0, pos))
            elif isinstance(size, int):  # element j of the output axis is element j // factor of the source's
                whole = np.arange(size * entry.factor)
                c.link(source, ctx.out_dim(0, pos), whole // entry.factor, whole)
            else:
                c.pin(ctx.out_dim(0, pos), f"{ctx.label} takes this size as a multiple of a size not known")
        elif isinstance(entry, ConstEntry) and entry.computed and entry.value > 1:
            _unmention(c, ctx.out_dim(0, pos))
            c.pin(ctx.out_dim(0, pos), f"{ctx.label} takes this size from a value computed at run time")


def _unmention(c: Coupling, dim: Dim) -> None:
    """Drop every edge, choice and freedom that mentions `dim` (so that a pin on it holds)."""
    c.edges = [e for e in c.edges if dim not in (e.a, e.b)]
    c.choices = [[e for e in edges if dim not in (e.a, e.b)] for edges in c.choices]
    c.choices = [edges for edges in c.choices if edges]
    c.free_dims.discard(dim)


def _target_sizes(ctx: NodeContext, src, dst, entries, allow_zero: int) -> tuple:
    """The reshape's output sizes, with symbolic sizes named consistently with the input's so that
    a dynamic batch axis lines up (shape inference often invents a fresh name for it)."""
    dst = list(dst)
    for p, entry in enumerate(entries):
        if isinstance(entry, DimEntry):
            shape = ctx.index.shape(entry.tensor)
            if shape is not None:
                dst[p] = entry.scaled(shape[entry.axis])
        elif entry.value > 0:
            dst[p] = entry.value
        elif entry.value == 0 and not allow_zero and p < len(src):
            dst[p] = src[p]
    minus = [p for p, e in enumerate(entries) if isinstance(e, ConstEntry) and e.value == -1]
    if len(minus) == 1 and not isinstance(dst[minus[0]], int):
        # -1 is what is left: symbolic sizes on both sides (a dynamic batch) cancel out, named by
        # the graph input size they are where inference named them apart
        index = ctx.index
        named = [index.dim_name(ctx.input(0), k) if not isinstance(s, int) else s for k, s in enumerate(src)]
        src = [n if n is not None else s for n, s in zip(named, src)]
        for p, entry in enumerate(entries):
            if isinstance(entry, DimEntry) and entry.factor == 1 and not isinstance(dst[p], int):
                dst[p] = index.dim_name(entry.tensor, entry.axis) or dst[p]
        src_rest, dst_rest = list(src), [d for p, d in enumerate(dst) if p != minus[0]]
        for d in [d for d in dst_rest if not isinstance(d, int)]:
            if d is not None and d in src_rest:
                src_rest.remove(d)
                dst_rest.remove(d)
        if all(isinstance(d, int) for d in src_rest + dst_rest) and math.prod(dst_rest) and \
                math.prod(src_rest) % math.prod(dst_rest) == 0:
            dst[minus[0]] = math.prod(src_rest) // math.prod(dst_rest)
    open_src = [s for s in src if not isinstance(s, int)]
    open_dst = [p for p, d in enumerate(dst) if not isinstance(d, int)]
    known = [s for s in src if isinstance(s, int)], [d for d in dst if isinstance(d, int)]
    if len(open_src) == 1 and len(open_dst) == 1 and math.prod(known[0]) == math.prod(known[1]):
        dst[open_dst[0]] = open_src[0]
    return tuple(dst)


@register("Reshape")
class ReshapeRule(PassesShape):
    preserves_elements = True

    def shape_sink(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 1

    def refine_shape(self, ctx: NodeContext):
        """Sizes the target shape gives, `-1` worked out from the input's size included."""
        src, entries = ctx.in_shape(0), ctx.entries(1)
        refined = refine_from_target(ctx, 1) or ctx.out_shape(0)
        if src is None or entries is None or refined is None or len(refined) != len(entries):
            return refined if refined != ctx.out_shape(0) else None
        sized = _target_sizes(ctx, src, refined, entries, int(ctx.attr("allowzero", 0)))
        better = tuple(n if isinstance(n, int) and not isinstance(o, int) else o for o, n in zip(refined, sized))
        return better if better != ctx.out_shape(0) else None

    def couple(self, ctx: NodeContext) -> Coupling:
        src, dst = ctx.in_shape(0), ctx.out_shape(0)
        entries = ctx.entries(1)
        if dst is None and entries is not None:
            dst = (None,) * len(entries)
        if src is None or dst is None or entries is None or len(entries) != len(dst):
            c = Coupling()
            c.pin(ctx.in_dim(0, 1) if src and len(src) > 1 else ctx.in_dim(0, 0),
                  f"{ctx.label} has a target shape onnxprune cannot follow")
            return c
        allow_zero = int(ctx.attr("allowzero", 0))
        dst = _target_sizes(ctx, src, dst, entries, allow_zero)
        if allow_zero and any(isinstance(e, ConstEntry) and e.value == 0 for e in entries):
            return Coupling()
        blocks = reshape_blocks(src, dst)
        if blocks is None:
            from .attention import couple_dynamic_prefix

            c = couple_dynamic_prefix(ctx, src, dst, entries)
            if c is None:
                c = Coupling()
                c.pin(ctx.in_dim(0, 0), f"{ctx.label} reshapes axes of unknown size")
                return c
        else:
            c = couple_blocks(ctx, blocks, src, dst)
        loose = _loose_dim_entries(ctx, entries, dst)
        _link_dim_entries(ctx, c, [None if p in loose else e for p, e in enumerate(entries)])
        return c

    def rewrite(self, ctx: RewriteContext) -> None:
        entries = ctx.entries(1)
        if entries is None:
            return
        rewrite_const_entries(ctx, entries)
        src, out = ctx.in_shape(0), ctx.out_shape(0)
        if src is None or out is None or len(out) != len(entries):
            return
        out = _target_sizes(ctx, src, out, entries, int(ctx.attr("allowzero", 0)))  # what couple saw
        found = concat_parts(ctx.index, ctx.input(1), len(entries))
        for p in _loose_dim_entries(ctx, entries, out):
            entry = entries[p]
            new = ctx.new_size(ctx.out_dim(0, p), out[p])
            if new != ctx.new_size(Dim(entry.tensor, entry.axis), ctx.index.shape(entry.tensor)[entry.axis]):
                producer, parts = found
                ctx.writer.set_input_const(producer, parts[p][0], np.array([new], dtype=np.int64))


def _loose_dim_entries(ctx: NodeContext, entries, dst) -> set[int]:
    """Positions of a Reshape target read from a tensor's axis (`x.reshape(b, n, c)` with `c` the
    residual width, legacy exporter) that need not tie that axis to the output's: both sizes are
    known and the element is a part of its own in a Concat only this Reshape reads, so surgery can
    write the output's new size there as a constant whenever the two sizes come apart (heads
    pruned while the residual stream is not)."""
    found = concat_parts(ctx.index, ctx.input(1), len(entries))
    if found is None or ctx.index.consumers.get(ctx.input(1)) != [(ctx.i, 1)] or dst is None:
        return set()
    producer, parts = found
    widths: dict[int, int] = {}
    for slot, _ in parts:
        widths[slot] = widths.get(slot, 0) + 1
    loose = set()
    for p, entry in enumerate(entries):
        if not isinstance(entry, DimEntry) or entry.factor != 1 or ctx.index.is_const(entry.tensor) or widths[parts[p][0]] != 1:
            continue
        source = ctx.index.shape(entry.tensor)
        if source is not None and isinstance(source[entry.axis], int) and p < len(dst) and isinstance(dst[p], int) \
                and source[entry.axis] > 1:
            loose.add(p)
    return loose


@register("Expand")
class ExpandRule(Mover, Folds):
    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 0

    def shape_sink(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 1

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        """Broadcasting a 1-element shape vector to [1] keeps its value."""
        target = ctx.const(1)
        if not inputs or inputs[0] is None or target is None or target.size > 1 or np.any(target.reshape(-1) != 1):
            return None
        return inputs[0]

    def refine_shape(self, ctx: NodeContext):
        """Sizes the target gives, and the input's size where the target entry is 1 (keep)."""
        refined = refine_from_target(ctx, 1)
        src, entries = ctx.in_shape(0), ctx.entries(1)
        shape = refined or ctx.out_shape(0)
        if src is None or entries is None or shape is None or len(shape) != max(len(src), len(entries)):
            return refined
        shape = list(shape)
        for p in range(len(shape)):
            k, e = p - (len(shape) - len(src)), p - (len(shape) - len(entries))
            if not isinstance(shape[p], int) and k >= 0 and e >= 0 and isinstance(entries[e], ConstEntry) \
                    and entries[e].value == 1 and isinstance(src[k], int):
                shape[p] = src[k]
        better = tuple(shape)
        return better if better != ctx.out_shape(0) else None

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        src, dst = ctx.in_shape(0), ctx.out_shape(0)
        entries = ctx.entries(1)
        if src is None or dst is None or entries is None or len(dst) != max(len(src), len(entries)):
            return c
        shift = len(dst) - len(src)
        entry_shift = len(dst) - len(entries)
        for p in range(len(dst)):
            k = p - shift
            if k >= 0 and not (src[k] == 1 and dst[p] != 1):
                c.link(ctx.in_dim(0, k), ctx.out_dim(0, p))
                continue
            if k >= 0:
                c.free(ctx.in_dim(0, k))
            if p - entry_shift >= 0 and isinstance(entries[p - entry_shift], ConstEntry):
                c.free(ctx.out_dim(0, p))  # a constant size: rewritten if the axis is pruned
        _link_dim_entries(ctx, c, [None] * entry_shift + list(entries))
        return c

    def rewrite(self, ctx: RewriteContext) -> None:
        entries = ctx.entries(1)
        if entries is None:
            return
        src = ctx.in_shape(0)
        shift = len(ctx.out_shape(0)) - len(entries)
        in_shift = len(ctx.out_shape(0)) - len(src)

        def follows_input(pos: int, value: int) -> bool:
            k = pos + shift - in_shift
            return value == 1 and k >= 0 and src[k] != 1

        padded = [None] * shift + list(entries)
        kept_by_input = _follow_input_in_shared_target(ctx, entries, shift, in_shift)
        rewrite_const_entries(ctx, padded, lambda pos, value: follows_input(pos, value) or pos in kept_by_input)


def _follow_input_in_shared_target(ctx: RewriteContext, entries, shift: int, in_shift: int) -> set[int]:
    """Pruned axes of an Expand whose target comes from a Concat that other Expands read too (the
    dynamo exporter shares one GQA target `[batch, kv, rep, N, D]` between layers): where every
    reader's input already has the axis (no broadcast there), the target entry becomes 1 ("keep
    the input's size") in a private copy of that Concat part, right for every reader however it
    is pruned.  Returns the positions so handled."""
    index = ctx.index
    found = concat_parts(index, ctx.input(1), len(entries))
    readers = index.consumers.get(ctx.input(1), [])
    if found is None or len(readers) < 2:
        return set()
    producer, parts = found
    done: set[int] = set()
    for p, entry in enumerate(entries):
        pos = p + shift
        old = ctx.out_shape(0)[pos]
        if not isinstance(entry, ConstEntry) or entry.value <= 1 or ctx.new_size(ctx.out_dim(0, pos), old) == old:
            continue
        if not all(_input_has_axis(index, node_i, slot, pos, len(ctx.out_shape(0))) for node_i, slot in readers):
            continue
        slot, offset = parts[p]
        value = index.const(index.model.graph.node[producer].input[slot])
        if value is None:
            continue
        value = value.copy()
        value.reshape(-1)[offset] = 1
        ctx.writer.set_input_const(producer, slot, value)
        done.add(pos)
    return done


def _input_has_axis(index, node_i: int, slot: int, pos: int, rank: int) -> bool:
    """Expand node `node_i` reads its target at `slot` 1 and its input has a size other than 1 at
    output axis `pos` (so a target entry 1 there keeps that size)."""
    if slot != 1 or index.model.graph.node[node_i].op_type != "Expand":
        return False
    shape = index.shape(index.model.graph.node[node_i].input[0])
    if shape is None:
        return False
    k = pos - (rank - len(shape))
    return k >= 0 and isinstance(shape[k], int) and shape[k] != 1


def _shape_range(ctx: NodeContext, rank: int) -> range:
    """The axes a Shape node reads: [start, end) with negative bounds counted from the end."""
    return range(rank)[slice(ctx.attr("start", 0), ctx.attr("end", rank))]


@register("Shape")
class ShapeRule(OpRule):
    """Reading a shape is fine when the value only feeds target shapes whose entries a rule couples
    (Reshape, Expand); anywhere else a pruned channel count would silently change a computation."""

    def couple(self, ctx: NodeContext) -> Coupling:
        """Only the sizes that reach an escape are pinned: `Shape -> Gather(2)` feeding a pad
        computation reads axis 2, not the channel axis."""
        c = Coupling()
        rank = ctx.in_rank(0)
        if rank is None:
            return c
        read = _shape_range(ctx, rank)
        flows: dict[int, str] = {}
        for escape in ctx.index.values.escapes(ctx.output(0)):
            entries = ctx.index.values.entries(escape.tensor) if escape.tensor else None
            axes = read if entries is None else {e.axis for e in entries if isinstance(e, DimEntry) and e.shape_node == ctx.i}
            for k in axes:
                flows.setdefault(k, escape.where)
        for k in range(rank):
            if k in flows:
                c.pin(ctx.in_dim(0, k), f"{ctx.label} reads this size and it flows into {flows[k]}")
            else:
                c.free(ctx.in_dim(0, k))
        return c

    def reads_elements(self, ctx: NodeContext, slot: int) -> bool:
        return False

    def shape_sink(self, ctx: NodeContext, slot: int) -> bool:
        """The Shape of a shape vector (the legacy exporter's Expand targets) reads only how many
        entries it has, which pruning never changes: no escape."""
        return True

    def fold_inputs(self, ctx: NodeContext):
        return ()

    def sizes_read(self, ctx: NodeContext, slot: int) -> range | None:
        rank = ctx.in_rank(0)
        return None if rank is None else _shape_range(ctx, rank)

    def fold(self, ctx: NodeContext, inputs) -> list[np.ndarray] | None:
        shape = ctx.in_shape(0)
        if shape is None or not all(isinstance(s, int) for s in shape):
            return None
        return [np.array([shape[k] for k in _shape_range(ctx, len(shape))], dtype=np.int64)]

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        rank = ctx.in_rank(0)
        if rank is None:
            return None
        return [DimEntry(ctx.input(0), a, ctx.i) for a in _shape_range(ctx, rank)]


@register("Constant")
class ConstantRule(OpRule):
    """No inputs; consumers see its value as a constant (one dim per axis per use)."""

    constant_source = True

    def fold_inputs(self, ctx: NodeContext):
        return ()

    def fold(self, ctx: NodeContext, inputs) -> list[np.ndarray] | None:
        from onnx import numpy_helper

        attr = ctx.node.attribute[0] if len(ctx.node.attribute) == 1 else None
        if attr is None:
            return None
        if attr.name == "value":
            return [numpy_helper.to_array(attr.t)]
        if attr.name in ("value_float", "value_floats"):
            return [np.array(ctx.attr(attr.name), dtype=np.float32)]
        if attr.name in ("value_int", "value_ints"):
            return [np.array(ctx.attr(attr.name), dtype=np.int64)]
        return None


@register("Range")
class RangeRule(Folds):
    """Make a tensor from scalars: folded when constant, otherwise pinned."""


@register("ConstantOfShape")
class ConstantOfShapeRule(Folds):
    """A filled tensor of a given shape (exporters build zero states and broadcast targets so):
    an output axis whose size is read from another tensor's axis follows it; a constant size is
    rewritten when its axis is pruned."""

    def shape_sink(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 0

    def refine_shape(self, ctx: NodeContext):
        return refine_from_target(ctx, 0)

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        entries, out = ctx.entries(0), ctx.out_shape(0)
        if entries is None or out is None or len(entries) != len(out):
            return c
        c.free(*ctx.in_dims(0))
        for pos, entry in enumerate(entries):
            if isinstance(entry, ConstEntry):
                c.free(ctx.out_dim(0, pos))
        _link_dim_entries(ctx, c, entries)
        return c

    def zero(self, ctx: NodeContext, views, n: int) -> np.ndarray:
        value = ctx.attr("value")
        from onnx import numpy_helper

        filled = 0 if value is None else numpy_helper.to_array(value).reshape(-1)[0]
        return np.full(n, filled == 0)

    def rewrite(self, ctx: RewriteContext) -> None:
        entries = ctx.entries(0)
        if entries is not None:
            rewrite_const_entries(ctx, entries)


@register("Gather")
class GatherRule(Mover, Folds):
    """Gather(data, indices, axis): the axes of `data` other than `axis` pass through; the indices'
    axes take its place.  The gathered axis is pinned (which elements are read depends on the
    indices' values).  An embedding lookup (a constant table gathered by token ids) produces the
    table's other axis as channels, so the table's columns are the producing weight."""

    def passes_shape_value(self, ctx: NodeContext, slot: int) -> bool:
        return slot == 0

    def shape_entries(self, ctx: NodeContext, inputs) -> list[Entry] | None:
        where = ctx.const(1)
        if not inputs or inputs[0] is None or where is None:
            return None
        try:
            return [inputs[0][int(i)] for i in where.reshape(-1)]
        except IndexError:
            return None

    def couple(self, ctx: NodeContext) -> Coupling:
        c = Coupling()
        data, indices, out = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
        if data is None or indices is None or out is None or len(out) != len(data) + len(indices) - 1:
            return c
        axis = int(ctx.attr("axis", 0)) % len(data)
        for k in range(len(data)):
            if k == axis:
                c.pin(ctx.in_dim(0, k), f"{ctx.label} gathers along this axis")
                continue
            c.link(ctx.in_dim(0, k), ctx.out_dim(0, k if k < axis else k + len(indices) - 1))
            if ctx.is_const(0) and not ctx.is_const(1):
                c.role(ctx.in_dim(0, k), OUT)
        for k in range(len(indices)):
            c.link(ctx.in_dim(1, k), ctx.out_dim(0, axis + k))
        return c


def embedding_rows(index, name: str) -> int | None:
    """How many rows the embedding tables that the integer tensor `name` indexes have (the
    smallest, when it feeds several: token, position, type embeddings), or None when it feeds no
    Gather from a constant table.  Follows the ids through ops that only move elements (Reshape,
    Cast, Unsqueeze, ...), so input synthesis can draw valid token ids below this size."""
    from .registry import rule_for

    sizes, todo, seen = [], [name], set()
    while todo:
        tensor = todo.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node_i, slot in index.consumers.get(tensor, []):
            node = index.model.graph.node[node_i]
            rule = rule_for(node, index.opset)
            if isinstance(rule, GatherRule) and slot == 1 and index.is_const(node.input[0]):
                table = index.shape(node.input[0])
                axis = int(NodeContext(index, node_i).attr("axis", 0))
                if table and isinstance(table[axis], int):
                    sizes.append(table[axis])
            elif rule.preserves_elements and slot == 0:
                todo.extend(o for o in node.output if o)
    return min(sizes) if sizes else None
