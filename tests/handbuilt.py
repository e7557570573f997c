"""Hand-built ONNX graphs (onnx.helper) for the patterns the torch exporters do not emit.

Every builder returns a small, seeded, float32 `onnx.ModelProto` whose input and output have a
dynamic batch dimension "N".  Weights are named `<node>.w` / `<node>.b`, so tests can find a
layer's group by its initializer.  Kept independent of `onnxprune` (tests must not validate the
tool with itself).

Families: tf2onnx patterns (NHWC transposes, Reshape/MatMul flatten heads, Mul/Add BN, NHWC SE),
paddle2onnx patterns (bias-less Conv + Add, MatMul [in,out], Identity, hardswish forms, Flatten),
and one builder per op family of `onnxprune/ops`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
INT64_MAX = np.iinfo(np.int64).max
IR_FOR_OPSET = {7: 3, 9: 4, 11: 6, 13: 7, 17: 8, 18: 8, 20: 9, 21: 10}


class Net:
    """A tiny graph builder: constants, nodes and the usual layers, with deterministic weights."""

    def __init__(self, name: str, opset: int = 17, seed: int = 0, domains: dict[str, int] | None = None):
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.domains = dict(domains or {})
        self.count = 0

    # --- constants -------------------------------------------------------------------------
    def const(self, name: str, value) -> str:
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        self.inits[name] = value
        return name

    def ints(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def param(self, name: str, shape, scale: float = 0.3, offset: float = 0.0) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * scale + offset).astype(np.float32))

    # --- nodes -----------------------------------------------------------------------------
    def op(self, op_type: str, inputs, name: str | None = None, outputs: int = 1, domain: str = "", **attrs):
        """Add a node; its output is named after the node (`name_k` for several outputs)."""
        self.count += 1
        name = name or f"{op_type.lower()}{self.count}"
        outs = [name] if outputs == 1 else [f"{name}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1, bias: bool = True,
             pad: bool = True) -> str:
        w = self.param(f"{name}.w", (cout, cin // group, k, k), scale=1.0 / np.sqrt(cin // group * k * k))
        inputs = [x, w] + ([self.param(f"{name}.b", (cout,), 0.1)] if bias else [])
        return self.op("Conv", inputs, name, kernel_shape=[k, k], pads=[k // 2 if pad else 0] * 4, group=group)

    def conv_t(self, x: str, cin: int, cout: int, name: str, group: int = 1) -> str:
        w = self.param(f"{name}.w", (cin, cout // group, 2, 2), scale=0.3)
        return self.op("ConvTranspose", [x, w, self.param(f"{name}.b", (cout,), 0.1)], name,
                       kernel_shape=[2, 2], strides=[2, 2], group=group)

    def bn(self, x: str, c: int, name: str, **attrs) -> str:
        ins = [self.param(f"{name}.scale", (c,), 0.3, 1.0), self.param(f"{name}.bias", (c,), 0.1),
               self.param(f"{name}.mean", (c,), 0.1),
               self.const(f"{name}.var", self.rng.random(c).astype(np.float32) + 0.5)]
        return self.op("BatchNormalization", [x] + ins, name, **attrs)

    def matmul(self, x: str, cin: int, cout: int, name: str, bias: bool = True) -> str:
        """tf2onnx / paddle2onnx dense layer: MatMul with weight [in, out], then Add bias."""
        y = self.op("MatMul", [x, self.param(f"{name}.w", (cin, cout), 1.0 / np.sqrt(cin))], name)
        return self.op("Add", [y, self.param(f"{name}.b", (cout,), 0.1)], f"{name}_add") if bias else y

    def gemm(self, x: str, cin: int, cout: int, name: str, **attrs) -> str:
        """PyTorch Linear: Gemm(transB=1) with weight [out, in]."""
        w = self.param(f"{name}.w", (cout, cin), 1.0 / np.sqrt(cin))
        return self.op("Gemm", [x, w, self.param(f"{name}.b", (cout,), 0.1)], name, transB=1, **attrs)

    # --- model -----------------------------------------------------------------------------
    def build(self, inputs: dict[str, list], outputs: list[str], value_info: dict[str, list] | None = None) -> onnx.ModelProto:
        """The model, with outputs shaped by one onnxruntime run and axis 0 renamed "N";
        `value_info` declares intermediate shapes (as paddle2onnx does)."""
        graph_inputs = [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()]
        inits = [numpy_helper.from_array(v, n) for n, v in self.inits.items()]
        ir = IR_FOR_OPSET.get(self.opset, 8)
        if ir < 4:  # IR 3: every initializer is also a graph input
            graph_inputs += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                             for n, v in self.inits.items()]
        outs = [helper.make_tensor_value_info(n, F, None) for n in outputs]
        graph = helper.make_graph(self.nodes, self.name, graph_inputs, outs, inits,
                                  value_info=[helper.make_tensor_value_info(n, F, s) for n, s in (value_info or {}).items()])
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, v) for d, v in self.domains.items()]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=ir, producer_name="handbuilt")
        # Output shapes from one onnxruntime run (shape inference cannot see through contrib ops),
        # with the batch axis renamed "N".
        import onnxruntime as ort

        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {n: np.zeros([2 if d == "N" else d for d in s], np.float32) for n, s in inputs.items()}
        results = session.run(outputs, feeds)
        del model.graph.output[:]
        for name, value in zip(outputs, results):
            model.graph.output.append(helper.make_tensor_value_info(name, F, ["N"] + list(value.shape[1:])))
        onnx.checker.check_model(model, full_check=True)
        return model


def _x(c: int = 3, h: int = 8, w: int = 8) -> dict[str, list]:
    return {"x": ["N", c, h, w]}


def _nhwc(h: int = 8, w: int = 8, c: int = 3) -> dict[str, list]:
    return {"x": ["N", h, w, c]}


# === tf2onnx patterns ========================================================================

def tf_flatten(shape_mode: str = "const") -> onnx.ModelProto:
    """NHWC -> Transpose -> Conv -> Relu -> Transpose back -> Reshape [-1, H*W*C] -> MatMul + Add.
    Flattening NHWC interleaves channels: channel c owns rows c, c+C, c+2C, ... of the weight.
    `shape_mode` "computed" builds the target as Concat(Gather(Shape(t), [0]), [H*W*C])."""
    n = Net(f"tf_flatten_{shape_mode}", opset=13)
    t = n.op("Transpose", ["x"], "to_nchw", perm=[0, 3, 1, 2])
    y = n.op("Relu", [n.conv(t, 3, 8, "c1")], "r1")
    y = n.op("Transpose", [y], "to_nhwc", perm=[0, 2, 3, 1])
    if shape_mode == "const":
        target = n.ints("flat_shape", [-1, 8 * 8 * 8])
    else:
        shape = n.op("Shape", [y], "shape")
        batch = n.op("Gather", [shape, n.ints("idx0", [0])], "gather", axis=0)
        target = n.op("Concat", [batch, n.ints("flat_rest", [8 * 8 * 8])], "target", axis=0)
    y = n.op("Reshape", [y, target], "flatten")
    y = n.op("Relu", [n.matmul(y, 512, 16, "fc1")], "r2")
    return n.build(_nhwc(), [n.matmul(y, 16, 10, "fc2")])


def tf_mul_add_bn() -> onnx.ModelProto:
    """Bias-less Conv followed by BN left as Mul and Add with [1,C,1,1] constants."""
    n = Net("tf_mul_add_bn", opset=13)
    t = n.op("Transpose", ["x"], "to_nchw", perm=[0, 3, 1, 2])
    y = n.conv(t, 3, 8, "c1", bias=False)
    y = n.op("Mul", [y, n.param("bn1.mul", (1, 8, 1, 1), 0.3, 1.0)], "bn1_mul")
    y = n.op("Add", [y, n.param("bn1.add", (1, 8, 1, 1), 0.1)], "bn1_add")
    y = n.op("Relu", [y], "r1")
    y = n.conv(y, 8, 4, "c2")
    return n.build(_nhwc(), [n.op("Transpose", [y], "out", perm=[0, 2, 3, 1])])


def tf_reducemean_matmul() -> onnx.ModelProto:
    """Keras GlobalAveragePooling2D in NHWC: ReduceMean over H,W with keepdims=0, then Dense."""
    n = Net("tf_reducemean_matmul", opset=13)
    t = n.op("Transpose", ["x"], "to_nchw", perm=[0, 3, 1, 2])
    y = n.op("Relu", [n.conv(t, 3, 8, "c1")], "r1")
    y = n.op("Transpose", [y], "to_nhwc", perm=[0, 2, 3, 1])
    y = n.op("ReduceMean", [y], "gap", axes=[1, 2], keepdims=0)
    return n.build(_nhwc(), [n.matmul(y, 8, 10, "fc")])


def tf_se_nhwc() -> onnx.ModelProto:
    """Squeeze-excite in NHWC: the [N,H,W,C] tensor times a [N,1,1,C] gate from two MatMuls."""
    n = Net("tf_se_nhwc", opset=13)
    t = n.op("Transpose", ["x"], "to_nchw", perm=[0, 3, 1, 2])
    y = n.op("Relu", [n.conv(t, 3, 8, "c1")], "r1")
    y = n.op("Transpose", [y], "to_nhwc", perm=[0, 2, 3, 1])
    g = n.op("ReduceMean", [y], "se_gap", axes=[1, 2], keepdims=1)
    g = n.op("Relu", [n.matmul(g, 8, 4, "se1")], "se_relu")
    g = n.op("Sigmoid", [n.matmul(g, 4, 8, "se2")], "se_gate")
    y = n.op("Mul", [y, g], "se_mul")
    y = n.op("Transpose", [y], "back", perm=[0, 3, 1, 2])
    return n.build(_nhwc(), [n.conv(y, 8, 4, "c2")])


# === paddle2onnx patterns ====================================================================

def paddle_cnn() -> onnx.ModelProto:
    """Bias-less Conv + Add [1,C,1,1], Identity renames, hardswish as x*Clip(x+3,0,6)/6 and as
    HardSigmoid*x, GlobalAveragePool, Flatten, MatMul [in,out] + Add."""
    n = Net("paddle_cnn", opset=13)
    y = n.conv("x", 3, 8, "c1", bias=False)
    y = n.op("Add", [y, n.param("c1.add", (1, 8, 1, 1), 0.1)], "c1_bias")
    y = n.op("Identity", [y], "rename1")
    a = n.op("Add", [y, n.const("three", np.float32(3))], "hs_add")
    a = n.op("Clip", [a, n.const("zero", np.float32(0)), n.const("six", np.float32(6))], "hs_clip")
    y = n.op("Div", [n.op("Mul", [y, a], "hs_mul"), n.const("six_div", np.float32(6))], "hs_div")
    y = n.conv(y, 8, 16, "c2", bias=False)
    y = n.op("Add", [y, n.param("c2.add", (1, 16, 1, 1), 0.1)], "c2_bias")
    y = n.op("Mul", [n.op("HardSigmoid", [y], "hsig", alpha=1 / 6, beta=0.5), y], "hs2_mul")
    y = n.op("Identity", [y], "rename2")
    y = n.op("Flatten", [n.op("GlobalAveragePool", [y], "gap")], "flat", axis=1)
    y = n.op("Relu", [n.matmul(y, 16, 12, "fc1")], "fc1_relu")
    return n.build(_x(), [n.matmul(y, 12, 10, "fc2")])


# === conv family =============================================================================

def grouped_conv(group: int = 4) -> onnx.ModelProto:
    """Conv 3->16, grouped Conv 16->32 (group 4, not depthwise), Conv 32->8."""
    n = Net(f"grouped_conv_g{group}", opset=13)
    y = n.op("Relu", [n.conv("x", 3, 16, "c1")], "r1")
    y = n.op("Relu", [n.conv(y, 16, 32, "cg", group=group)], "r2")
    return n.build(_x(), [n.conv(y, 32, 8, "c3")])


def depthwise_mult2() -> onnx.ModelProto:
    """Depthwise Conv with channel multiplier 2: 8 groups, weight [16,1,3,3]."""
    n = Net("depthwise_mult2", opset=13)
    y = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    y = n.op("Relu", [n.conv(y, 8, 16, "dw", group=8)], "r2")
    return n.build(_x(), [n.conv(y, 16, 8, "c3", k=1)])


def conv_transpose(group: int = 1) -> onnx.ModelProto:
    """Conv -> ConvTranspose (weight [Cin, Cout/g, 2, 2], stride 2) -> Conv."""
    n = Net(f"conv_transpose_g{group}", opset=13)
    y = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    y = n.op("Relu", [n.conv_t(y, 8, 6, "ct", group=group)], "r2")
    return n.build(_x(), [n.conv(y, 6, 4, "c3")])


# === dense ===================================================================================

def gemm_variants() -> onnx.ModelProto:
    """Gemm transB=0 (weight [in,out]), Gemm transA=1 on a transposed activation with a [1,N]
    bias, and Gemm transB=1 (PyTorch Linear)."""
    n = Net("gemm_variants", opset=13)
    y = n.op("Gemm", ["x", n.param("g0.w", (16, 24), 0.25), n.param("g0.b", (24,), 0.1)], "g0", transB=0)
    y = n.op("Transpose", [n.op("Relu", [y], "r0")], "t0", perm=[1, 0])
    y = n.op("Gemm", [y, n.param("g1.w", (24, 32), 0.2), n.param("g1.b", (1, 32), 0.1)], "g1", transA=1)
    y = n.op("Relu", [y], "r1")
    return n.build({"x": ["N", 16]}, [n.gemm(y, 32, 10, "g2")])


# === normalisation ===========================================================================

def batchnorm(opset: int = 13) -> onnx.ModelProto:
    n = Net(f"batchnorm_{opset}", opset=opset)
    y = n.op("Relu", [n.bn(n.conv("x", 3, 8, "c1", bias=False), 8, "bn1")], "r1")
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


def instancenorm() -> onnx.ModelProto:
    n = Net("instancenorm", opset=13)
    y = n.conv("x", 3, 8, "c1")
    y = n.op("InstanceNormalization", [y, n.param("in1.scale", (8,), 0.3, 1.0), n.param("in1.bias", (8,), 0.1)], "in1")
    return n.build(_x(), [n.conv(n.op("Relu", [y], "r1"), 8, 4, "c2")])


def layernorm(over: str = "channel") -> onnx.ModelProto:
    """LayerNormalization over the channel axis (NHWC, axis=-1: blocked) or over W of an NCHW
    tensor (channels untouched: prunable)."""
    n = Net(f"layernorm_{over}", opset=17)
    y = n.conv("x", 3, 8, "c1")
    if over == "channel":
        y = n.op("Transpose", [y], "to_nhwc", perm=[0, 2, 3, 1])
        y = n.op("LayerNormalization", [y, n.param("ln.scale", (8,), 0.3, 1.0), n.param("ln.bias", (8,), 0.1)], "ln", axis=-1)
        y = n.op("Transpose", [y], "to_nchw", perm=[0, 3, 1, 2])
    else:
        y = n.op("LayerNormalization", [y, n.param("ln.scale", (8,), 0.3, 1.0), n.param("ln.bias", (8,), 0.1)], "ln", axis=-1)
    return n.build(_x(), [n.conv(n.op("Relu", [y], "r1"), 8, 4, "c2")])


# === elementwise =============================================================================

ZERO_BREAKING = ("Sigmoid", "HardSigmoid", "Softplus", "Exp", "Cos", "Cosh", "Log", "Reciprocal", "Acos", "Not", "Where")
ACTIVATIONS = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "HardSwish", "Tanh", "Softsign", "Neg", "Abs", "Sqrt",
               "Erf", "Floor", "Ceil", "Round", "Sign", "Identity", "Cast", "CastLike", "Mish", "ThresholdedRelu", "Sin",
               "Atan", "Asin", "Sinh", "Tan", "Dropout", "Clip") + ZERO_BREAKING


def _activation(n: Net, kind: str, x: str) -> str:
    """`kind` applied to x; a zero-breaking f is used as x * f(x) (SiLU style), and f's input is
    kept inside its domain (Log and Reciprocal of |x|+1, Acos and Asin of tanh(x))."""
    one = lambda: n.const(f"one_{n.count}", np.float32(1))  # noqa: E731
    if kind == "Sqrt":
        return n.op("Sqrt", [n.op("Abs", [x], "abs")], "act")
    if kind == "Asin":
        return n.op("Asin", [n.op("Tanh", [x], "tanh")], "act")
    if kind == "Cast":
        return n.op("Cast", [n.op("Cast", [x], "to_double", to=TensorProto.DOUBLE)], "act", to=F)
    if kind == "CastLike":
        return n.op("CastLike", [x, n.const("like", np.float32(0))], "act")
    if kind == "Clip":
        return n.op("Clip", [x, n.const("lo", np.float32(0)), n.const("hi", np.float32(6))], "act")
    if kind in ("LeakyRelu", "Elu", "Celu", "ThresholdedRelu"):
        return n.op(kind, [x], "act", alpha=0.1)
    if kind in ZERO_BREAKING:
        if kind in ("Log", "Reciprocal"):
            f = n.op(kind, [n.op("Add", [n.op("Abs", [x], "abs"), one()], "abs1")], "f")
        elif kind == "Acos":
            f = n.op("Acos", [n.op("Tanh", [x], "tanh")], "f")
        elif kind == "Not":
            f = n.op("Cast", [n.op("Not", [n.op("Greater", [x, n.const("zero", np.float32(0))], "gt")], "f0")], "f", to=F)
        elif kind == "Where":
            gt = n.op("Greater", [x, n.const("zero", np.float32(0))], "gt")
            f = n.op("Where", [gt, one(), n.const("slope", np.float32(0.1))], "f")
        else:
            f = n.op(kind, [x], "f")
        return n.op("Mul", [x, f], "act")
    return n.op(kind, [x], "act")


def activation(kind: str) -> onnx.ModelProto:
    """Conv -> activation -> Conv, opset 20 (Gelu needs it)."""
    n = Net(f"act_{kind}", opset=20)
    y = _activation(n, kind, n.conv("x", 3, 8, "c1"))
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


def prelu() -> onnx.ModelProto:
    """PRelu with a per-channel [C,1,1] slope (sliced with the channels)."""
    n = Net("prelu", opset=13)
    y = n.op("PRelu", [n.conv("x", 3, 8, "c1"), n.param("slope", (8, 1, 1), 0.1, 0.2)], "prelu")
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


def binary_const(op: str) -> onnx.ModelProto:
    """op(op(x, per-channel [C,1,1]), scalar): the per-channel constant is sliced, the scalar not.
    Div's divisor is kept away from zero."""
    n = Net(f"binary_{op}", opset=13)
    y = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    per = n.param("perchan", (8, 1, 1), 0.3, 1.5 if op == "Div" else 0.0)
    y = n.op(op, [y, per], "op_chan")
    y = n.op(op, [y, n.const("scalar", np.float32(2.0))], "op_scalar")
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


