"""Calibration data: .npy (one array, for a single-input model) or .npz (one array per input
name, or a single array for a single-input model), checked against the model's inputs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx

from .errors import InputError
from .graph import ModelIndex


def model_inputs(index: ModelIndex) -> list[onnx.ValueInfoProto]:
    return [vi for vi in index.model.graph.input if vi.name not in index.initializers]


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
    dims = tensor_type.shape.dim
    if array.ndim != len(dims):
        raise InputError(f"{path}: input '{vi.name}' has {array.ndim} dimensions {tuple(array.shape)}, the model expects {len(dims)}")
    for axis, (size, dim) in enumerate(zip(array.shape, dims)):
        if dim.HasField("dim_value") and dim.dim_value != size:
            raise InputError(f"{path}: input '{vi.name}' has size {size} on axis {axis}, the model expects {dim.dim_value}")


def synthetic_inputs(index: ModelIndex, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs for verification: dynamic axes get `batch` (axis 0) or 16."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model_inputs(index):
        tensor_type = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (batch if k == 0 else 16) for k, d in enumerate(tensor_type.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds


VERIFY_SAMPLES = 8


def verification_inputs(index: ModelIndex, data: str | Path | dict | None) -> dict[str, np.ndarray]:
    """What verification runs both models on: the first samples of the user's data (a file or
    arrays already loaded), or deterministic random inputs."""
    feeds = load_calibration(data, index) if isinstance(data, (str, Path)) else data
    return {k: v[:VERIFY_SAMPLES] for k, v in feeds.items()} if feeds else synthetic_inputs(index)


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
