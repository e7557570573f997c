"""The pruned model written as it goes: surgery hands every large initializer it produces (a sliced
weight, or an untouched one copied from the original's memory map) straight to a data file in a
staging folder beside the output, and keeps only a stub (name, type, dims, offset) in the
ModelProto.  The pruned weights are therefore never all in memory: peak memory is the original's
mapped weights (file pages the kernel can drop) plus one tensor at a time.

Verification reads the staged files from their path (onnxruntime maps the data file; onnx.checker
checks every offset and length), and `commit` renames both files into place, data first, header
last, so that the output appears only when it is complete and verified; `discard` (on any
failure) removes the staging folder and nothing is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxPruneError

STREAM_FROM_BYTES = 1024
"""Initializers of at least this many bytes go to the data file (as save.save_model does); smaller
ones (shape vectors, axes, scalars) stay in the header, where shape inference can read them."""


class StagedOutput:
    """A model with external data being written to `target` (and `target`.data), not there yet."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        self.location = self.target.name + ".data"
        self.data_path = self.folder / self.location
        self.header_path = self.folder / self.target.name
        self._data = open(self.data_path, "wb")
        self._offset = 0
        self._written: dict[str, tuple[int, int]] = {}
        self.committed = False

    def put(self, name: str, value: np.ndarray, like: onnx.TensorProto | None = None) -> onnx.TensorProto:
        """Write `value` to the data file and return the stub that points at it (the fields of
        `like`, an existing initializer, are kept apart from its data).  A tensor stored again
        at the same size (a rule rewriting a constant surgery sliced) is overwritten in place."""
        value = np.ascontiguousarray(value)
        length = value.nbytes
        if name in self._written and self._written[name][1] == length:
            offset = self._written[name][0]
            self._data.seek(offset)
            self._data.write(memoryview(value.reshape(-1).view(np.uint8)))
            self._data.seek(self._offset)
        else:  # a tensor stored again at another size leaves its earlier bytes unreferenced
            offset = self._offset
            self._data.write(memoryview(value.reshape(-1).view(np.uint8)) if length else b"")
            self._offset += length
            self._written[name] = (offset, length)
        stub = onnx.TensorProto()
        stub.doc_string = like.doc_string if like is not None else ""  # as save.save_model writes stubs
        if like is not None:
            stub.metadata_props.extend(like.metadata_props)
        stub.name = name
        stub.data_type = like.data_type if like is not None else onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        stub.dims.extend(value.shape)
        stub.data_location = onnx.TensorProto.EXTERNAL
        for key, text in (("location", self.location), ("offset", str(offset)), ("length", str(length))):
            stub.external_data.add(key=key, value=text)
        return stub

    def write_header(self, model: onnx.ModelProto) -> Path:
        """Close the data file and write `model` (its large initializers stubs from `put`) beside
        it; returns the staged header's path, which onnxruntime and onnx.checker can read."""
        if not self._data.closed:
            self._data.close()
        if self.data_path.stat().st_size != self._offset:
            raise OnnxPruneError(f"internal error: {self.location} was written short; nothing written")
        payload = model.SerializeToString()
        self.header_path.write_bytes(payload)
        if self.header_path.stat().st_size != len(payload):
            raise OnnxPruneError(f"internal error: {self.target.name} was written short; nothing written")
        return self.header_path

    def arrays(self, model: onnx.ModelProto) -> dict[str, np.ndarray]:
        """The data of the staged initializers of `model` (stubs): read-only memory maps, or where
        mapping does not apply (packed 4-bit types, see load.map_external) arrays read from the file."""
        from onnx import numpy_helper

        from .load import map_external

        mapped = map_external(model, self.header_path)
        if mapped is not None:
            return mapped
        return {t.name: numpy_helper.to_array(t, str(self.header_path.parent)) for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}

    def commit(self) -> Path:
        """Move the staged files into place (data first: the header appears last) and clean up."""
        from .save import _default_mode

        if self.committed:
            return self.target
        try:
            os.chmod(self.data_path, _default_mode())
            os.chmod(self.header_path, _default_mode())
            os.replace(self.data_path, self.target.with_name(self.location))
            os.replace(self.header_path, self.target)
            self.committed = True
            self.header_path, self.data_path = self.target, self.target.with_name(self.location)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        """Remove everything staged (nothing of it reaches the target); committed files stay."""
        if not self._data.closed:
            self._data.close()
        shutil.rmtree(self.folder, ignore_errors=True)