def sub_reversed() -> onnx.ModelProto:
    """Sub(constant [C,1,1], x): the activation is the second operand."""
    n = Net("sub_reversed", opset=13)
    y = n.op("Sub", [n.param("perchan", (8, 1, 1), 0.3), n.conv("x", 3, 8, "c1")], "sub")
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


def variadic(op: str) -> onnx.ModelProto:
    """Max/Min/Sum/Mean of three conv branches: their channels are coupled."""
    n = Net(f"variadic_{op}", opset=13)
    branches = [n.conv("x", 3, 8, f"b{k}") for k in range(3 if op in ("Sum", "Mean") else 2)]
    y = n.op(op, branches, "join")
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


# === spatial =================================================================================

POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool")


def pool(kind: str) -> onnx.ModelProto:
    n = Net(f"pool_{kind}", opset=13)
    y = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    attrs = {} if kind.startswith("Global") else {"kernel_shape": [2, 2], "strides": [2, 2]}
    if kind == "AveragePool":
        attrs.update(pads=[1, 1, 1, 1], count_include_pad=1, kernel_shape=[3, 3])
    if kind == "LpPool":
        attrs["p"] = 2
    y = n.op(kind, [y], "pool", **attrs)
    return n.build(_x(), [n.conv(y, 8, 4, "c2", k=1)])


