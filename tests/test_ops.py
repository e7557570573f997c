"""One test per op rule, on hand-built graphs (tests/handbuilt.py).

For every builder: (1) the expected groups are prunable, or blocked with the expected reason;
(2) dead channels planted in every prunable group (producing filters, biases and per-channel
constants zeroed) are exactly what `plan(threshold=0)` removes, and the pruned model equals the
planted one at batch 2 and 3 with the same I/O signature; (3) a random 40% prune passes the full
checker and runs with unchanged output shapes; (4) parameters that must be sliced or rewritten
(per-channel constants, PRelu slopes, Split sizes, Slice bounds, Reshape targets, Conv `group`)
are checked value by value against the planted model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handbuilt as hb  # noqa: E402
import onnxprune  # noqa: E402
from onnxprune.ops import IN  # noqa: E402

RTOL = 1e-5


# === helpers (plain onnx/numpy, independent of onnxprune) ====================================

def run(model: onnx.ModelProto, batch: int, seed: int = 1) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed + batch)
    feeds = {}
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [batch if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return session.run(None, feeds)


def io_signature(model: onnx.ModelProto) -> list[tuple[str, str]]:
    inits = {t.name for t in model.graph.initializer}
    return [(vi.name, str(vi.type)) for vi in list(model.graph.input) + list(model.graph.output) if vi.name not in inits]


def value(model: onnx.ModelProto, name: str) -> np.ndarray:
    """An initializer (or Constant node output) by name."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise KeyError(name)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def attr(model: onnx.ModelProto, node_name: str, name: str, default=None):
    for a in node(model, node_name).attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def input_value(model: onnx.ModelProto, node_name: str, slot: int) -> np.ndarray:
    """The constant a node reads at `slot` (surgery may have given it a per-use copy)."""
    return value(model, node(model, node_name).input[slot])


def survivors(before: onnx.ModelProto, after: onnx.ModelProto, name: str, axis: int = 0) -> np.ndarray:
    """Which slices of `name` along `axis` survive, found by matching values (a surviving slice may
    have lost elements along other axes, so it is matched as a subset, in order)."""
    a = np.moveaxis(value(before, name), axis, 0)
    a = a.reshape(a.shape[0], -1)
    b = np.moveaxis(value(after, name), axis, 0)
    b = b.reshape(b.shape[0], -1)
    found, start = [], 0
    for row in b:
        match = next(i for i in range(start, len(a)) if np.isin(row, a[i]).all())
        found.append(match)
        start = match + 1
    return np.array(found, dtype=np.int64)


def assert_close(a: list[np.ndarray], b: list[np.ndarray], exact: bool) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        if exact:
            scale = max(float(np.max(np.abs(x))), 1e-30)
            assert float(np.max(np.abs(x.astype(np.float64) - y))) / scale <= RTOL


# === onnxprune side ==========================================================================

def group_of(m: onnxprune.PrunableModel, tensor: str, axis: int):
    found = [g for g in m.depgraph.groups if any(d.tensor == tensor and d.axis == axis for d in g.dims)]
    assert found, f"no group holds {tensor}[axis {axis}]"
    return found[0]


