"""Inputs that real models can run on, when the user gives no data.

Exported models declare dynamic dimensions in many spellings (a symbolic name, no value, -1 or 0)
and most of them cannot run at every size: a 32x-downsampling detector with skip connections
fails at 16x16, a CRNN recogniser only at heights whose feature map collapses to 1, a VAD net
needs enough samples for its STFT padding.  So the sizes are chosen by trying: the user's
`--input-shape NAME:1x3x640x640`, then size hints in the model's metadata or doc string, then
common sizes, each checked by running the ORIGINAL model in onnxruntime.  The first assignment on
which the original runs is used; when none runs, the user is told which input to give a shape.

Integer inputs get values a model accepts: below the size of the table they index (an input the
ONNX schema calls `indices`, read from a constant, or token ids that reach an embedding Gather
through Reshape/Cast/...: `ops.layout.embedding_rows`), one of the constants a scalar "choice"
input is compared with (a VAD's sample rate), otherwise ones (attention masks, counts).  Dynamic
axes that share a symbolic name (`batch`, `sequence`) take one size across inputs, the one
`--input-shape` gives where it names one of them: `--input-shape input_ids:1x128` makes the
attention mask 1x128 too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from .errors import InputError
from .graph import ModelIndex

BATCH = 2
"""Batch size for a dynamic axis 0 (two samples catch batch-mixing mistakes, one would not)."""

CANDIDATE_SIZES = (224, 32, 320, 64, 640, 48, 96, 128, 256, 512, 16)
"""Sizes tried for the other dynamic axes, all together, after the model's own hints: common image
sizes that survive strides of 32, with small ones early because a failed run at a large size is
slow (a CRNN recogniser runs only where its feature map's height collapses to 1)."""

MAX_ELEMENTS = 1 << 24
"""Assignments with a larger input (64 MB of float32) are not tried: the all-axes-one-size round
would otherwise make a batch of 640 images of 640x640."""

MAX_ATTEMPTS = 40
"""Assignments tried at most before giving up (each is one onnxruntime run of the original)."""


@dataclass(frozen=True)
class InputShape:
    """One `--input-shape NAME:D0xD1x...` given by the user (an empty dims tuple: a 0-d input)."""

    name: str
    dims: tuple[int, ...]


def parse_input_shape(text: str) -> InputShape:
    """'x:1x3x640x640' (onnxsim's spelling; ',' also separates dims) -> InputShape."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise InputError(f"options: --input-shape '{text}': expected NAME:D0xD1x..., e.g. x:1x3x640x640")
    try:
        sizes = tuple(int(d) for d in re.split(r"[x,]", dims)) if dims.strip() else ()
    except ValueError:
        raise InputError(f"options: --input-shape '{text}': dimensions must be positive integers separated by 'x'") from None
    if any(s <= 0 for s in sizes):
        raise InputError(f"options: --input-shape '{text}': dimensions must be positive integers separated by 'x'")
    return InputShape(name, sizes)


def parse_input_shapes(texts: list[str] | None) -> dict[str, tuple[int, ...]]:
    """The repeatable CLI option as {input name: dims}; a name given twice is refused."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts or []:
        shape = parse_input_shape(text)
        if shape.name in shapes:
            raise InputError(f"options: --input-shape names input '{shape.name}' twice")
        shapes[shape.name] = shape.dims
    return shapes


def model_inputs(index: ModelIndex) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers (what a caller must feed)."""
    return [vi for vi in index.model.graph.input if vi.name not in index.initializers]


def dim_symbols(vi: onnx.ValueInfoProto) -> list[str | None]:
    """Each dimension's symbolic name (`batch`, `sequence_length`), None where it has none."""
    return [d.dim_param if d.HasField("dim_param") and d.dim_param else None for d in vi.type.tensor_type.shape.dim]


def given_symbols(index: ModelIndex, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Symbolic dimension name -> the size `--input-shape` gives it (on any input that has it)."""
    symbols: dict[str, int] = {}
    for vi in model_inputs(index):
        if vi.name in shapes:
            for symbol, size in zip(dim_symbols(vi), shapes[vi.name]):
                if symbol:
                    symbols.setdefault(symbol, size)
    return symbols


def declared_dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    """Each dimension of an input: its size, or None when dynamic (a symbolic name, no value, or a
    value of -1 or 0, both of which exporters write for 'any size')."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]


def check_input_shapes(index: ModelIndex, shapes: dict[str, tuple[int, ...]], source: Path) -> None:
    """Every `--input-shape` names an input, has its rank and agrees with its fixed sizes."""
    inputs = {vi.name: vi for vi in model_inputs(index)}
    for name, dims in shapes.items():
        if name not in inputs:
            raise InputError(f"{source}: --input-shape: the model has no input '{name}' (inputs: {', '.join(inputs)})")
        declared = declared_dims(inputs[name])
        if len(dims) != len(declared):
            raise InputError(f"{source}: --input-shape {name}: {len(dims)} dimensions given, the input has {len(declared)}")
        for axis, (given, fixed) in enumerate(zip(dims, declared)):
            if fixed is not None and given != fixed:
                raise InputError(f"{source}: --input-shape {name}: axis {axis} is fixed at {fixed} in the model, got {given}")


# --- size hints --------------------------------------------------------------------------------

def size_hints(model: onnx.ModelProto, n_dynamic: int) -> list[tuple[int, ...]]:
    """Integer tuples of length `n_dynamic` named in the model's metadata or doc string, e.g.
    ultralytics' imgsz "[320, 320]" (exporters record the size the model was trained at)."""
    texts = [p.value for p in model.metadata_props] + [model.doc_string, model.graph.doc_string]
    hints: list[tuple[int, ...]] = []
    for text in texts:
        for match in re.finditer(r"\d+(?: *[x,] *\d+)*", text or ""):
            numbers = tuple(int(n) for n in re.findall(r"\d+", match.group()))
            if len(numbers) >= n_dynamic and all(0 < n <= 8192 for n in numbers):
                tail = numbers[-n_dynamic:] if n_dynamic else ()
                if tail and tail not in hints:
                    hints.append(tail)
    return hints


# --- integer values ----------------------------------------------------------------------------

def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def index_bound(index: ModelIndex, name: str) -> int | None:
    """The smallest table size that input `name` indexes directly: for every consumer whose ONNX
    schema calls that input `indices`, the size of its `data` on the node's axis."""
    bounds = []
    for node_i, slot in index.consumers.get(name, []):
        node = index.model.graph.node[node_i]
        if slot < 0:
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, index.opset, node.domain)
        except onnx.defs.SchemaError:
            continue
        formal = [f.name for f in schema.inputs]
        if slot >= len(formal) or formal[slot] != "indices" or "data" not in formal:
            continue
        data_shape = index.shapes.get(node.input[formal.index("data")])
        if not data_shape:
            continue
        axis = _attribute(node, "axis", 0) % len(data_shape)
        if isinstance(data_shape[axis], int):
            bounds.append(data_shape[axis])
    return min(bounds) if bounds else None


def choice_values(index: ModelIndex, name: str) -> list[int]:
    """Integer scalars that the nodes reading input `name` combine it with (a sample rate compared
    with 16000, a mode compared with a constant): the values such a 'choice' input is meant to take."""
    values: list[int] = []
    for node_i, slot in index.consumers.get(name, []):
        if slot < 0:
            continue
        for other in index.model.graph.node[node_i].input:
            if other and other != name and index.is_const(other):
                value = index.const(other)
                if value is not None and value.size == 1 and np.issubdtype(value.dtype, np.integer):
                    values.append(int(value.reshape(())))
    return list(dict.fromkeys(values))


def integer_values(index: ModelIndex, vi: onnx.ValueInfoProto, shape: tuple[int, ...], dtype: np.dtype,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Candidate arrays for an integer or boolean input, best first."""
    if dtype == np.bool_:
        return [np.ones(shape, dtype=dtype)]
    from .ops.layout import embedding_rows

    bounds = [b for b in (index_bound(index, vi.name), embedding_rows(index, vi.name)) if b]
    bound = min(bounds) if bounds else None
    if bound:
        return [rng.integers(0, bound, size=shape).astype(dtype)]
    if int(np.prod(shape)) == 1:
        return [np.full(shape, v, dtype=dtype) for v in choice_values(index, vi.name) + [1, 0]]
    return [np.ones(shape, dtype=dtype), np.zeros(shape, dtype=dtype)]


# --- choosing and checking ---------------------------------------------------------------------

@dataclass
class ChosenInputs:
    """Inputs on which the original model runs, and its outputs on them (verification's reference)."""

    feeds: dict[str, np.ndarray]
    outputs: list[np.ndarray]
    activity: Callable | None = None
    """The channels' mean |activation| on `feeds`, as a criterion (importance.ChannelTally), from
    the same run; None where that run did not watch them (api.check_runs says when)."""


def _shape_assignments(index: ModelIndex, shapes: dict[str, tuple[int, ...]], batch: int) -> Iterator[dict[str, tuple[int, ...]]]:
    """Candidate shapes for all inputs: the user's where given; dynamic axes 0 get BATCH and the
    other dynamic axes one common size (hints, then CANDIDATE_SIZES); finally every dynamic axis,
    batch included, one common size (for state inputs whose batch sits on another axis).  An axis
    whose symbolic name the user's shapes give a size takes that size in every assignment."""
    inputs = {vi.name: vi for vi in model_inputs(index) if vi.name not in shapes}
    symbols = given_symbols(index, shapes)
    declared = {name: [symbols.get(symbol, d) if d is None else d for d, symbol in zip(declared_dims(vi), dim_symbols(vi))]
                for name, vi in inputs.items()}
    n_dynamic = max((sum(d is None for d in dims[1:]) for dims in declared.values()), default=0)
    if not any(None in dims for dims in declared.values()):
        yield {**{k: tuple(d for d in dims) for k, dims in declared.items()}, **shapes}
        return
    hints = [h for h in size_hints(index.model, n_dynamic)]

    def fill(sizes: tuple[int, ...], first: int | None) -> dict[str, tuple[int, ...]]:
        out = dict(shapes)
        for k, dims in declared.items():
            rest = iter(sizes)
            out[k] = tuple(d if d is not None else (first if axis == 0 and first and len(dims) > 1 else next(rest, sizes[-1]))
                           for axis, d in enumerate(dims))
        return out

    for sizes in hints + [(s,) * max(n_dynamic, 1) for s in CANDIDATE_SIZES]:
        yield fill(sizes, batch)
    for s in CANDIDATE_SIZES:
        yield fill((s,) * max(n_dynamic, 1), None)


def _candidate_feeds(index: ModelIndex, assignment: dict[str, tuple[int, ...]], seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Arrays for one shape assignment: floats standard normal, integers from `integer_values`
    (every combination of their candidates, few in practice)."""
    rng = np.random.default_rng(seed)
    options: dict[str, list[np.ndarray]] = {}
    for vi in model_inputs(index):
        shape = assignment[vi.name]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        if np.issubdtype(dtype, np.floating):
            options[vi.name] = [rng.standard_normal(shape).astype(dtype)]
        else:
            options[vi.name] = integer_values(index, vi, shape, dtype, rng)
    names = list(options)
    for combo in product(*(options[n] for n in names)):
        yield dict(zip(names, combo))


def _describe(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}:{'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())


def probe_session(model: onnx.ModelProto | str, source: Path, arrays: dict[str, np.ndarray] | None = None):
    """An onnxruntime session on the original, quiet about the failures probing expects; a model
    onnxruntime cannot load (an op it does not know) is refused as bad input.  `arrays` holds the
    data of initializers that are stubs in `model` (mapped weights, ModelIndex.external)."""
    import onnxruntime as ort

    from .runtime import make_session

    try:
        session = make_session(model, prepack=False, quiet=True, arrays=arrays)
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as exc:
        raise InputError(f"{source}: onnxruntime cannot load the model, so no pruned model could be verified "
                         f"({_first_line(exc)})") from None
    return session


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)


def choose_inputs(index: ModelIndex, shapes: dict[str, tuple[int, ...]] | None = None, source: Path = Path("<model>"),
                  model: onnx.ModelProto | str | None = None, seed: int = 0, batch: int = BATCH,
                  arrays: dict[str, np.ndarray] | None = None) -> ChosenInputs:
    """Deterministic random inputs on which the original model runs (see the module docstring).
    `model` is what onnxruntime loads (the file's path avoids a serialised copy); default the
    index's model.  `arrays` holds the data of `model`'s stub initializers (see probe_session)."""
    from .runtime import run_chunked

    shapes = dict(shapes or {})
    check_input_shapes(index, shapes, source)
    session = probe_session(model if model is not None else index.model, source, arrays if model is not None else index.external)
    tried: list[str] = []
    last_error = ""
    attempts = 0
    seen: list[dict] = []
    for assignment in _shape_assignments(index, shapes, batch):
        if assignment in seen or max((int(np.prod(d)) for d in assignment.values()), default=0) > MAX_ELEMENTS:
            continue
        seen.append(assignment)
        for feeds in _candidate_feeds(index, assignment, seed):
            attempts += 1
            try:
                return ChosenInputs(feeds, run_chunked(session, feeds))
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a run that fails
                last_error = _first_line(exc)
                if _describe(feeds) not in tried:
                    tried.append(_describe(feeds))
            if attempts >= MAX_ATTEMPTS:
                break
        if attempts >= MAX_ATTEMPTS:
            break
    raise InputError(refusal(index, shapes, source, tried, last_error))


def refusal(index: ModelIndex, shapes: dict[str, tuple[int, ...]], source: Path, tried: list[str], error: str) -> str:
    """One line: which input needs a size (or data) and how to give it."""
    dynamic = [vi for vi in model_inputs(index) if vi.name not in shapes and None in declared_dims(vi)]
    if dynamic:
        vi = dynamic[0]
        example = "x".join(str(d) if d is not None else ("N" if k == 0 else "S") for k, d in enumerate(declared_dims(vi)))
        return (f"{source}: the original model does not run on any size tried for input '{vi.name}' "
                f"({'; '.join(tried[:3])}{'; ...' if len(tried) > 3 else ''}: {error}); "
                f"pass --input-shape {vi.name}:{example} with the sizes it runs at, or --data")
    return f"{source}: onnxruntime cannot run the original model on inputs {tried[0] if tried else ''} ({error}); pass --data with real inputs"