RESIZES = ("scales", "sizes_computed", "sizes_axes", "upsample9", "crop_extrapolate")


def resize(kind: str) -> onnx.ModelProto:
    """Resize by scales, by sizes = Concat(Shape(x)[0:1], const [C, 2H, 2W]), by sizes const with
    `axes` (opset 18), opset-9 Upsample with a scales input, and tf_crop_and_resize with a ROI
    reaching outside the input and extrapolation_value 1 (a zero channel comes out non-zero)."""
    opset = {"sizes_axes": 18, "upsample9": 9}.get(kind, 13)
    n = Net(f"resize_{kind}", opset=opset)
    y = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    if kind == "scales":
        y = n.op("Resize", [y, "", n.const("scales", np.array([1, 1, 2, 2], np.float32))], "resize", mode="nearest")
    elif kind == "sizes_computed":
        batch = n.op("Slice", [n.op("Shape", [y], "shape"), n.ints("s0", [0]), n.ints("s1", [1])], "batch")
        sizes = n.op("Concat", [batch, n.ints("sizes_rest", [8, 16, 16])], "sizes", axis=0)
        y = n.op("Resize", [y, "", "", sizes], "resize", mode="nearest")
    elif kind == "sizes_axes":
        y = n.op("Resize", [y, "", "", n.ints("sizes", [16, 16])], "resize", mode="linear", axes=[2, 3])
    elif kind == "crop_extrapolate":
        roi = n.const("roi", np.array([0, 0, -0.25, -0.25, 1, 1, 1.25, 1.25], np.float32))
        y = n.op("Resize", [y, roi, n.const("scales", np.array([1, 1, 2, 2], np.float32))], "resize", mode="linear",
                 coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=1.0)
    else:
        y = n.op("Upsample", [y, n.const("scales", np.array([1, 1, 2, 2], np.float32))], "resize", mode="nearest")
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