def with_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers hold `values` (by name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


def plant_dead(model: onnx.ModelProto, only: list[str] | None = None):
    """Zero the channels {1, n-1} (just {1} below 4 channels) of every prunable group: every
    constant of the group except consuming weights (role IN) and divisors.  Returns the planted
    model and {group id: planted channels}."""
    m = onnxprune.PrunableModel(model)
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    planted = {}
    for g in m.groups:
        chans = {1, g.n_channels - 1} if g.n_channels >= 4 else {1}
        planted[g.id] = chans
        for d in g.const_dims:
            use = model.graph.node[d.use]
            if g.roles.get(d) == IN or (use.op_type == "Div" and d.slot == 1) or (only and d.tensor not in only):
                continue
            mask = np.isin(g.classes[d], sorted(chans))
            v = np.moveaxis(values[d.tensor], d.axis, 0)
            v[mask] = 0
    return with_initializers(model, values), planted


@dataclass
class Spec:
    id: str
    build: Callable[[], onnx.ModelProto]
    prunable: list[tuple[str, int]] = field(default_factory=list)
    blocked: list[tuple[str, int, str]] = field(default_factory=list)
    alive: list[str] = field(default_factory=list)
    """Tensors of prunable groups whose planted channels are not dead (a zero-breaking op)."""
    plant_only: list[str] | None = None
    check: Callable[[onnx.ModelProto, onnx.ModelProto], None] | None = None
    """(planted, pruned) -> asserts on sliced parameters after the dead-channel prune."""


# --- per-case checks of sliced parameters ----------------------------------------------------

def _check_layernorm(planted, pruned):
    """The LayerNorm is rewritten with its statistics over the original 8 channels: it normalises
    its input padded back to 8 channels, and the kept ones are sliced out after it."""
    norms = [n for n in pruned.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 1
    pad = next(n for n in pruned.graph.node if n.output[0] == norms[0].input[0])
    assert pad.op_type == "Pad" and value(pruned, pad.input[1])[-1] == 8 - value(pruned, "ln.scale").shape[0] > 0
    assert next(n for n in pruned.graph.node if norms[0].output[0] in n.input).op_type == "Slice"


def _check_tf_flatten(computed: bool, planted, pruned):
    kept = survivors(planted, pruned, "c1.w")
    rows = np.nonzero(np.isin(np.arange(512) % 8, kept))[0]  # NHWC flatten: row r is channel r % C
    cols = survivors(planted, pruned, "fc1.b")
    np.testing.assert_array_equal(value(pruned, "fc1.w"), value(planted, "fc1.w")[rows][:, cols])
    if computed:
        np.testing.assert_array_equal(value(pruned, "flat_rest"), [64 * len(kept)])
    else:
        np.testing.assert_array_equal(value(pruned, "flat_shape"), [-1, 64 * len(kept)])


def _check_mul_add_bn(planted, pruned):
    kept = survivors(planted, pruned, "c1.w")
    for name in ("bn1.mul", "bn1.add"):
        np.testing.assert_array_equal(value(pruned, name), value(planted, name)[:, kept])
        assert value(pruned, name).shape == (1, len(kept), 1, 1)


def _check_rows(pairs):
    """pairs: (producing weight and axis, [(other tensor, axis)]): the producer and each other
    tensor are sliced by the producer's live elements along those axes (a tensor listed under
    several producers is sliced along each of their axes)."""
    def check(planted, pruned):
        axes: dict[str, dict[int, np.ndarray]] = {}
        for (producer, paxis), others in pairs:
            kept = survivors(planted, pruned, producer, paxis)
            for name, axis in [(producer, paxis)] + others:
                axes.setdefault(name, {})[axis] = kept
        for name, by_axis in axes.items():
            expected = value(planted, name)
            for axis, kept in by_axis.items():
                expected = np.take(expected, kept, axis=axis)
            np.testing.assert_array_equal(value(pruned, name), expected, err_msg=name)
    return check


def _check_paddle(planted, pruned):
    _check_rows([(("c1.w", 0), [("c1.add", 1), ("c2.w", 1)]), (("c2.w", 0), [("c2.add", 1), ("fc1.w", 0)]),
                 (("fc1.w", 1), [("fc1.b", 0), ("fc2.w", 0)])])(planted, pruned)
    for scalar, v in (("three", 3), ("six", 6), ("six_div", 6), ("zero", 0)):
        assert value(pruned, scalar).shape == () and value(pruned, scalar) == v


def _check_grouped(planted, pruned):
    kept = survivors(planted, pruned, "cg.w")
    assert attr(pruned, "cg", "group") == len(kept) // 8
    assert value(pruned, "cg.w").shape == (len(kept), 4, 3, 3)
    np.testing.assert_array_equal(value(pruned, "cg.w"), value(planted, "cg.w")[kept])
    np.testing.assert_array_equal(value(pruned, "c1.w"), value(planted, "c1.w")[survivors(planted, pruned, "c1.w")])


def _check_depthwise(planted, pruned):
    kept = survivors(planted, pruned, "c1.w")
    assert attr(pruned, "dw", "group") == len(kept)
    rows = np.sort(np.concatenate([2 * kept, 2 * kept + 1]))
    np.testing.assert_array_equal(value(pruned, "dw.w"), value(planted, "dw.w")[rows])
    np.testing.assert_array_equal(value(pruned, "c3.w"), value(planted, "c3.w")[:, rows])


def _check_convt(group: int, planted, pruned):
    kept_in = survivors(planted, pruned, "c1.w")
    if group == 1:
        kept_out = survivors(planted, pruned, "ct.w", 1)
        np.testing.assert_array_equal(value(pruned, "ct.w"), value(planted, "ct.w")[kept_in][:, kept_out])
        np.testing.assert_array_equal(value(pruned, "c3.w"), value(planted, "c3.w")[:, kept_out])
    else:
        groups_kept = len(kept_in) // 4
        assert attr(pruned, "ct", "group") == groups_kept
        np.testing.assert_array_equal(value(pruned, "ct.w"), value(planted, "ct.w")[kept_in])
        assert value(pruned, "ct.b").shape == (3 * groups_kept,)


def _check_gemm(planted, pruned):
    _check_rows([(("g0.w", 1), [("g0.b", 0), ("g1.w", 0)]), (("g1.w", 1), [("g1.b", 1), ("g2.w", 1)])])(planted, pruned)
    assert value(pruned, "g1.b").shape[0] == 1


def _check_prelu(planted, pruned):
    kept = survivors(planted, pruned, "c1.w")
    np.testing.assert_array_equal(value(pruned, "slope"), value(planted, "slope")[kept])
    assert value(pruned, "slope").shape == (len(kept), 1, 1)


def _check_binary(planted, pruned):
    kept = survivors(planted, pruned, "c1.w")
    np.testing.assert_array_equal(value(pruned, "perchan"), value(planted, "perchan")[kept])
    assert value(pruned, "scalar").shape == () and value(pruned, "scalar") == 2


def _check_split(kind: str, planted, pruned):
    kept = survivors(planted, pruned, "c1.w")
    bounds = {"sizes13": [0, 4, 12], "attr11": [0, 5, 12], "equal11": [0, 6, 12], "num_outputs18": [0, 4, 8, 12], "uneven18": [0, 4, 8, 10]}[kind]
    sizes = [int(np.count_nonzero((kept >= a) & (kept < b))) for a, b in zip(bounds, bounds[1:])]
    if kind in ("attr11", "equal11"):
        assert attr(pruned, "split", "split") == sizes
    else:
        np.testing.assert_array_equal(input_value(pruned, "split", 1), sizes)
        assert attr(pruned, "split", "num_outputs") is None
    for k in range(len(sizes)):
        assert value(pruned, f"b{k}.w").shape[1] == sizes[k]


def _check_slice(kind: str, planted, pruned):
    if kind == "ghost13":
        kept = survivors(planted, pruned, "primary.w")
        positions = np.concatenate([kept, 6 + kept])  # cat([x1, dw(x1)]) keeps both copies of a channel
        np.testing.assert_array_equal(input_value(pruned, "slice", 2), [np.count_nonzero(positions < 10)])
        np.testing.assert_array_equal(input_value(pruned, "slice", 1), [0])
        assert value(pruned, "c2.w").shape[1] == np.count_nonzero(positions < 10)
        return
    kept = survivors(planted, pruned, "c1.w")
    start, end = {"attr9": (2, 9), "negative": (8, 12)}[kind]
    new = [int(np.count_nonzero(kept < start)), int(np.count_nonzero(kept < end))]
    if kind == "attr9":
        assert [attr(pruned, "slice", "starts")[0], attr(pruned, "slice", "ends")[0]] == new
    else:
        assert [int(input_value(pruned, "slice", 1)[0]), int(input_value(pruned, "slice", 2)[0])] == new
    inside = kept[(kept >= start) & (kept < end)] - start
    c2 = value(planted, "c2.w")[:, inside]
    np.testing.assert_array_equal(value(pruned, "c2.w"), c2)


def _check_shuffle(groups: int, planted, pruned):
    """The rule may follow either factor of the first Reshape (the g axis or the C/g axis)."""
    kept = survivors(planted, pruned, "c1.w")
    g, per = value(pruned, "shape5")[1:3]
    assert g * per == len(kept) and (g == groups or per == 8 // groups)
    np.testing.assert_array_equal(value(pruned, "shape5"), [-1, g, per, 8, 8])
    np.testing.assert_array_equal(value(pruned, "shape4"), [-1, len(kept), 8, 8])
    # whole orbits go: conv channel c is index c % (C/g) of group c // (C/g)
    per0 = 8 // groups
    orbit, size = (kept % per0, groups) if g == groups else (kept // per0, per0)
    assert all(np.count_nonzero(orbit == o) == size for o in set(orbit.tolist()))


def _check_expand(planted, pruned):
    kept = survivors(planted, pruned, "c1.w")
    np.testing.assert_array_equal(value(pruned, "bias_chan"), value(planted, "bias_chan")[kept])
    np.testing.assert_array_equal(value(pruned, "expand_shape"), [1, len(kept), 8, 8])


def _check_resize_sizes(planted, pruned):
    np.testing.assert_array_equal(value(pruned, "sizes_rest"), [len(survivors(planted, pruned, "c1.w")), 16, 16])


def _check_opset7(planted, pruned):
    _check_rows([(("c1.w", 0), [("bn1.scale", 0), ("bn1.bias", 0), ("bn1.mean", 0), ("bn1.var", 0)])])(planted, pruned)
    kept = survivors(planted, pruned, "c2.w")
    cols = np.nonzero(np.isin(np.arange(96) // 16, kept))[0]  # NCHW flatten: channel c owns 16 columns
    np.testing.assert_array_equal(value(pruned, "fc.w"), value(planted, "fc.w")[:, cols])
    declared = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in pruned.graph.input}
    assert declared["c2.w"] == list(value(pruned, "c2.w").shape)  # IR 3 lists initializers as inputs


def _check_flatten_gemm(planted, pruned):
    kept = survivors(planted, pruned, "c1.w")
    cols = np.nonzero(np.isin(np.arange(128) // 16, kept))[0]
    np.testing.assert_array_equal(value(pruned, "fc.w"), value(planted, "fc.w")[:, cols])


# --- the table --------------------------------------------------------------------------------

def _check_recurrent(planted, pruned):
    """hidden_size follows W's rows: gates * hidden_size, and R is square in the hidden size."""
    w, r = input_value(pruned, "rnn", 1), input_value(pruned, "rnn", 2)
    hidden = attr(pruned, "rnn", "hidden_size")
    assert hidden < attr(planted, "rnn", "hidden_size")
    assert w.shape[1] == r.shape[1] == hidden * (w.shape[1] // hidden) and r.shape[2] == hidden


GRAPH_OUT = "graph output"
SPECS: list[Spec] = [
    Spec("tf_flatten_const", partial(hb.tf_flatten, "const"), [("c1.w", 0), ("fc1.w", 1)], [("fc2.w", 1, GRAPH_OUT)],
         check=partial(_check_tf_flatten, False)),
    Spec("tf_flatten_computed", partial(hb.tf_flatten, "computed"), [("c1.w", 0), ("fc1.w", 1)], [("fc2.w", 1, GRAPH_OUT)],
         check=partial(_check_tf_flatten, True)),
    Spec("tf_mul_add_bn", hb.tf_mul_add_bn, [("c1.w", 0)], [("c2.w", 0, GRAPH_OUT)], check=_check_mul_add_bn),
    Spec("tf_reducemean_matmul", hb.tf_reducemean_matmul, [("c1.w", 0)],
         check=_check_rows([(("c1.w", 0), [("fc.w", 0)])])),
    Spec("tf_se_nhwc", hb.tf_se_nhwc, [("c1.w", 0), ("se1.w", 1)],
         check=_check_rows([(("c1.w", 0), [("se1.w", 0), ("se2.w", 1), ("se2.b", 0), ("c2.w", 1)]),
                            (("se1.w", 1), [("se1.b", 0), ("se2.w", 0)])])),
    Spec("paddle_cnn", hb.paddle_cnn, [("c1.w", 0), ("c2.w", 0), ("fc1.w", 1)], check=_check_paddle),
    Spec("grouped_conv", hb.grouped_conv, [("c1.w", 0)], check=_check_grouped),
    Spec("depthwise_mult2", hb.depthwise_mult2, [("c1.w", 0)], check=_check_depthwise),
    Spec("conv_transpose_g1", partial(hb.conv_transpose, 1), [("c1.w", 0), ("ct.w", 1)], check=partial(_check_convt, 1)),
    Spec("conv_transpose_g2", partial(hb.conv_transpose, 2), [("c1.w", 0)], check=partial(_check_convt, 2)),
    Spec("gemm_variants", hb.gemm_variants, [("g0.w", 1), ("g1.w", 1)], [("g2.w", 0, GRAPH_OUT)], check=_check_gemm),
    Spec("batchnorm", hb.batchnorm, [("c1.w", 0)],
         check=_check_rows([(("c1.w", 0), [("bn1.scale", 0), ("bn1.bias", 0), ("bn1.mean", 0), ("bn1.var", 0)])])),
    Spec("instancenorm", hb.instancenorm, [("c1.w", 0)],
         check=_check_rows([(("c1.w", 0), [("in1.scale", 0), ("in1.bias", 0), ("c1.b", 0)])])),
    Spec("layernorm_channel", partial(hb.layernorm, "channel"), [("c1.w", 0), ("ln.scale", 0)], check=_check_layernorm),
    Spec("layernorm_spatial", partial(hb.layernorm, "spatial"), [("c1.w", 0)], alive=["c1.w"]),
    Spec("prelu", hb.prelu, [("c1.w", 0)], check=_check_prelu),
    Spec("sub_reversed", hb.sub_reversed, [("c1.w", 0)], check=_check_rows([(("c1.w", 0), [("perchan", 0)])])),
    Spec("concat3", hb.concat3, [("ca.w", 0)], check=_check_rows([])),
    Spec("flatten_gemm", hb.flatten_gemm, [("c1.w", 0)], check=_check_flatten_gemm),
    Spec("expand_const", hb.expand_const, [("c1.w", 0)], check=_check_expand),
    Spec("identity_dropout_cast", hb.identity_dropout_cast, [("c1.w", 0)]),
    Spec("einsum", hb.einsum, [], [("c1.w", 0, "Einsum"), ("c1.w", 0, "mix_channels")]),
    Spec("custom_domain", hb.custom_domain, [("c2.w", 0)], [("c1.w", 0, "com.microsoft")]),
    Spec("output_mid_block", hb.output_mid_block, [("c2.w", 0)], [("c1.w", 0, "graph output 'mid'")]),
    Spec("shared_initializer", hb.shared_initializer, [("ca.w", 0), ("cb.w", 0)]),
    Spec("shared_shape_const", hb.shared_shape_const, [("ca.w", 0), ("cb.w", 0)]),
    Spec("se_block_gate_alive", hb.se_block, [("c1.w", 0), ("se1.w", 0)], plant_only=["c1.w", "c1.b", "se1.w", "se1.b"],
         check=_check_rows([(("c1.w", 0), [("se1.w", 1), ("se2.w", 0), ("se2.b", 0), ("c2.w", 1)]),
                            (("se1.w", 0), [("se1.b", 0), ("se2.w", 1)])])),
    Spec("opset7", hb.opset7, [("c1.w", 0), ("c2.w", 0)], check=_check_opset7),
    Spec("squeeze_unsqueeze_11", partial(hb.squeeze_unsqueeze, 11), [("c1.w", 0), ("fc.w", 0)],
         check=_check_rows([(("c1.w", 0), [("fc.w", 1)]), (("fc.w", 0), [("c2.w", 1)])])),
    Spec("squeeze_unsqueeze_13", partial(hb.squeeze_unsqueeze, 13), [("c1.w", 0), ("fc.w", 0)],
         check=_check_rows([(("c1.w", 0), [("fc.w", 1)]), (("fc.w", 0), [("c2.w", 1)])])),
]
SPECS += [Spec(f"act_{k}", partial(hb.activation, k), [("c1.w", 0)]) for k in hb.ACTIVATIONS]
# x + 2 is not zero where x is: Add and Sub channels are not dead (their slicing is checked by the
# random prune).
SPECS += [Spec(f"binary_{op}", partial(hb.binary_const, op), [("c1.w", 0)], check=_check_binary,
               alive=["c1.w"] if op in ("Add", "Sub") else []) for op in ("Add", "Sub", "Mul", "Div")]
SPECS += [Spec(f"variadic_{op}", partial(hb.variadic, op), [("b0.w", 0), ("b1.w", 0)],
               check=_check_rows([(("b0.w", 0), [("b1.w", 0), ("c2.w", 1)])])) for op in ("Max", "Min", "Sum", "Mean")]
SPECS += [Spec(f"pool_{k}", partial(hb.pool, k), [("c1.w", 0)], check=_check_rows([(("c1.w", 0), [("c2.w", 1)])]))
          for k in hb.POOLS]
SPECS += [Spec(f"resize_{k}", partial(hb.resize, k), [("c1.w", 0)], alive=["c1.w"] if k == "crop_extrapolate" else [],
               check=_check_resize_sizes if k == "sizes_computed" else _check_rows([(("c1.w", 0), [("c2.w", 1)])]))
          for k in hb.RESIZES]
SPECS += [Spec("pad_constant", partial(hb.pad, "constant"), [("c1.w", 0)], check=_check_rows([(("c1.w", 0), [("c2.w", 1)])])),
          Spec("pad_reflect", partial(hb.pad, "reflect"), [("c1.w", 0)], check=_check_rows([(("c1.w", 0), [("c2.w", 1)])])),
          Spec("pad_channel", partial(hb.pad, "channel"), [], [("c1.w", 0, "Pad 'pad'")])]
SPECS += [Spec("softmax_channel", partial(hb.softmax, "channel"), [], [("c1.w", 0, "Softmax 'softmax'")]),
          Spec("softmax_spatial", partial(hb.softmax, "spatial"), [("c1.w", 0)])]
SPECS += [Spec(f"reduce_{op}", partial(hb.reduce_channels, op), [], [("c1.w", 0, f"{op} 'reduce' reduces over")])
          for op in ("ReduceSum", "ReduceMean")]
SPECS += [Spec(f"split_{k}", partial(hb.split, k), [("c1.w", 0)], check=partial(_check_split, k)) for k in hb.SPLITS]
SPECS += [Spec(f"slice_{k}", partial(hb.slice_channels, k), [("primary.w" if k == "ghost13" else "c1.w", 0)],
               check=partial(_check_slice, k)) for k in hb.SLICES if k != "step2"]
SPECS += [Spec("slice_step2", partial(hb.slice_channels, "step2"), [], [("c1.w", 0, "step 2")])]
SPECS += [Spec(f"channel_shuffle_g{g}", partial(hb.channel_shuffle, g), [("c1.w", 0)], check=partial(_check_shuffle, g))
          for g in (2, 4)]
SPECS += [Spec(f"simple_chain_{o}", partial(hb.simple_chain, o), [("c1.w", 0), ("c2.w", 0)],
               check=_check_rows([(("c1.w", 0), [("bn1.scale", 0), ("bn1.var", 0), ("c2.w", 1)]),
                                  (("c2.w", 0), [("c2.b", 0), ("fc.w", 1)])]))
          for o in (11, 13, 17, 21)]

SPECS += [Spec(f"recurrent_{k}", partial(hb.recurrent, k), [("rnn.W", 1), ("fc1.w", 1)], check=_check_recurrent)
          for k in hb.RECURRENT]


def _check_heads(kind: str, planted, pruned):
    """Whole heads go (head_dim 4 stays): one head (GQA: one kv head and its two query heads)."""
    assert value(pruned, "o.w").shape[0] == value(planted, "o.w").shape[0] - (8 if kind == "gqa" else 4)
    if kind == "gqa":
        assert value(pruned, "k.w").shape[1] == value(pruned, "v.w").shape[1] == 4
        assert input_value(pruned, "k_expand", 1).tolist() == [1, 1, 2, 6, 4]
    elif kind == "fused_qkv":
        assert value(pruned, "qkv.w").shape[1] == 12
        assert input_value(pruned, "split_qkv_heads", 1).tolist() == [0, 6, 3, 1, 4]


SPECS += [Spec(f"attention_{k}", partial(hb.attention, k),
               [("qkv.w" if k == "fused_qkv" else "q.w", 1), ("o.w", 0)] + ([("k.w", 1), ("v.w", 1)] if k != "fused_qkv" else []),
               [("o.w", 1, GRAPH_OUT)], check=partial(_check_heads, k))
          for k in hb.ATTENTION]
SPECS += [Spec("crnn_reshape", hb.crnn_reshape, [("c1.w", 0)], check=_check_rows([(("c1.w", 0), [("c1.b", 0)])])),
          Spec("shape_gather_slice", hb.shape_gather_slice, [("c1.w", 0)], check=_check_rows([(("c1.w", 0), [("c2.w", 1)])])),
          Spec("constant_of_shape", hb.constant_of_shape, [("c1.w", 0)], check=_check_rows([(("c1.w", 0), [("c2.w", 1)])])),
          Spec("unit_split", hb.unit_split, [], [("c1.w", 0, "no channel can be removed")])]



def _check_rmsnorm(kind: str, planted, pruned):
    """k = kept/original channels: eps becomes eps / k, and 1/sqrt(k) goes into Div's numerator
    (div) or into the kept weights (reciprocal)."""
    k = value(pruned, "fc2.w").shape[0] / 8
    assert np.isclose(input_value(pruned, "add_eps", 1).reshape(-1)[0], 1e-2 / k)
    if kind == "div":
        assert np.isclose(input_value(pruned, "inverse", 0).reshape(-1)[0], 1 / np.sqrt(k))
    else:
        weights = input_value(pruned, "scaled", 0) * np.sqrt(k)
        assert len(weights) == value(pruned, "fc2.w").shape[0]
        assert all(np.isclose(value(planted, "norm.w"), w).any() for w in weights)


SPECS += [Spec(f"rmsnorm_{k}", partial(hb.rmsnorm, k), [("fc1.w", 1), ("norm.w", 0), ("fc2.w", 0)],
               check=partial(_check_rmsnorm, k)) for k in hb.RMSNORM]

BY_ID = {s.id: s for s in SPECS}
assert len(BY_ID) == len(SPECS)


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {}


def _model(built, spec: Spec) -> onnx.ModelProto:
    if spec.id not in built:
        built[spec.id] = spec.build()
    return built[spec.id]


# === the three generic tests ==================================================================

@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_groups(built, spec: Spec):
    """The expected groups are prunable, or blocked with a reason that says why."""
    m = onnxprune.PrunableModel(_model(built, spec))
    for tensor, axis in spec.prunable:
        g = group_of(m, tensor, axis)
        assert g.prunable, f"{tensor}[{axis}] should be prunable: {g.blocked}"
    for tensor, axis, reason in spec.blocked:
        g = group_of(m, tensor, axis)
        assert not g.prunable, f"{tensor}[{axis}] should be blocked ({reason})"
        assert any(reason in r for r in g.blocked), f"{tensor}[{axis}]: no reason mentions {reason!r}: {g.blocked}"
    inspected = m.inspect()
    assert all(g["prunable"] or g["blocked"] for g in inspected["groups"])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_dead_channels_exact(built, spec: Spec):
    """Planted dead channels are exactly what threshold 0 removes, and removing them is exact."""
    planted, chans = plant_dead(_model(built, spec), spec.plant_only)
    m = onnxprune.PrunableModel(planted)
    alive = {g.id for t in spec.alive for g in m.depgraph.groups if any(d.tensor == t for d in g.dims)}
    plan = m.plan(threshold=0)
    removed = {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}
    expected = {gid: (set() if gid in alive else c) for gid, c in chans.items()}
    assert removed == expected
    result = m.apply(plan)
    if any(expected.values()):
        assert result.exact
    assert result.report.max_rel_error <= RTOL
    assert io_signature(result.model) == io_signature(planted)
    for batch in (2, 3):
        assert_close(run(planted, batch), run(result.model, batch), exact=True)
    if spec.check and any(expected.values()):
        spec.check(planted, result.model)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_random_prune(built, spec: Spec):
    """A random 40% prune gives a model that passes the full checker and keeps its output shapes."""
    model = _model(built, spec)
    m = onnxprune.PrunableModel(model)
    plan = m.plan(ratio=0.4, criterion="random")
    for gp in plan.groups:
        assert gp.channels - len(gp.keep) == int(0.4 * gp.channels) or gp.channels < 3
    result = m.apply(plan)
    onnx.checker.check_model(result.model, full_check=True)
    assert io_signature(result.model) == io_signature(model)
    for batch in (2, 3):
        assert_close(run(model, batch), run(result.model, batch), exact=False)
    if spec.check and any(gp.keep != list(range(gp.channels)) for gp in plan.groups):
        spec.check(model, result.model)


# === specific tests ===========================================================================

def test_shared_initializer_groups_independent():
    """Two convs share a bias initializer: their groups stay apart, and pruning different channels
    of each (or only one of them) gives every conv the right slice of the shared values."""
    model = hb.shared_initializer()
    m = onnxprune.PrunableModel(model)
    ga, gb = group_of(m, "ca.w", 0), group_of(m, "cb.w", 0)
    assert ga.id != gb.id and ga.prunable and gb.prunable
    # Dead channel 2 in A only (weights and bias of A: the bias is shared, so B's channel 2 has
    # bias 0 but live weights), dead channel 5 in B only.
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    values["ca.w"][2] = 0
    values["cb.w"][5] = 0
    values["shared.b"][[2, 5]] = 0
    planted = with_initializers(model, values)
    m = onnxprune.PrunableModel(planted)
    plan = m.plan(threshold=0)
    removed = {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}
    assert removed[ga.id] == {2} and removed[gb.id] == {5}
    result = m.apply(plan)
    assert result.exact
    for batch in (2, 3):
        assert_close(run(planted, batch), run(result.model, batch), exact=True)
    bias = values["shared.b"]
    np.testing.assert_array_equal(input_value(result.model, "ca", 2), np.delete(bias, 2))
    np.testing.assert_array_equal(input_value(result.model, "cb", 2), np.delete(bias, 5))
    # Only A pruned: B keeps reading the untouched original.
    plan = m.plan(threshold=0)
    for gp in plan.groups:
        if gp.id == gb.id:
            gp.keep = list(range(gp.channels))
    result = m.apply(plan)
    np.testing.assert_array_equal(input_value(result.model, "ca", 2), np.delete(bias, 2))
    np.testing.assert_array_equal(input_value(result.model, "cb", 2), bias)
    for batch in (2, 3):
        assert_close(run(planted, batch), run(result.model, batch), exact=True)
    # Same channels in both: one consistent slice, no copies.
    plan = m.plan(threshold=0)
    for gp in plan.groups:
        if gp.id in (ga.id, gb.id):
            gp.keep = [k for k in range(gp.channels) if k not in (2, 5)]
    values_ab = dict(values)
    values_ab["ca.w"] = values["ca.w"].copy()
    values_ab["ca.w"][5] = 0
    values_ab["cb.w"] = values["cb.w"].copy()
    values_ab["cb.w"][2] = 0
    both = with_initializers(planted, values_ab)
    mb = onnxprune.PrunableModel(both)
    plan = mb.plan(threshold=0)
    result = mb.apply(plan)
    assert result.exact
    assert node(result.model, "ca").input[2] == node(result.model, "cb").input[2] == "shared.b"
    np.testing.assert_array_equal(value(result.model, "shared.b"), np.delete(bias, [2, 5]))


def test_se_dead_where_gate_is_nonzero():
    """A channel whose x is zero is dead even though its SE gate (sigmoid) is not."""
    planted, chans = plant_dead(hb.se_block(), only=["c1.w", "c1.b"])
    gate_bias = value(planted, "se2.b")
    assert np.all(gate_bias != 0)  # the gate producer was left alone
    m = onnxprune.PrunableModel(planted)
    g = group_of(m, "c1.w", 0)
    plan = m.plan(threshold=0)
    assert {gp.id: set(range(gp.channels)) - set(gp.keep) for gp in plan.groups}[g.id] == chans[g.id]
    result = m.apply(plan)
    assert result.exact
    for batch in (2, 3):
        assert_close(run(planted, batch), run(result.model, batch), exact=True)


def test_channel_shuffle_mapping():
    """Shuffle couples channel j with j + C/g (first Reshape) and reorders them: whatever the rule
    decides, the channel classes must be unions of whole shuffle orbits."""
    for groups in (2, 4):
        m = onnxprune.PrunableModel(hb.channel_shuffle(groups))
        g = group_of(m, "c1.w", 0)
        if not g.prunable:
            continue
        conv = g.classes[next(d for d in g.dims if d.tensor == "c1.w" and d.axis == 0)]
        final = g.classes[next(d for d in g.dims if d.tensor == "merge_groups" and d.axis == 1)]
        per = 8 // groups
        for c in range(8):  # conv channel c = (group c // per, index c % per) lands at (c % per) * groups + c // per
            assert conv[c] == final[(c % per) * groups + c // per]


def test_scalar_constants_not_sliced():
    """A scalar operand broadcasts: it is never part of a channel group."""
    for op in ("Add", "Sub", "Mul", "Div"):
        m = onnxprune.PrunableModel(hb.binary_const(op))
        assert not any(d.tensor == "scalar" for g in m.groups for d in g.dims)
        assert any(d.tensor == "perchan" for d in group_of(m, "c1.w", 0).dims)


@pytest.mark.parametrize("pruned", ["a", "b"])
def test_shared_reshape_target_reached_indirectly(pruned):
    """A shape constant one Reshape reads through a Cast and another reads directly: pruning the
    channels of either head rewrites that head's target only (an in-place edit of the constant
    would change the other head's shape too)."""
    model = hb.shared_shape_const_indirect()
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    values[f"c{pruned}.w"][1] = 0
    values[f"c{pruned}.b"][1] = 0
    model = with_initializers(model, values)
    m = onnxprune.PrunableModel(model)
    plan = m.plan(threshold=0)
    assert sorted(gp.channels - len(gp.keep) for gp in plan.groups) == [0, 1]
    result = m.apply(plan)
    assert result.exact
    onnx.checker.check_model(result.model, full_check=True)
    for batch in (2, 3):
        assert_close(run(model, batch), run(result.model, batch), exact=True)


def test_shared_reshape_target_copied():
    """Two flatten heads share one Reshape target constant; pruning only one head must give that
    head its own target and leave the other reading [-1, 512]."""
    model = hb.shared_shape_const()
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    values["ca.w"][1] = 0
    values["ca.b"][1] = 0
    model = with_initializers(model, values)
    m = onnxprune.PrunableModel(model)
    plan = m.plan(threshold=0)
    assert sorted(gp.channels - len(gp.keep) for gp in plan.groups) == [0, 1]
    result = m.apply(plan)
    assert result.exact
    np.testing.assert_array_equal(input_value(result.model, "flata", 1), [-1, 7 * 64])
    np.testing.assert_array_equal(input_value(result.model, "flatb", 1), [-1, 8 * 64])
    for batch in (2, 3):
        assert_close(run(model, batch), run(result.model, batch), exact=True)
