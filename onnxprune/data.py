"""Calibration data: .npy (one array, for a single-input model) or .npz (one array per input
name, or a single array for a single-input model), checked against the model's inputs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx

from .errors import InputError
from .graph import ModelIndex
from .inputs import choose_inputs, declared_dims, model_inputs


def load_calibration(path: str | Path, index: ModelIndex) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such calibration file")
    inputs = model_inputs(index)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a .npy/.npz file ({exc})") from None
    if isinstance(loaded, np.ndarray):
        arrays = {inputs[0].name: loaded} if len(inputs) == 1 else None
        if arrays is None:
            raise InputError(f"{path}: the model has {len(inputs)} inputs; give an .npz with one array per input name")
    else:
        arrays = dict(loaded.items())
        if len(inputs) == 1 and inputs[0].name not in arrays and len(arrays) == 1:
            arrays = {inputs[0].name: next(iter(arrays.values()))}
    for vi in inputs:
        if vi.name not in arrays:
            raise InputError(f"{path}: no array for model input '{vi.name}' (found: {', '.join(sorted(arrays))})")
        check_array(path, vi, arrays[vi.name])
    return {vi.name: arrays[vi.name] for vi in inputs}


def check_array(path: Path, vi: onnx.ValueInfoProto, array: np.ndarray) -> None:
    tensor_type = vi.type.tensor_type
    expected = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    if array.dtype != expected:
        raise InputError(f"{path}: input '{vi.name}' has dtype {array.dtype}, the model expects {np.dtype(expected)}")
    dims = declared_dims(vi)
    if array.ndim != len(dims):
        raise InputError(f"{path}: input '{vi.name}' has {array.ndim} dimensions {tuple(array.shape)}, the model expects {len(dims)}")
    for axis, (size, fixed) in enumerate(zip(array.shape, dims)):
        if axis == 0 and fixed and size > fixed and size % fixed == 0:
            continue  # more samples than the model's fixed batch: fed in chunks of it (runtime.run_chunked)
        if fixed is not None and fixed != size:
            chunks = f" (or a multiple of {fixed}, fed in chunks)" if axis == 0 else ""
            raise InputError(f"{path}: input '{vi.name}' has size {size} on axis {axis}, the model expects {fixed}{chunks}")


def synthetic_inputs(index: ModelIndex, batch: int = 2, seed: int = 0, shapes: dict[str, tuple[int, ...]] | None = None,
                     source: Path = Path("<model>")) -> dict[str, np.ndarray]:
    """Deterministic random inputs on which the original model runs (see inputs.choose_inputs):
    a dynamic axis 0 gets `batch`."""
    return choose_inputs(index, shapes, source, seed=seed, batch=batch).feeds


VERIFY_SAMPLES = 8


def first_samples(index: ModelIndex, feeds: dict[str, np.ndarray], count: int = VERIFY_SAMPLES) -> dict[str, np.ndarray]:
    """The first `count` samples (a multiple of the model's fixed batch, if it has one); arrays
    without a samples axis (0-d inputs) whole."""
    n = max((len(v) for v in feeds.values() if v.ndim), default=0)
    fixed = [declared_dims(vi)[0] for vi in model_inputs(index) if vi.name in feeds and feeds[vi.name].ndim]
    batch = max((b for b in fixed if b), default=1)
    take = max(batch, count // batch * batch)
    return {k: v[:take] if v.ndim and len(v) == n else v for k, v in feeds.items()}


def verification_inputs(index: ModelIndex, data: str | Path | dict | None,
                        shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """What verification runs both models on: the first samples of the user's data (a file or
    arrays already loaded), or inputs chosen so that the original runs (`shapes`: the user's
    --input-shape)."""
    feeds = load_calibration(data, index) if isinstance(data, (str, Path)) else data
    return first_samples(index, feeds) if feeds else synthetic_inputs(index, shapes=shapes)


def load_labels(path: str | Path | None, data: str | Path, n: int) -> np.ndarray | None:
    """Labels from their own .npy/.npz, else the 'labels' array of the calibration .npz, if any;
    their count must match the samples'."""
    source = Path(path) if path else Path(data)
    if not source.is_file():
        raise InputError(f"{source}: no such labels file")
    try:
        loaded = np.load(source, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{source}: not a .npy/.npz file ({exc})") from None
    if isinstance(loaded, np.ndarray):
        labels = loaded if path else None
    else:
        labels = loaded[loaded.files[0]] if path else (loaded["labels"] if "labels" in loaded.files else None)
    if labels is not None and len(labels) != n:
        raise InputError(f"{source}: {len(labels)} labels for {n} samples")
    return labels