PADS = ("constant", "reflect", "channel")


def pad(kind: str) -> onnx.ModelProto:
    """Pad H,W with constant 0 or reflect (channels pass), or pad the channel axis (blocked)."""
    n = Net(f"pad_{kind}", opset=13)
    y = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    pads = [0, 1, 0, 0, 0, 1, 0, 0] if kind == "channel" else [0, 0, 1, 1, 0, 0, 1, 1]
    ins = [y, n.ints("pads", pads)] + ([n.const("pad_value", np.float32(0))] if kind != "reflect" else [])
    y = n.op("Pad", ins, "pad", mode="reflect" if kind == "reflect" else "constant")
    return n.build(_x(), [n.conv(y, 10 if kind == "channel" else 8, 4, "c2", pad=False)])


def softmax(axis: str) -> onnx.ModelProto:
    """x * Softmax(x) over the channel axis (blocked) or over W (channels prunable)."""
    n = Net(f"softmax_{axis}", opset=13)
    y = n.conv("x", 3, 8, "c1")
    s = n.op("Softmax", [y], "softmax", axis=1 if axis == "channel" else -1)
    return n.build(_x(), [n.conv(n.op("Mul", [y, s], "mul"), 8, 4, "c2")])


def reduce_channels(op: str) -> onnx.ModelProto:
    """A reduction over channels (blocked): x * ReduceOp(x, axes=[1], keepdims=1)."""
    n = Net(f"reduce_{op}", opset=13)
    y = n.conv("x", 3, 8, "c1")
    if op == "ReduceSum":  # opset 13: axes is an input
        r = n.op(op, [y, n.ints("axes", [1])], "reduce", keepdims=1)
    else:
        r = n.op(op, [y], "reduce", axes=[1], keepdims=1)
    return n.build(_x(), [n.conv(n.op("Mul", [y, r], "mul"), 8, 4, "c2")])


