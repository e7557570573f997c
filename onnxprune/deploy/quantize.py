"""Static int8 quantization with onnxruntime (prune first, then quantize: onnxprune refuses to
prune a quantized model).

The float model goes through onnxruntime's `quant_pre_process` (shape inference, so dynamic batch
axes are fine, and graph optimisation; node names are kept), is calibrated on the .npz (MinMax),
and quantized as QDQ (QuantizeLinear/DequantizeLinear pairs, what most runtimes expect) or
QOperator (QLinearConv, ...), uint8 activations and int8 weights (U8S8, onnxruntime's fast path on
x86).  `keep_float` leaves chosen layers in float, typically the first and
last, which are the most sensitive to quantization and cost little."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..data import load_calibration
from ..errors import InputError
from ..graph import ModelIndex
from ..ops import NodeContext
from ..load import load_model
from ..runtime import batches, make_session, sample_count
from ..save import save_model

FORMATS = ("qdq", "qoperator")
CALIBRATION_BATCH = 32


@dataclass
class Fidelity:
    """The quantized model against the float one on the calibration inputs."""

    samples: int
    top1_agreement: float
    max_abs_diff: float
    accuracy_float: float | None = None
    accuracy_int8: float | None = None


@dataclass
class QuantizeReport:
    output: Path
    format: str
    per_channel: bool
    kept_float: list[str] = field(default_factory=list)
    fidelity: Fidelity | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "output": str(self.output)}


def feed_batches(feeds: dict[str, np.ndarray], model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Calibration batches: the model's static batch size if it has one, else CALIBRATION_BATCH."""
    first = next(vi for vi in model.graph.input if vi.name in feeds).type.tensor_type.shape.dim
    static = first[0].dim_value if first and first[0].HasField("dim_value") else None
    return [b for b in batches(feeds, static or CALIBRATION_BATCH) if static is None or sample_count(b) == static]


def name_nodes(model: onnx.ModelProto) -> None:
    """nodes_to_exclude works by node name: give unnamed nodes a stable one (op type and position)."""
    taken = {n.name for n in model.graph.node}
    for k, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{k}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def resolve_keep_float(model: onnx.ModelProto, spec: list[str], source: Path) -> list[str]:
    """'first' / 'last' (the first / last Conv, Gemm or MatMul) and node names -> node names."""
    index = ModelIndex.build(model)
    weighted = [n.name for i, n in enumerate(model.graph.node) if (ctx := NodeContext(index, i)).rule.weights(ctx)]
    names = {n.name for n in model.graph.node}
    resolved = []
    for item in spec:
        if item in ("first", "last"):
            if not weighted:
                raise InputError(f"{source}: --keep-float {item}: the model has no Conv, Gemm or MatMul")
            resolved.append(weighted[0] if item == "first" else weighted[-1])
        elif item in names:
            resolved.append(item)
        else:
            raise InputError(f"{source}: --keep-float: no node named '{item}' (use first, last or node names)")
    return list(dict.fromkeys(resolved))


def _reader(calibration: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class NpzReader(CalibrationDataReader):
        """Feeds the calibration batches once (quantize_static may rewind)."""

        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

        def rewind(self) -> None:
            self.items = iter(calibration)

    return NpzReader()


def labels_of(data: str | Path) -> np.ndarray | None:
    """The 'labels' array of a calibration .npz, if it has one (for accuracy)."""
    loaded = np.load(data, allow_pickle=False)
    return loaded["labels"] if isinstance(loaded, np.lib.npyio.NpzFile) and "labels" in loaded.files else None


def fidelity(float_model: onnx.ModelProto, quantized: onnx.ModelProto, feeds: dict[str, np.ndarray],
             labels: np.ndarray | None) -> Fidelity:
    """Top-1 agreement and max abs difference on the first output; accuracy when labels are given."""
    a_session, b_session = make_session(float_model), make_session(quantized)
    parts = [(a_session.run(None, f)[0], b_session.run(None, f)[0]) for f in feed_batches(feeds, float_model)]
    a, b = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    top_a, top_b = a.reshape(len(a), -1).argmax(1), b.reshape(len(b), -1).argmax(1)
    result = Fidelity(len(a), float(np.mean(top_a == top_b)), float(np.max(np.abs(a.astype(np.float64) - b))))
    if labels is not None and len(labels) >= len(a):
        result.accuracy_float = float(np.mean(top_a == labels[:len(a)]))
        result.accuracy_int8 = float(np.mean(top_b == labels[:len(a)]))
    return result


def quantize_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], per_channel: bool = False, fmt: str = "qdq",
                   keep_float: list[str] | None = None, source: Path = Path("<model>")) -> tuple[onnx.ModelProto, list[str]]:
    """(quantized model, names of the nodes kept in float)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in FORMATS:
        raise InputError(f"options: --format {fmt}: choose {' or '.join(FORMATS)}")
    with tempfile.TemporaryDirectory(prefix="onnxprune_quant_") as tmp:
        named = onnx.ModelProto()
        named.CopyFrom(model)
        name_nodes(named)
        plain = save_model(named, Path(tmp) / "float.onnx")
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(plain), str(prepared))
        prepared_model = onnx.load(str(prepared))
        excluded = resolve_keep_float(prepared_model, keep_float or [], source)
        quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), _reader(feed_batches(feeds, model)),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
        return onnx.load(str(Path(tmp) / "int8.onnx")), excluded


def quantize(model_path: str | Path, output: str | Path, data: str | Path, per_channel: bool = False, fmt: str = "qdq",
             keep_float: list[str] | None = None) -> QuantizeReport:
    """Quantize MODEL with the calibration .npz, report fidelity on it, write OUT atomically."""
    loaded = load_model(model_path)
    feeds = load_calibration(data, ModelIndex.build(loaded.model))
    quantized, kept = quantize_model(loaded.model, feeds, per_channel, fmt, keep_float, Path(model_path))
    report = QuantizeReport(Path(output), fmt, per_channel, kept, fidelity(loaded.model, quantized, feeds, labels_of(data)))
    save_model(quantized, output)
    return report
