"""Property-based fuzzing: random valid graphs from the supported op set, with dead channels planted.

`graphs()` builds an NCHW network from random blocks (conv/BN/activation, residual Add, Concat of
branches, Split into branches, depthwise and grouped convs, squeeze-excite, NHWC round trips,
pooling, Resize) and a random head (1x1 conv, GAP/Flatten/Gemm, Flatten/Gemm, NHWC flatten/Gemm).
While building it records, independently of onnxprune, which channels must be pruned together: a
union-find over (tensor, channel) joined through every op that passes channels on (a grouped conv
ties each group's input and output channels into one unit).  It then zeroes every producer
(conv rows and biases, BN scale and shift) of a few random unblocked classes; those channels, and
only those, are what `plan(threshold=0)` must remove.

`scripts/fuzz.py` runs the same properties for a given time.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handbuilt as hb  # noqa: E402
import onnxprune  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=10**9, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("ONNXPRUNE_FUZZ_PROFILE", "ci")

ACTIVATIONS = ("Relu", "LeakyRelu", "Tanh", "HardSwish", None)
BLOCKS = ("conv", "residual", "concat", "split", "depthwise", "grouped", "se", "nhwc", "pool", "resize")
HEADS = ("conv", "gap_gemm", "flatten_gemm", "nhwc_gemm")


@dataclass
class Fuzzed:
    """A generated model and what the dead-channel prune must do to it."""

    model: onnx.ModelProto
    expected_removed: dict[str, int]
    """Output channels each conv (by weight name) loses to `threshold=0`."""
    blocks: list[str] = field(default_factory=list)


class _Builder:
    """hb.Net plus the channel union-find and, per feature tensor, the initializers whose axis-0
    slice c produces its channel c (zeroed when the channel's class is planted)."""

    def __init__(self, seed: int):
        self.net = hb.Net("fuzz", opset=14, seed=seed)
        self.parent: dict[tuple[str, int], tuple[str, int]] = {}
        self.producers: dict[str, list[str]] = {}
        self.convs: dict[str, str] = {}  # weight name -> output tensor

    def find(self, key: tuple[str, int]) -> tuple[str, int]:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        self.parent[self.find(a)] = self.find(b)

    def same(self, a: str, b: str, c: int, offset_b: int = 0) -> None:
        for k in range(c):
            self.union((a, k), (b, k + offset_b))

    def conv(self, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1, bias: bool = True) -> str:
        y = self.net.conv(x, cin, cout, name, k=k, group=group, bias=bias)
        self.producers[y] = [f"{name}.w"] + ([f"{name}.b"] if bias else [])
        self.convs[f"{name}.w"] = y
        for c in range(cout):
            self.find((y, c))
        if group > 1:  # each group's input and output channels form one pruning unit
            for g in range(group):
                members = [(x, g * cin // group + i) for i in range(cin // group)]
                members += [(y, g * cout // group + i) for i in range(cout // group)]
                for m in members[1:]:
                    self.union(members[0], m)
        return y

    def bn(self, x: str, c: int, name: str) -> str:
        y = self.net.bn(x, c, name)
        self.producers[y] = [f"{name}.scale", f"{name}.bias"]
        self.same(x, y, c)
        return y

    def unary(self, op: str | None, x: str, c: int, **attrs) -> str:
        if op is None:
            return x
        if op == "LeakyRelu":
            attrs.setdefault("alpha", 0.1)
        y = self.net.op(op, [x], **attrs)
        self.same(x, y, c)
        return y

    def plant(self, blocked: set[tuple[str, int]], choose) -> dict[str, int]:
        """Zero the producers of the classes `choose(candidates)` picks, as long as every tensor keeps
        a live channel; returns the expected removals."""
        classes: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for key in list(self.parent):
            classes.setdefault(self.find(key), []).append(key)
        blocked_roots = {self.find(b) for b in blocked if b in self.parent}
        candidates = sorted(r for r, members in classes.items()
                            if r not in blocked_roots and any(t in self.producers for t, _ in members))
        live: dict[str, int] = {}
        for tensor, _ in self.parent:
            live[tensor] = live.get(tensor, 0) + 1
        planted = set()
        for root in choose(candidates):  # onnxprune empties no layer: every tensor keeps a channel
            hit = [t for t, _ in classes[root]]
            if all(live[t] > hit.count(t) for t in set(hit)):
                planted.add(root)
                for t in hit:
                    live[t] -= 1
        for root in planted:
            for tensor, c in classes[root]:
                for init in self.producers.get(tensor, []):
                    self.net.inits[init][c] = 0
        return {w: sum(self.find((y, c)) in planted for c in range(self.net.inits[w].shape[0]))
                for w, y in self.convs.items()}


def _block(draw, b: _Builder, kind: str, x: str, c: int, h: int, i: int) -> tuple[str, int, int]:
    """Append one block of `kind` after feature map x (c channels, h x h); returns the new one."""
    act = draw(st.sampled_from(ACTIVATIONS))
    width = st.integers(2, 12)
    if kind == "conv":
        cout = draw(width)
        y = b.conv(x, c, cout, f"b{i}", k=draw(st.sampled_from([1, 3])), bias=draw(st.booleans()))
        if draw(st.booleans()):
            y = b.bn(y, cout, f"b{i}bn")
        return b.unary(act, y, cout), cout, h
    if kind == "residual":
        y = b.unary(act, b.bn(b.conv(x, c, c, f"b{i}", bias=False), c, f"b{i}bn"), c)
        out = b.net.op("Add", [x, y])
        b.same(x, out, c)
        b.same(y, out, c)
        return out, c, h
    if kind == "concat":
        sizes = [draw(width) for _ in range(draw(st.integers(2, 3)))]
        parts = [b.unary(act, b.conv(x, c, s, f"b{i}_{k}"), s) for k, s in enumerate(sizes)]
        out = b.net.op("Concat", parts, axis=1)
        offset = 0
        for part, s in zip(parts, sizes):
            b.same(part, out, s, offset)
            offset += s
        return out, offset, h
    if kind == "split":
        total = draw(st.integers(4, 12))
        first = draw(st.integers(1, total - 1))
        y = b.unary(act, b.conv(x, c, total, f"b{i}"), total)
        parts = b.net.op("Split", [y, b.net.ints(f"b{i}_sizes", [first, total - first])], outputs=2, axis=1)
        cout = draw(width)
        outs = []
        for k, (part, s, offset) in enumerate(zip(parts, [first, total - first], [0, first])):
            b.same(part, y, s, offset)
            outs.append(b.conv(part, s, cout, f"b{i}_{k}", k=1))
        out = b.net.op("Add", outs)
        for o in outs:
            b.same(o, out, cout)
        return out, cout, h
    if kind == "depthwise":
        y = b.conv(x, c, c, f"b{i}", group=c)
        return b.unary(act, y, c), c, h
    if kind == "grouped":
        group = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0] or [1]))
        cout = group * draw(st.integers(1, 4))
        return b.unary(act, b.conv(x, c, cout, f"b{i}", group=group), cout), cout, h
    if kind == "se":
        r = draw(st.integers(1, 6))
        g = b.net.op("GlobalAveragePool", [x])
        b.same(x, g, c)
        g = b.unary("Relu", b.conv(g, c, r, f"b{i}_se1", k=1), r)
        g = b.unary("Sigmoid", b.conv(g, r, c, f"b{i}_se2", k=1), c)
        out = b.net.op("Mul", [x, g])
        b.same(x, out, c)
        b.same(g, out, c)
        return out, c, h
    if kind == "nhwc":
        y = b.unary(act or "Relu", b.net.op("Transpose", [x], perm=[0, 2, 3, 1]), c)
        out = b.net.op("Transpose", [y], perm=[0, 3, 1, 2])
        b.same(x, y, c)
        b.same(y, out, c)
        return out, c, h
    if kind == "pool":
        if h >= 4 and h % 2 == 0 and draw(st.booleans()):
            out, h = b.net.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), h // 2
        else:
            out = b.net.op("AveragePool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        b.same(x, out, c)
        return out, c, h
    assert kind == "resize"
    if h > 8:
        return x, c, h
    out = b.net.op("Resize", [x, "", b.net.const(f"b{i}_scales", np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    b.same(x, out, c)
    return out, c, 2 * h


def _head(draw, b: _Builder, x: str, c: int, h: int) -> str:
    kind = draw(st.sampled_from(HEADS))
    classes = draw(st.integers(2, 6))
    if kind == "conv":
        return b.conv(x, c, classes, "head", k=1)
    if kind == "gap_gemm":
        g = b.net.op("GlobalAveragePool", [x])
        flat = b.net.op("Flatten", [g], axis=1)
        b.same(x, g, c)
        b.same(x, flat, c)
        return b.net.gemm(flat, c, classes, "head")
    if kind == "nhwc_gemm":
        x = b.unary("Relu", b.net.op("Transpose", [x], perm=[0, 2, 3, 1]), c)
    flat = b.net.op("Flatten", [x], axis=1)
    return b.net.gemm(flat, c * h * h, classes, "head")


@st.composite
def graphs(draw) -> Fuzzed:
    b = _Builder(draw(st.integers(0, 2**16)))
    h0 = h = draw(st.sampled_from([4, 6, 8]))
    x, c = "x", 3
    for k in range(3):
        b.find((x, k))
    c0 = draw(st.integers(2, 12))
    x = b.unary(draw(st.sampled_from(ACTIVATIONS)), b.conv(x, c, c0, "stem"), c0)
    c = c0
    kinds = draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=6))
    for i, kind in enumerate(kinds):
        x, c, h = _block(draw, b, kind, x, c, h, i)
    y = _head(draw, b, x, c, h)
    blocked = {("x", k) for k in range(3)} | {(y, k) for k in range(16)}
    expected = b.plant(blocked, lambda cands: draw(st.lists(st.sampled_from(cands), unique=True, max_size=4))
                       if cands else [])
    model = b.net.build({"x": ["N", 3, h0, h0]}, [y])
    return Fuzzed(model, expected, ["stem"] + kinds)


# === properties (shared with scripts/fuzz.py) ================================================

def _run(model: onnx.ModelProto, batch: int) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    shape = [batch] + [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return session.run(None, {"x": np.random.default_rng(batch).standard_normal(shape).astype(np.float32)})


def _weight(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def check_dead_channels_exact(case: Fuzzed) -> None:
    """threshold 0 removes exactly the planted channels and keeps the outputs (rel err <= 1e-5)."""
    m = onnxprune.PrunableModel(case.model)
    result = m.apply(m.plan(threshold=0))
    assert result.exact
    for batch in (2, 3):
        for a, b in zip(_run(case.model, batch), _run(result.model, batch)):
            assert a.shape == b.shape
            scale = max(float(np.max(np.abs(a))), 1e-30)
            assert float(np.max(np.abs(a.astype(np.float64) - b))) / scale <= 1e-5
    removed = {w: _weight(case.model, w).dims[0] - _weight(result.model, w).dims[0]
               for w in case.expected_removed}
    assert removed == case.expected_removed


def check_ratio(case: Fuzzed, ratio: float, criterion: str, global_ranking: bool) -> None:
    """Any ratio gives a model that passes the full checker and runs with unchanged output shapes."""
    m = onnxprune.PrunableModel(case.model)
    result = m.apply(m.plan(criterion, ratio=ratio, global_ranking=global_ranking))
    onnx.checker.check_model(result.model, full_check=True)
    for batch in (2, 3):
        assert [a.shape for a in _run(case.model, batch)] == [b.shape for b in _run(result.model, batch)]


def check_inspect(case: Fuzzed) -> None:
    info = onnxprune.PrunableModel(case.model).inspect()
    assert info["params"] > 0 and info["groups"]


RATIOS = st.floats(0.1, 0.8)
CRITERIA = st.sampled_from(["random", "l1"])


@settings(settings.get_profile(PROFILE))
@given(graphs())
def test_threshold_zero_removes_exactly_the_planted_channels(case: Fuzzed):
    check_dead_channels_exact(case)


@settings(settings.get_profile(PROFILE))
@given(graphs(), RATIOS, CRITERIA, st.booleans())
def test_any_ratio_gives_a_valid_runnable_model(case: Fuzzed, ratio: float, criterion: str, global_ranking: bool):
    check_ratio(case, ratio, criterion, global_ranking)
    check_inspect(case)
