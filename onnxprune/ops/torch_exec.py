"""A small differentiable executor of ONNX graphs in PyTorch, for distillation (onnxprune.finetune).

Why not onnx2torch: it imports torchvision at load time (a second heavy package pinned to the
torch version; not installable next to torch 2.13 CPU here), and it turns constants into
buffers keyed by its own module names, so the weights of paddle2onnx exports (PP-OCR keeps them in
Constant nodes, not initializers) would not train and could not be written back by name.  Here
every op is a few lines of torch following the ONNX spec, every float constant is a tensor keyed by
its ONNX name, and the caller chooses which ones are trainable.

Only import this module when torch is installed (it is an optional extra).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper
import torch
import torch.nn.functional as F

from .base import NodeContext

TorchOp = Callable[[NodeContext, list], "torch.Tensor | list[torch.Tensor]"]
TORCH_OPS: dict[str, TorchOp] = {}


class UnsupportedOp(Exception):
    """The graph uses an op the executor does not implement (named in the message)."""


def torch_op(*names: str):
    def wrap(fn: TorchOp) -> TorchOp:
        for name in names:
            TORCH_OPS[name] = fn
        return fn
    return wrap


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _pads(ctx: NodeContext, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads [begin..., end...] for the spatial axes, auto_pad resolved."""
    r = len(kernel)
    auto = ctx.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            b = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(total - b)
        return begin + end
    if auto == "VALID":
        return [0] * 2 * r
    return list(ctx.attr("pads", [0] * 2 * r))