# === layout ==================================================================================

def concat3() -> onnx.ModelProto:
    """Concat of three conv branches (4, 6 and 5 channels), the middle one through a Relu."""
    n = Net("concat3", opset=13)
    a = n.conv("x", 3, 4, "ca")
    b = n.op("Relu", [n.conv("x", 3, 6, "cb")], "rb")
    c = n.conv("x", 3, 5, "cc")
    y = n.op("Concat", [a, b, c], "cat", axis=1)
    return n.build(_x(), [n.conv(y, 15, 4, "cd")])


SPLITS = ("sizes13", "attr11", "equal11", "num_outputs18", "uneven18")


def split(kind: str) -> onnx.ModelProto:
    """Split a 12-channel (10 for "uneven18") conv output into branches, each into its own conv,
    summed at the end.  sizes13: split input [4, 8]; attr11: `split` attribute [5, 7];
    equal11: no `split` (2 equal parts); num_outputs18: 3 equal parts; uneven18: num_outputs=3 over
    10 channels (4, 4, 2)."""
    opset = {"sizes13": 13, "attr11": 11, "equal11": 11}.get(kind, 18)
    c = 10 if kind == "uneven18" else 12
    n = Net(f"split_{kind}", opset=opset)
    y = n.op("Relu", [n.conv("x", 3, c, "c1")], "r1")
    if kind == "sizes13":
        parts, sizes = n.op("Split", [y, n.ints("split_sizes", [4, 8])], "split", outputs=2, axis=1), [4, 8]
    elif kind == "attr11":
        parts, sizes = n.op("Split", [y], "split", outputs=2, axis=1, split=[5, 7]), [5, 7]
    elif kind == "equal11":
        parts, sizes = n.op("Split", [y], "split", outputs=2, axis=1), [6, 6]
    else:
        parts = n.op("Split", [y], "split", outputs=3, axis=1, num_outputs=3)
        sizes = [4, 4, 2] if c == 10 else [4, 4, 4]
    outs = [n.conv(p, s, 4, f"b{k}") for k, (p, s) in enumerate(zip(parts, sizes))]
    return n.build(_x(), [n.op("Sum", outs, "sum")])


SLICES = ("ghost13", "attr9", "negative", "step2")


def slice_channels(kind: str) -> onnx.ModelProto:
    """Slices on the channel axis.  ghost13: GhostNet `cat([x1, dw(x1)])[:, :10]` with opset-13
    inputs; attr9: opset-9 attributes `[:, 2:9]`; negative: `[:, -4:INT64_MAX]`; step2: `[:, ::2]`
    (blocked).  Except for ghost13 the full tensor also feeds a second conv, so every channel
    is consumed."""
    opset = 9 if kind == "attr9" else 13
    n = Net(f"slice_{kind}", opset=opset)
    if kind == "ghost13":
        x1 = n.op("Relu", [n.conv("x", 3, 6, "primary")], "r1")
        x2 = n.op("Relu", [n.conv(x1, 6, 6, "cheap", group=6)], "r2")
        y = n.op("Concat", [x1, x2], "ghost_cat", axis=1)
        y = n.op("Slice", [y, n.ints("starts", [0]), n.ints("ends", [10]), n.ints("axes", [1])], "slice")
        return n.build(_x(), [n.conv(y, 10, 4, "c2")])
    y = n.op("Relu", [n.conv("x", 3, 12, "c1")], "r1")
    if kind == "attr9":
        s, width = n.op("Slice", [y], "slice", starts=[2], ends=[9], axes=[1]), 7
    elif kind == "negative":
        s, width = n.op("Slice", [y, n.ints("starts", [-4]), n.ints("ends", [INT64_MAX]), n.ints("axes", [1])], "slice"), 4
    else:
        s, width = n.op("Slice", [y, n.ints("starts", [0]), n.ints("ends", [12]), n.ints("axes", [1]),
                                  n.ints("steps", [2])], "slice"), 6
    out = n.op("Add", [n.conv(s, width, 4, "c2"), n.conv(y, 12, 4, "c3")], "sum")
    return n.build(_x(), [out])


