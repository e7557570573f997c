"""Linear views of weight layers, for data-aware reconstruction (onnxprune.recovery).

A Conv (grouped and depthwise too), a Gemm or a MatMul with a constant weight computes, per conv
group g, `y = X_g @ W_g + b_g`, where the rows of X_g are the input patches (im2col) or input rows
that produce one output position.  A `LinearView` says how to cut those rows out of an input batch
at sampled output positions, how to read the weight as matrices and write matrices back, and where
the bias lives (or where one can be created), so that recovery.py can fit weights by least
squares without knowing anything about the op.  The rules in conv.py and linear.py build the views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import NodeContext


@dataclass
class BiasSlot:
    """Where the layer's bias is, as (node index, input slot) of a constant, or where one can be
    attached (`value` None).  `scale` is what the stored value is multiplied by in the op (Gemm's
    beta); `shape` the shape to store it in."""

    node: int
    slot: int
    value: np.ndarray | None
    scale: float = 1.0
    shape: tuple[int, ...] | None = None

    def vector(self, n: int) -> np.ndarray:
        """The effective per-output bias (zeros where there is none yet)."""
        if self.value is None:
            return np.zeros(n)
        flat = self.value.astype(np.float64).reshape(-1)
        return np.broadcast_to(flat if flat.size == n else flat[:1], (n,)) * self.scale

    def stored(self, bias: np.ndarray, dtype) -> np.ndarray:
        """The constant to store so the op adds `bias`."""
        shape = self.shape if self.shape is not None else (self.value.shape if self.value is not None else bias.shape)
        return (bias / self.scale).reshape(shape).astype(dtype)


class LinearView:
    """One weight layer read as per-group least-squares problems (see the module docstring)."""

    node: int
    input: str
    """The activation tensor the rows are cut from."""
    output: str
    """The tensor the fit must reproduce: the layer's output including its bias."""
    channel_axis: int
    """The axis of `output` that holds the output channels (negative: from the end)."""
    weight_slot: int
    groups: int
    bias: BiasSlot | None
    """None: the layer has no bias and none can be created; the fit then has no intercept."""
    attachable_bias: bool = False
    """No bias, but one can be added by a new node after the layer (`bias_add_node`): a MatMul
    without a following Add (Llama's projections), whose fit then gets an intercept too."""
    input_axis: int
    """The axis of `input` that holds the input channels (negative: from the end)."""

    def positions(self, y_shape: tuple[int, ...], per_sample: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Indices of sampled output positions (all but the channel axis)."""
        raise NotImplementedError

    def rows(self, x: np.ndarray, pos: tuple[np.ndarray, ...]) -> np.ndarray:
        """(groups, samples, features): the inputs that produce the outputs at `pos`."""
        raise NotImplementedError

    def targets(self, y: np.ndarray, pos: tuple[np.ndarray, ...], channels: np.ndarray | None = None) -> np.ndarray:
        """(groups, samples, outputs per group): the outputs at `pos`, of these output channels
        only when given (the original's output, of which the pruned layer keeps `channels`:
        picked after the positions, from the few sampled values rather than the whole tensor)."""
        raise NotImplementedError

    def matrices(self, weight: np.ndarray) -> np.ndarray:
        """(groups, features, outputs per group) such that y = rows @ matrices + bias."""
        raise NotImplementedError

    def weight_from(self, mats: np.ndarray, like: np.ndarray) -> np.ndarray:
        """The weight constant, in `like`'s layout and dtype, that computes `mats`."""
        raise NotImplementedError

    def feature_channels(self, channels: int) -> np.ndarray:
        """(groups, features): the input channel (index along `input_axis`, of `channels`) that
        each feature of `rows` reads, so a channel's contribution to the output can be told
        apart (ThiNet selection, onnxprune.thinet).  Features of one channel are contiguous."""
        raise NotImplementedError


def _sample(counts: list[int], per_sample: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """`per_sample` positions (without replacement, all when fewer) in a grid of `counts` per batch item."""
    total = int(np.prod(counts)) if counts else 1
    take = min(per_sample, total)
    flat = np.concatenate([rng.choice(total, take, replace=False) for _ in range(batch)]) if take < total \
        else np.tile(np.arange(total), batch)
    n = np.repeat(np.arange(batch), take)
    return (n, *np.unravel_index(flat, counts)) if counts else (n,)


class ConvView(LinearView):
    """A Conv with a constant weight [Cout, Cin/g, k...]: rows are input patches (im2col)."""

    def __init__(self, ctx: NodeContext):
        weight = ctx.const(1)
        self.node, self.input, self.output, self.weight_slot = ctx.i, ctx.input(0), ctx.output(0), 1
        self.channel_axis = self.input_axis = 1
        self.groups = int(ctx.attr("group", 1))
        self.kernel = tuple(int(k) for k in weight.shape[2:])
        r = len(self.kernel)
        self.strides = tuple(ctx.attr("strides", [1] * r))
        self.dilations = tuple(ctx.attr("dilations", [1] * r))
        self.auto_pad = ctx.attr("auto_pad", b"NOTSET")
        self.auto_pad = self.auto_pad.decode() if isinstance(self.auto_pad, bytes) else self.auto_pad
        self.pads = tuple(ctx.attr("pads", [0] * 2 * r))
        self.bias = BiasSlot(ctx.i, 2, ctx.const(2) if ctx.input(2) else None, shape=(weight.shape[0],))

    def _begin_pads(self, in_spatial: tuple[int, ...]) -> list[int]:
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begins = []
            for size, k, s, d in zip(in_spatial, self.kernel, self.strides, self.dilations):
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                begins.append(total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2)
            return begins
        if self.auto_pad == "VALID":
            return [0] * len(self.kernel)
        return list(self.pads[: len(self.kernel)])

    def positions(self, y_shape, per_sample, rng):
        return _sample(list(y_shape[2:]), per_sample, y_shape[0], rng)

    def _taps(self, x_shape: tuple[int, ...], pos: tuple[np.ndarray, ...]) -> np.ndarray:
        """(S, kernel taps): where each tap of each sampled window reads, as a flat index into one
        channel of the batch (N x spatial); a tap in the padding reads index N x spatial, where
        `rows` puts a zero."""
        n, out = pos[0], pos[1:]
        spatial = x_shape[2:]
        begin = self._begin_pads(spatial)
        starts = [o * s - b for o, s, b in zip(out, self.strides, begin)]
        flat = np.empty((len(n), int(np.prod(self.kernel))), dtype=np.int64)
        for t, offset in enumerate(np.ndindex(*self.kernel)):
            coords, valid = [], None
            for start, k, d, size in zip(starts, offset, self.dilations, spatial):
                c = start + k * d
                inside = (c >= 0) & (c < size)
                valid = inside if valid is None else valid & inside
                coords.append(np.clip(c, 0, size - 1))
            flat[:, t] = np.where(valid, np.ravel_multi_index((n, *coords), (x_shape[0], *spatial)), x_shape[0] * int(np.prod(spatial)))
        return flat

    def rows(self, x, pos):
        """im2col at the sampled windows only, by one gather (a padding tap reads a zero instead
        of the batch being padded).  A depthwise conv whose windows read more values than the
        batch holds (5x5 at 64 windows a sample) first lays the batch out channel-major with that
        zero appended, so that each channel's taps come from one row in cache and land in their
        final order (gathering across the channels of NCHW was 2.5-10x slower); otherwise the
        windows are gathered from the batch as it is."""
        taps = self._taps(x.shape, pos)
        s, k = taps.shape
        channels = x.shape[1]
        cells = x.size // channels
        if self.groups == channels and taps.size >= cells:
            major = np.zeros((channels, cells + 1), dtype=x.dtype)
            major[:, :-1] = np.moveaxis(x, 1, 0).reshape(channels, cells)
            gathered = np.take(major, taps.reshape(-1), axis=1).reshape(self.groups, -1, s, k)  # (groups, C/groups, S, taps)
            order = (0, 2, 1, 3)
        else:
            per_sample = cells // x.shape[0]
            inside = np.minimum(taps, cells - 1)
            gathered = x.reshape(x.shape[0], channels, per_sample)[inside // per_sample, :, inside % per_sample]  # (S, taps, C)
            padding = taps == cells
            if padding.any():
                gathered[padding] = 0
            gathered = gathered.reshape(s, k, self.groups, -1)
            order = (2, 0, 3, 1)
        # -> (groups, S, C/groups x taps): the weight's feature order
        return gathered.transpose(order).reshape(self.groups, s, -1)

    def targets(self, y, pos, channels=None):
        values = y[(pos[0], slice(None), *pos[1:])]  # (S, Cout)
        if channels is not None:
            values = values[:, channels]
        return values.reshape(values.shape[0], self.groups, -1).transpose(1, 0, 2)

    def matrices(self, weight):
        per_out = weight.shape[0] // self.groups
        return weight.reshape(self.groups, per_out, -1).transpose(0, 2, 1)

    def weight_from(self, mats, like):
        return mats.transpose(0, 2, 1).reshape(like.shape).astype(like.dtype)

    def feature_channels(self, channels):
        """Patches are channel-major within a conv group: feature f of group g reads channel
        g * channels / groups + f // taps."""
        per_group, taps = channels // self.groups, int(np.prod(self.kernel))
        return np.arange(self.groups)[:, None] * per_group + np.arange(per_group * taps)[None, :] // taps


class DenseView(LinearView):
    """Gemm (transA = 0) or MatMul with a constant 2-D weight: rows are the input's last axis."""

    def __init__(self, ctx: NodeContext, transposed: bool, alpha: float, bias: BiasSlot | None, output: str):
        self.node, self.input, self.output, self.weight_slot = ctx.i, ctx.input(0), output, 1
        self.channel_axis = self.input_axis = -1
        self.groups = 1
        self.transposed, self.alpha, self.bias = transposed, alpha, bias

    def positions(self, y_shape, per_sample, rng):
        lead = list(y_shape[1:-1])
        return _sample(lead, per_sample, y_shape[0], rng)

    def rows(self, x, pos):
        return x[pos][None]

    def targets(self, y, pos, channels=None):
        values = y[pos]
        return (values if channels is None else values[:, channels])[None]

    def matrices(self, weight):
        w = weight.T if self.transposed else weight
        return (w * self.alpha)[None]

    def weight_from(self, mats, like):
        w = mats[0] / self.alpha
        return (w.T if self.transposed else w).astype(like.dtype)

    def feature_channels(self, channels):
        return np.arange(channels)[None, :]


def conv_view(ctx: NodeContext) -> LinearView | None:
    weight = ctx.const(1)
    shape = ctx.in_shape(0)
    if weight is None or weight.ndim < 3 or ctx.input(2) and ctx.const(2) is None or len(ctx.node.output) != 1 \
            or shape is None or len(shape) != weight.ndim:
        return None
    return ConvView(ctx)


def gemm_view(ctx: NodeContext) -> LinearView | None:
    weight = ctx.const(1)
    if weight is None or weight.ndim != 2 or int(ctx.attr("transA", 0)) or ctx.is_const(0):
        return None
    n = weight.shape[0] if int(ctx.attr("transB", 0)) else weight.shape[1]
    bias = None
    beta = float(ctx.attr("beta", 1.0))
    if ctx.input(2):
        c = ctx.const(2)
        if c is None or c.size not in (1, n) or c.size == n and c.shape[-1] != n or beta == 0:
            return None  # a per-row or run-time C: the target is not one linear map plus a bias
        bias = BiasSlot(ctx.i, 2, c, beta, shape=(n,))
    elif ctx.index.opset >= 11 and beta != 0:
        bias = BiasSlot(ctx.i, 2, None, beta, shape=(n,))
    return DenseView(ctx, bool(int(ctx.attr("transB", 0))), float(ctx.attr("alpha", 1.0)), bias, ctx.output(0))


def matmul_view(ctx: NodeContext) -> LinearView | None:
    """MatMul with a constant [K, N] weight; its bias is the constant of a following Add, when the
    MatMul's only consumer is such an Add (tf2onnx's and paddle2onnx's dense layers)."""
    weight = ctx.const(1)
    rank = ctx.in_rank(0)
    if weight is None or weight.ndim != 2 or ctx.is_const(0) or not rank or rank < 2:
        return None
    n = weight.shape[1]
    bias, output = None, ctx.output(0)
    users = ctx.index.consumers.get(output, [])
    if len(users) == 1 and output not in ctx.index.graph_outputs:
        user_i, slot = users[0]
        user = ctx.index.model.graph.node[user_i]
        other = 1 - slot
        if user.op_type == "Add" and user.domain in ("", "ai.onnx") and len(user.input) == 2:
            value = ctx.index.const(user.input[other])
            out_shape = ctx.index.shape(user.output[0])
            if value is not None and value.size == n and value.shape[-1] == n and out_shape is not None \
                    and len(out_shape) == rank:
                bias, output = BiasSlot(user_i, other, value), user.output[0]
    view = DenseView(ctx, False, 1.0, bias, output)
    view.attachable_bias = bias is None and output not in ctx.index.graph_outputs and weight.dtype.kind == "f"
    return view