def _pad_input(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads as a list for torch, asymmetric ones applied to x first."""
    r = len(pads) // 2
    begin, end = pads[:r], pads[r:]
    if begin == end:
        return x, begin
    torch_pads = []
    for b, e in zip(reversed(begin), reversed(end)):
        torch_pads += [b, e]
    return F.pad(x, torch_pads, value=value), [0] * r


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@torch_op("Conv")
def _conv(ctx, xs):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    r = w.dim() - 2
    kernel = list(w.shape[2:])
    strides, dilations = list(ctx.attr("strides", [1] * r)), list(ctx.attr("dilations", [1] * r))
    x, pads = _pad_input(x, _pads(ctx, x, kernel, strides, dilations))
    return _CONV[r](x, w, b, strides, pads, dilations, int(ctx.attr("group", 1)))


@torch_op("ConvTranspose")
def _conv_transpose(ctx, xs):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    r = w.dim() - 2
    pads = list(ctx.attr("pads", [0] * 2 * r))
    if pads[:r] != pads[r:] or ctx.attr("output_shape") is not None or ctx.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOp(f"{ctx.label}: ConvTranspose with asymmetric pads, output_shape or auto_pad")
    return _CONV_T[r](x, w, b, list(ctx.attr("strides", [1] * r)), pads[:r], list(ctx.attr("output_padding", [0] * r)),
                      int(ctx.attr("group", 1)), list(ctx.attr("dilations", [1] * r)))


@torch_op("Gemm")
def _gemm(ctx, xs):
    a, b = xs[0], xs[1]
    a = a.t() if ctx.attr("transA", 0) else a
    b = b.t() if ctx.attr("transB", 0) else b
    y = float(ctx.attr("alpha", 1.0)) * (a @ b)
    return y + float(ctx.attr("beta", 1.0)) * xs[2] if len(xs) > 2 and xs[2] is not None else y


@torch_op("MatMul")
def _matmul(ctx, xs):
    return torch.matmul(xs[0], xs[1])


def _binary(fn):
    return lambda ctx, xs: fn(xs[0], xs[1])


TORCH_OPS.update({"Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
                  "Pow": _binary(torch.pow), "Equal": _binary(torch.eq), "Less": _binary(torch.lt),
                  "Greater": _binary(torch.gt), "Max": lambda ctx, xs: _reduce_pairs(torch.maximum, xs),
                  "Min": lambda ctx, xs: _reduce_pairs(torch.minimum, xs)})


def _reduce_pairs(fn, xs):
    y = xs[0]
    for x in xs[1:]:
        y = fn(y, x)
    return y


@torch_op("Div")
def _div(ctx, xs):
    a, b = xs
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


_UNARY = {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Sqrt": torch.sqrt, "Exp": torch.exp,
          "Neg": torch.neg, "Erf": torch.erf, "Abs": torch.abs, "Log": torch.log, "Reciprocal": torch.reciprocal,
          "Identity": lambda x: x, "HardSwish": F.hardswish, "Floor": torch.floor, "Ceil": torch.ceil,
          "Softplus": F.softplus, "Not": torch.logical_not}
TORCH_OPS.update({name: (lambda fn: lambda ctx, xs: fn(xs[0]))(fn) for name, fn in _UNARY.items()})


@torch_op("LeakyRelu")
def _leaky(ctx, xs):
    return F.leaky_relu(xs[0], float(ctx.attr("alpha", 0.01)))


@torch_op("HardSigmoid")
def _hard_sigmoid(ctx, xs):
    return torch.clamp(float(ctx.attr("alpha", 0.2)) * xs[0] + float(ctx.attr("beta", 0.5)), 0, 1)


@torch_op("Clip")
def _clip(ctx, xs):
    lo = xs[1] if len(xs) > 1 and xs[1] is not None else ctx.attr("min")
    hi = xs[2] if len(xs) > 2 and xs[2] is not None else ctx.attr("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return torch.clamp(xs[0], lo, hi)


@torch_op("PRelu")
def _prelu(ctx, xs):
    return torch.where(xs[0] >= 0, xs[0], xs[0] * xs[1])


@torch_op("Softmax", "LogSoftmax")
def _softmax(ctx, xs):
    x = xs[0]
    log = ctx.node.op_type == "LogSoftmax"
    fn = torch.log_softmax if log else torch.softmax
    if ctx.index.opset >= 13:
        return fn(x, int(ctx.attr("axis", -1)))
    axis = int(ctx.attr("axis", 1)) % x.dim()  # before opset 13: over the flattened trailing axes
    shape = x.shape
    return fn(x.reshape(int(np.prod(shape[:axis])), -1), 1).reshape(shape)


@torch_op("BatchNormalization")
def _batchnorm(ctx, xs):
    x, gamma, beta, mean, var = xs[:5]
    return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, float(ctx.attr("epsilon", 1e-5)))


@torch_op("GlobalAveragePool")
def _gap(ctx, xs):
    return xs[0].mean(dim=tuple(range(2, xs[0].dim())), keepdim=True)


@torch_op("GlobalMaxPool")
def _gmp(ctx, xs):
    return xs[0].amax(dim=tuple(range(2, xs[0].dim())), keepdim=True)


_POOL = {("AveragePool", 1): F.avg_pool1d, ("AveragePool", 2): F.avg_pool2d, ("MaxPool", 1): F.max_pool1d,
         ("MaxPool", 2): F.max_pool2d}


@torch_op("AveragePool", "MaxPool")
def _pool(ctx, xs):
    x = xs[0]
    kernel = list(ctx.attr("kernel_shape"))
    r = len(kernel)
    strides = list(ctx.attr("strides", [1] * r))
    dilations = list(ctx.attr("dilations", [1] * r))
    if len(ctx.node.output) > 1 and ctx.node.output[1] or any(d != 1 for d in dilations):
        raise UnsupportedOp(f"{ctx.label}: pooling with indices or dilations")
    is_max = ctx.node.op_type == "MaxPool"
    x, pads = _pad_input(x, _pads(ctx, x, kernel, strides, dilations), float("-inf") if is_max else 0.0)
    fn = _POOL[(ctx.node.op_type, r)]
    if is_max:
        return fn(x, kernel, strides, pads, ceil_mode=bool(ctx.attr("ceil_mode", 0)))
    return fn(x, kernel, strides, pads, ceil_mode=bool(ctx.attr("ceil_mode", 0)),
              count_include_pad=bool(ctx.attr("count_include_pad", 0)))


def _axes(ctx, xs, slot: int = 1) -> list[int] | None:
    if len(xs) > slot and xs[slot] is not None:
        return _ints(xs[slot])
    axes = ctx.attr("axes")
    return list(axes) if axes is not None else None


@torch_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(ctx, xs):
    x = xs[0]
    axes = _axes(ctx, xs) if ctx.node.op_type == "ReduceSum" or ctx.index.opset >= 18 else ctx.attr("axes")
    axes = tuple(range(x.dim())) if not axes else tuple(int(a) for a in axes)
    keep = bool(ctx.attr("keepdims", 1))
    op = ctx.node.op_type
    if op == "ReduceMean":
        return x.mean(dim=axes, keepdim=keep)
    if op == "ReduceSum":
        return x.sum(dim=axes, keepdim=keep)
    return x.amax(dim=axes, keepdim=keep) if op == "ReduceMax" else x.amin(dim=axes, keepdim=keep)


@torch_op("Transpose")
def _transpose(ctx, xs):
    perm = ctx.attr("perm")
    return xs[0].permute(*perm) if perm is not None else xs[0].permute(*reversed(range(xs[0].dim())))


@torch_op("Concat")
def _concat(ctx, xs):
    return torch.cat([x for x in xs if x is not None], dim=int(ctx.attr("axis")))


@torch_op("Squeeze")
def _squeeze(ctx, xs):
    axes = _axes(ctx, xs)
    if axes is None:
        return xs[0].squeeze()
    y = xs[0]
    for a in sorted((a % y.dim() for a in axes), reverse=True):
        y = y.squeeze(a)
    return y


@torch_op("Unsqueeze")
def _unsqueeze(ctx, xs):
    y = xs[0]
    rank = y.dim() + len(_axes(ctx, xs))
    for a in sorted(a % rank for a in _axes(ctx, xs)):
        y = y.unsqueeze(a)
    return y


@torch_op("Reshape")
def _reshape(ctx, xs):
    x, shape = xs[0], _ints(xs[1])
    if not int(ctx.attr("allowzero", 0)):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@torch_op("Flatten")
def _flatten(ctx, xs):
    axis = int(ctx.attr("axis", 1)) % max(xs[0].dim(), 1)
    return xs[0].reshape(int(np.prod(xs[0].shape[:axis])), -1)


@torch_op("Shape")
def _shape(ctx, xs):
    shape = list(xs[0].shape)
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return torch.tensor(shape[start:end], dtype=torch.int64)


_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
           onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.FLOAT16: torch.float16}


@torch_op("Cast")
def _cast(ctx, xs):
    return xs[0].to(_DTYPES[int(ctx.attr("to"))])


@torch_op("Slice")
def _slice(ctx, xs):
    x = xs[0]
    starts, ends = _ints(xs[1]), _ints(xs[2])
    axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
    steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise UnsupportedOp(f"{ctx.label}: Slice with a negative step")
        size = x.shape[a]
        s = max(min(s + size if s < 0 else s, size), 0)
        e = max(min(e + size if e < 0 else e, size), 0)
        index[a % x.dim()] = slice(s, e, st)
    return x[tuple(index)]


@torch_op("Pad")
def _pad(ctx, xs):
    """Constant padding (what the exact LayerNorm rewrite writes); other modes are refused."""
    if ctx.attr("mode", "constant") not in ("constant", b"constant") or (len(xs) > 3 and xs[3] is not None):
        raise UnsupportedOp(f"{ctx.label}: Pad other than constant padding of every axis")
    x, pads = xs[0], _ints(xs[1])
    value = float(xs[2].reshape(-1)[0]) if len(xs) > 2 and xs[2] is not None and xs[2].numel() else 0.0
    r = x.dim()
    if any(p < 0 for p in pads):
        raise UnsupportedOp(f"{ctx.label}: Pad with negative pads")
    flat = [p for axis in reversed(range(r)) for p in (pads[axis], pads[axis + r])]  # torch: last axis first
    return torch.nn.functional.pad(x, flat, value=value)


@torch_op("LayerNormalization")
def _layer_norm(ctx, xs):
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    axis = int(ctx.attr("axis", -1)) % x.dim()
    if len([o for o in ctx.node.output if o]) > 1:
        raise UnsupportedOp(f"{ctx.label}: LayerNormalization with its Mean/InvStdDev outputs")
    return torch.nn.functional.layer_norm(x, tuple(x.shape[axis:]), scale.expand(x.shape[axis:]),
                                          None if bias is None else bias.expand(x.shape[axis:]),
                                          float(ctx.attr("epsilon", 1e-5)))


@torch_op("Gather")
def _gather(ctx, xs):
    x, idx = xs
    axis = int(ctx.attr("axis", 0)) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return x.index_select(axis, idx.reshape(-1)).reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


@torch_op("Resize")
def _resize(ctx, xs):
    x = xs[0]
    mode = ctx.attr("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    sizes = xs[3] if len(xs) > 3 and xs[3] is not None and xs[3].numel() else None
    scales = xs[2] if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
    kwargs = {"size": _ints(sizes)[2:]} if sizes is not None else {"scale_factor": [float(s) for s in scales.tolist()[2:]]}
    if mode == "nearest":
        return F.interpolate(x, mode="nearest", **kwargs)
    coord = ctx.attr("coordinate_transformation_mode", b"half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    return F.interpolate(x, mode="bilinear" if x.dim() == 4 else "linear", align_corners=coord == "align_corners", **kwargs)



@torch_op("Split")
def _split(ctx, xs):
    x = xs[0]
    axis = int(ctx.attr("axis", 0)) % x.dim()
    sizes = _ints(xs[1]) if len(xs) > 1 and xs[1] is not None else ctx.attr("split")
    if sizes is None:  # equal parts, the last one smaller (opset 18 num_outputs) when they do not divide
        parts = len(ctx.node.output)
        sizes = [-(-x.shape[axis] // parts)] * (parts - 1)
        sizes.append(x.shape[axis] - sum(sizes))
    return list(torch.split(x, [int(s) for s in sizes], dim=axis))


@torch_op("Expand")
def _expand(ctx, xs):
    x = xs[0]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(xs[1]))))


@torch_op("ConstantOfShape")
def _constant_of_shape(ctx, xs):
    value = ctx.attr("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    return torch.full(_ints(xs[0]), fill[0].item(), dtype=torch.from_numpy(fill).dtype)


@torch_op("Range")
def _range(ctx, xs):
    start, limit, delta = (x.item() for x in xs)
    return torch.arange(start, limit, delta, dtype=xs[0].dtype)


def float_constants(model: onnx.ModelProto, index) -> dict[str, np.ndarray]:
    """Every float constant of the graph (initializers and Constant-node values) by name."""
    values = {}
    for name in list(index.initializers) + list(index.constant_nodes):
        value = index.const(name)
        if value is not None and np.issubdtype(value.dtype, np.floating):
            values[name] = value
    return values


class GraphModule(torch.nn.Module):
    """The ONNX graph as a torch module; `trainable` float constants become parameters."""

    def __init__(self, model: onnx.ModelProto, index, trainable: set[str]):
        super().__init__()
        self.model, self.index = model, index
        self.names = sorted(trainable)
        self.params = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(np.array(index.const(n), dtype=np.float32)))
                                              for n in self.names])
        self.fixed = {}
        for name in list(index.initializers) + list(index.constant_nodes):
            if name not in trainable:
                value = index.const(name)
                if value is not None:
                    self.fixed[name] = torch.from_numpy(np.array(value))
        self.nodes = []
        for i, node in enumerate(model.graph.node):
            if node.output and node.output[0] in index.constant_nodes:
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in TORCH_OPS:
                raise UnsupportedOp(f"{index.node_label(i)}: op {node.domain + '.' if node.domain else ''}{node.op_type} "
                                    "has no torch implementation in onnxprune.ops.torch_exec")
            self.nodes.append((NodeContext(index, i), TORCH_OPS[node.op_type]))
        self.outputs = [vi.name for vi in model.graph.output]
        self.extra: list[str] = []
        """Intermediate tensors returned after the outputs (feature distillation)."""

    def forward(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        values = dict(self.fixed)
        values.update(zip(self.names, self.params))
        values.update(inputs)
        for ctx, fn in self.nodes:
            args = [values[n] if n else None for n in ctx.node.input]
            out = fn(ctx, args)
            outs = out if isinstance(out, (list, tuple)) else [out]
            values.update((name, v) for name, v in zip(ctx.node.output, outs) if name)
        return [values[n] for n in self.outputs + self.extra]

    def trained(self) -> dict[str, np.ndarray]:
        """The trainable constants' current values, in their ONNX dtype."""
        return {n: p.detach().numpy().astype(self.index.const(n).dtype) for n, p in zip(self.names, self.params)}