def squeeze_unsqueeze(opset: int = 13) -> onnx.ModelProto:
    """GAP -> Squeeze [2,3] -> Gemm -> Relu -> Unsqueeze [2,3] -> 1x1 Conv (axes as attribute
    before opset 13, as an input from 13)."""
    n = Net(f"squeeze_unsqueeze_{opset}", opset=opset)
    y = n.op("GlobalAveragePool", [n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")], "gap")
    if opset >= 13:
        y = n.op("Squeeze", [y, n.ints("sq_axes", [2, 3])], "squeeze")
    else:
        y = n.op("Squeeze", [y], "squeeze", axes=[2, 3])
    y = n.op("Relu", [n.gemm(y, 8, 16, "fc")], "r2")
    if opset >= 13:
        y = n.op("Unsqueeze", [y, n.ints("unsq_axes", [2, 3])], "unsqueeze")
    else:
        y = n.op("Unsqueeze", [y], "unsqueeze", axes=[2, 3])
    return n.build(_x(), [n.conv(y, 16, 4, "c2", k=1)])


def flatten_gemm() -> onnx.ModelProto:
    """Conv -> MaxPool -> Flatten(axis=1) -> Gemm: channel c owns columns c*H*W .. (c+1)*H*W-1."""
    n = Net("flatten_gemm", opset=13)
    y = n.op("MaxPool", [n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")], "pool", kernel_shape=[2, 2], strides=[2, 2])
    y = n.op("Flatten", [y], "flatten", axis=1)
    return n.build(_x(), [n.gemm(y, 8 * 4 * 4, 10, "fc")])


def channel_shuffle(groups: int = 2) -> onnx.ModelProto:
    """ShuffleNet channel shuffle with constant shapes: Reshape [-1, g, C/g, H, W] ->
    Transpose(0,2,1,3,4) -> Reshape [-1, C, H, W]."""
    c = 8
    n = Net(f"channel_shuffle_g{groups}", opset=13)
    y = n.op("Relu", [n.conv("x", 3, c, "c1")], "r1")
    y = n.op("Reshape", [y, n.ints("shape5", [-1, groups, c // groups, 8, 8])], "split_groups")
    y = n.op("Transpose", [y], "shuffle", perm=[0, 2, 1, 3, 4])
    y = n.op("Reshape", [y, n.ints("shape4", [-1, c, 8, 8])], "merge_groups")
    return n.build(_x(), [n.conv(y, c, 4, "c2")])


def expand_const() -> onnx.ModelProto:
    """Add of Expand(constant [C,1,1], [1, C, H, W]): the constant and the Expand shape follow."""
    n = Net("expand_const", opset=13)
    y = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    e = n.op("Expand", [n.param("bias_chan", (8, 1, 1), 0.2), n.ints("expand_shape", [1, 8, 8, 8])], "expand")
    return n.build(_x(), [n.conv(n.op("Add", [y, e], "add"), 8, 4, "c2")])


def identity_dropout_cast() -> onnx.ModelProto:
    n = Net("identity_dropout_cast", opset=13)
    y = n.op("Identity", [n.conv("x", 3, 8, "c1")], "ident")
    y = n.op("Dropout", [y], "drop")
    y = n.op("Cast", [y], "cast", to=F)
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


# === blocked by design =======================================================================

def einsum() -> onnx.ModelProto:
    """Einsum mixing the channels with a constant: no rule, so blocked."""
    n = Net("einsum", opset=13)
    y = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    y = n.op("Einsum", [y, n.param("mix", (8, 6), 0.3)], "mix_channels", equation="nchw,cd->ndhw")
    return n.build(_x(), [n.conv(y, 6, 4, "c2")])


def custom_domain() -> onnx.ModelProto:
    """A com.microsoft contrib op (onnxruntime runs it; onnxprune has no rule for the domain).
    Its output shape is declared in value_info, since onnx shape inference cannot know it."""
    n = Net("custom_domain", opset=13, domains={"com.microsoft": 1})
    y = n.op("Gelu", [n.conv("x", 3, 8, "c1")], "ms_gelu", domain="com.microsoft")
    y = n.conv(y, 8, 6, "c2")
    return n.build(_x(), [n.conv(n.op("Relu", [y], "r2"), 6, 4, "c3")], value_info={"ms_gelu": ["N", 8, 8, 8]})


def output_mid_block() -> onnx.ModelProto:
    """A graph output taken from the middle of a block: those channels cannot change."""
    n = Net("output_mid_block", opset=13)
    mid = n.op("Relu", [n.conv("x", 3, 8, "c1")], "mid")
    y = n.op("Relu", [n.conv(mid, 8, 6, "c2")], "r2")
    return n.build(_x(), [n.conv(y, 6, 4, "c3"), mid])


# === sharing, SE, opsets =====================================================================

def shared_initializer() -> onnx.ModelProto:
    """Two unrelated convs reading the same bias initializer (legacy-exporter deduplication)."""
    n = Net("shared_initializer", opset=13)
    bias = n.param("shared.b", (8,), 0.1)
    ys = []
    for k in "ab":
        w = n.param(f"c{k}.w", (8, 3, 3, 3), 0.2)
        y = n.op("Relu", [n.op("Conv", ["x", w, bias], f"c{k}", kernel_shape=[3, 3], pads=[1] * 4)], f"r{k}")
        ys.append(n.conv(y, 8, 4, f"d{k}"))
    return n.build(_x(), [n.op("Add", ys, "sum")])


def shared_shape_const() -> onnx.ModelProto:
    """Two flatten heads whose Reshape targets are one deduplicated constant [-1, 512]."""
    n = Net("shared_shape_const", opset=13)
    shape = n.ints("flat", [-1, 8 * 64])
    outs = []
    for k in "ab":
        y = n.op("Reshape", [n.op("Relu", [n.conv("x", 3, 8, f"c{k}")], f"r{k}"), shape], f"flat{k}")
        outs.append(n.gemm(y, 512, 10, f"fc{k}"))
    return n.build(_x(), [n.op("Add", outs, "sum")])


def shared_shape_const_indirect() -> onnx.ModelProto:
    """Two flatten heads reading one constant [-1, 512]: head a through a Cast (so the target is
    not the constant itself), head b directly."""
    n = Net("shared_shape_const_indirect", opset=13)
    shape = n.ints("flat", [-1, 8 * 64])
    outs = []
    for k in "ab":
        target = n.op("Cast", [shape], "flat_cast", to=TensorProto.INT64) if k == "a" else shape
        y = n.op("Reshape", [n.op("Relu", [n.conv("x", 3, 8, f"c{k}")], f"r{k}"), target], f"flat{k}")
        outs.append(n.gemm(y, 512, 10, f"fc{k}"))
    return n.build(_x(), [n.op("Add", outs, "sum")])


def se_block() -> onnx.ModelProto:
    """Squeeze-excite: GAP -> 1x1 Conv -> Relu -> 1x1 Conv -> Sigmoid -> Mul with x."""
    n = Net("se_block", opset=13)
    x = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    g = n.op("GlobalAveragePool", [x], "gap")
    g = n.op("Relu", [n.conv(g, 8, 4, "se1", k=1)], "se_relu")
    g = n.op("Sigmoid", [n.conv(g, 4, 8, "se2", k=1)], "gate")
    y = n.op("Mul", [x, g], "scale")
    return n.build(_x(), [n.conv(y, 8, 4, "c2")])


def opset7() -> onnx.ModelProto:
    """IR 3 / opset 7: BatchNormalization-7, Upsample-7 (scales attribute), Reshape with a
    constant [0, -1] shape, Gemm-7 with its required bias."""
    n = Net("opset7", opset=7)
    y = n.op("Relu", [n.bn(n.conv("x", 3, 8, "c1"), 8, "bn1")], "r1")
    y = n.op("Upsample", [y], "up", scales=[1.0, 1.0, 2.0, 2.0], mode="nearest")
    y = n.op("Relu", [n.conv(y, 8, 6, "c2", k=3)], "r2")
    y = n.op("MaxPool", [y], "pool", kernel_shape=[4, 4], strides=[4, 4])
    y = n.op("Reshape", [y, n.ints("flat_shape", [0, -1])], "flatten")
    return n.build(_x(), [n.gemm(y, 6 * 4 * 4, 10, "fc")])


def simple_chain(opset: int = 13) -> onnx.ModelProto:
    """Conv-BN-Relu-MaxPool-Conv-Relu-GAP-Flatten-Gemm at a given opset."""
    n = Net(f"simple_chain_{opset}", opset=opset)
    y = n.op("Relu", [n.bn(n.conv("x", 3, 8, "c1", bias=False), 8, "bn1")], "r1")
    y = n.op("MaxPool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])
    y = n.op("Relu", [n.conv(y, 8, 12, "c2")], "r2")
    y = n.op("Flatten", [n.op("GlobalAveragePool", [y], "gap")], "flatten", axis=1)
    return n.build(_x(), [n.gemm(y, 12, 10, "fc")])




RECURRENT = ("lstm_bidirectional", "gru", "rnn", "lstm_states")
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def recurrent(kind: str) -> onnx.ModelProto:
    """A CRNN-style head: dense features -> [T, N, C] -> LSTM/GRU/RNN -> Y [T, dirs, N, H] ->
    [T, N, dirs*H] -> dense.  `lstm_states` also feeds constant initial states and reads Y_h."""
    op = kind.split("_")[0]
    n = Net(f"recurrent_{kind}", opset=14)
    dirs, hidden, gates = (2 if kind == "lstm_bidirectional" else 1), 6, _GATES[op]
    x = n.matmul("x", 4, 8, "fc1")
    x = n.op("Transpose", [x], "to_tnc", perm=[1, 0, 2])
    ins = [x, n.param("rnn.W", (dirs, gates * hidden, 8), 0.4), n.param("rnn.R", (dirs, gates * hidden, hidden), 0.4),
           n.param("rnn.B", (dirs, 2 * gates * hidden), 0.1)]
    if kind == "lstm_states":
        ins += ["", n.const("rnn.h0", np.zeros((dirs, 1, hidden), np.float32)), n.param("rnn.c0", (dirs, 1, hidden), 0.2)]
    outputs = 2 if kind == "lstm_states" else 1
    result = n.op(op.upper(), ins, "rnn", outputs=outputs, hidden_size=hidden,
                  direction="bidirectional" if dirs == 2 else "forward")
    y = result[0] if outputs > 1 else result
    y = n.op("Transpose", [y], "to_tndh", perm=[0, 2, 1, 3])
    y = n.op("Reshape", [y, n.ints("merge", [0, 0, -1])], "merge_dirs")
    out = [n.matmul(y, dirs * hidden, 3, "fc2")]
    if kind == "lstm_states":
        out.append(n.matmul(n.op("Squeeze", [result[1], n.ints("axes0", [0])], "last"), hidden, 2, "fc3"))
    return n.build({"x": [1, 5, 4]}, out)


ATTENTION = ("mha", "gqa", "fused_qkv", "dynamo_k_transpose")


def attention(kind: str) -> onnx.ModelProto:
    """Self-attention on x [N, T, C] as the torch exporters write it: q, k, v projections, head
    split `[N, T, C] -> [N, T, H, D]` and transpose, Q.K^T (two activations), scale, Softmax, the
    SDPA decomposition's `Where(IsNaN(p), 0, p)`, attn.V, merge back and an output projection.
    `gqa`: 4 query heads share 2 kv heads through `Unsqueeze -> Expand -> Reshape`; `fused_qkv`: one
    projection to 3C split ViT-style (`[N, T, 3, H, D]`, permute, equal Split, Squeeze)."""
    n = Net(f"attention_{kind}", opset=17)
    t, c, d = 6, 8, 4
    heads = 4 if kind == "gqa" else 2
    kv = 2
    split = n.ints("split_heads", [0, t, -1, d])
    to_heads = [0, 2, 1, 3]
    if kind == "fused_qkv":
        qkv = n.matmul("x", c, 3 * c, "qkv")
        qkv = n.op("Reshape", [qkv, n.ints("split_qkv", [0, t, 3, heads, d])], "split_qkv_heads")
        qkv = n.op("Transpose", [qkv], "qkv_first", perm=[2, 0, 3, 1, 4])
        parts = n.op("Split", [qkv], "unbind", outputs=3, axis=0)
        q, k, v = (n.op("Squeeze", [p, n.ints(f"axis0_{i}", [0])], f"{name}_heads") for i, (p, name) in enumerate(zip(parts, "qkv")))
    else:
        q = n.op("Transpose", [n.op("Reshape", [n.matmul("x", c, heads * d, "q"), split], "q_split")], "q_heads", perm=to_heads)
        k, v = (n.op("Transpose", [n.op("Reshape", [n.matmul("x", c, kv * d, name), split], f"{name}_split")],
                     f"{name}_heads", perm=to_heads) for name in "kv")
        if kind == "gqa":
            rep = heads // kv
            target = n.ints("gqa_expand", [1, kv, rep, t, d])
            k, v = (n.op("Reshape", [n.op("Expand", [n.op("Unsqueeze", [x, n.ints(f"{name}_ax", [2])], f"{name}_unsq"), target],
                                          f"{name}_expand"), n.ints(f"{name}_merge", [0, heads, t, d])], f"{name}_rep")
                    for x, name in ((k, "k"), (v, "v")))
    if kind == "dynamo_k_transpose":
        # torch.export's k.transpose(-2, -1): merge batch and heads into one dynamic axis, swap,
        # and split back with the sizes read from k's own shape.
        shape = n.op("Shape", [k], "k_shape")
        first = n.op("Slice", [shape, n.ints("s0", [0]), n.ints("s2", [2])], "k_batch_heads")
        last = n.op("Slice", [shape, n.ints("s2b", [2]), n.ints("s4", [4])], "k_td")
        merged = n.op("Reshape", [k, n.op("Concat", [n.ints("minus1", [-1]), last], "merge_target", axis=0)], "k_merge")
        swapped = n.op("Transpose", [merged], "k_swap", perm=[0, 2, 1])
        d_t = n.op("Concat", [n.op("Slice", [last, n.ints("s1", [1]), n.ints("s2c", [2])], "k_d"),
                              n.op("Slice", [last, n.ints("s0b", [0]), n.ints("s1b", [1])], "k_t_size")], "dt", axis=0)
        k_t = n.op("Reshape", [swapped, n.op("Concat", [first, d_t], "split_target", axis=0)], "k_unmerge")
    else:
        k_t = n.op("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
    scores = n.op("MatMul", [q, k_t], "scores")
    scores = n.op("Mul", [scores, n.const("scale", np.array(d ** -0.5, np.float32))], "scaled")
    probs = n.op("Softmax", [scores], "softmax", axis=-1)
    probs = n.op("Where", [n.op("IsNaN", [probs], "isnan"), n.const("zero", np.array(0, np.float32)), probs], "guard")
    out = n.op("MatMul", [probs, v], "attn_v")
    out = n.op("Reshape", [n.op("Transpose", [out], "back", perm=to_heads), n.ints("merge_heads", [0, t, heads * d])], "merge")
    return n.build({"x": ["N", t, c]}, [n.matmul(out, heads * d, 5, "o")])


def crnn_reshape() -> onnx.ModelProto:
    """CRNN head: [N, C, H, W] -> Reshape to [N, C*H, W] with a run-time target [N, -1, W]
    (Shape -> Gather -> Concat) -> [N, W, C*H] -> dense."""
    n = Net("crnn_reshape")
    x = n.op("MaxPool", [n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")], "p1", kernel_shape=[4, 1], strides=[4, 1])
    shape = n.op("Shape", [x], "shape")
    batch = n.op("Unsqueeze", [n.op("Gather", [shape, n.ints("i0", 0)], "g0"), n.ints("ax0", [0])], "u0")
    width = n.op("Unsqueeze", [n.op("Gather", [shape, n.ints("i3", 3)], "g3"), n.ints("ax0b", [0])], "u3")
    target = n.op("Concat", [batch, n.ints("rest", [-1]), width], "target", axis=0)
    y = n.op("Transpose", [n.op("Reshape", [x, target], "merge")], "tr", perm=[0, 2, 1])
    return n.build({"x": ["N", 3, 8, 6]}, [n.matmul(y, 16, 5, "fc")])


def shape_gather_slice() -> onnx.ModelProto:
    """A size read at run time (Shape -> Gather(2) -> Div) bounds a Slice along H: only H is read,
    so the channels stay prunable."""
    n = Net("shape_gather_slice")
    x = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    height = n.op("Unsqueeze", [n.op("Gather", [n.op("Shape", [x], "shape"), n.ints("i2", 2)], "g2"), n.ints("ax0", [0])], "u2")
    half = n.op("Div", [height, n.ints("two", [2])], "half")
    y = n.op("Slice", [x, n.ints("start", [0]), half, n.ints("axes", [2])], "top")
    return n.build({"x": ["N", 3, 8, 8]}, [n.conv(y, 8, 4, "c2")])


def constant_of_shape() -> onnx.ModelProto:
    """A zero tensor shaped like an activation (ConstantOfShape(Shape(x))), added to it."""
    n = Net("constant_of_shape")
    x = n.op("Relu", [n.conv("x", 3, 8, "c1")], "r1")
    zeros = n.op("ConstantOfShape", [n.op("Shape", [x], "shape")], "zeros",
                 value=numpy_helper.from_array(np.zeros(1, np.float32)))
    return n.build({"x": ["N", 3, 8, 8]}, [n.conv(n.op("Add", [x, zeros], "plus"), 8, 4, "c2")])


def unit_split() -> onnx.ModelProto:
    """Three channels split into three single-channel branches: none of them can go."""
    n = Net("unit_split")
    a, b, c = n.op("Split", [n.conv("x", 3, 3, "c1"), n.ints("sizes", [1, 1, 1])], "split", outputs=3, axis=1)
    y = n.op("Add", [n.op("Add", [n.conv(a, 1, 4, "ca"), n.conv(b, 1, 4, "cb")], "ab"), n.conv(c, 1, 4, "cc")], "abc")
    return n.build({"x": ["N", 3, 8, 8]}, [y])


RMSNORM = ("reciprocal", "div")


def rmsnorm(kind: str) -> onnx.ModelProto:
    """A dense layer, RMSNorm over its output channels as the exporters write it, a dense layer:
    `reciprocal` (dynamo: ... -> Sqrt -> Reciprocal -> Mul(x) -> Mul(w)) or `div` (legacy:
    ... -> Sqrt -> Div(1, .) -> Mul(x) -> Mul(w))."""
    n = Net(f"rmsnorm_{kind}", opset=17)
    x = n.matmul("x", 8, 8, "fc1")
    mean = n.op("ReduceMean", [n.op("Pow", [x, n.const("two", np.array(2, np.float32))], "square")], "mean",
                axes=[-1], keepdims=1)
    root = n.op("Sqrt", [n.op("Add", [mean, n.const("eps", np.array(1e-2, np.float32))], "add_eps")], "root")
    if kind == "div":
        inverse = n.op("Div", [n.const("one", np.array(1, np.float32)), root], "inverse")
    else:
        inverse = n.op("Reciprocal", [root], "inverse")
    y = n.op("Mul", [n.param("norm.w", (8,), 0.3, 1.0), n.op("Mul", [x, inverse], "normed")], "scaled")
    return n.build({"x": ["N", 6, 8]}, [n.matmul(y, 8, 5, "fc2")])
