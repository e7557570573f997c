"""Mapping check on the real-model corpus (tests/realmodels.py): pruning channels of a group gives
the same model as the original with those channels' consumer weights zeroed (every input slice
of a consuming Conv/Gemm/MatMul that reads them set to 0), to 1e-5 of the original's largest
output (the zeroed model's own outputs can be tiny: the PP-OCRv4 detector's probability map on a
random input falls to 1e-2 with a quarter of a group's channels gone, and float rounding of the
narrower convs is then 2e-5 of it, while a wrong element index moves outputs by their own size).

Pruning removes a channel; zeroing the weights that read it makes the channel contribute nothing
while everything else stays in place.  The two agree exactly only when surgery removed the right
elements of every tensor of the group (filter rows, biases, BN statistics, consumer slices,
flattened Gemm columns, concat offsets): a wrong element index anywhere shows up as a difference.
So a large accuracy drop after pruning a real model is genuine damage, not a mapping error.

Per model, a few prunable groups (first, middle and last of those whose channels are read by
weights only), each losing about a quarter of its channels (chosen at random, not by
importance, so the check does not depend on a criterion).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realmodels  # noqa: E402
from conftest import session  # noqa: E402
from test_real_models import model_path, verification_feeds  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.ops import IN  # noqa: E402
from onnxprune.surgery import ModelWriter, apply_keep, kept_elements  # noqa: E402

GROUPS_PER_MODEL = 3


def _removed_mask(group, rng: np.random.Generator) -> np.ndarray:
    """Keep-mask that drops about a quarter of the group's channels (at least one), each of them
    removable, and never all of a dim's elements."""
    keep = np.ones(group.n_channels, dtype=bool)
    candidates = np.nonzero(group.removable())[0]
    for c in rng.permutation(candidates)[:max(1, group.n_channels // 4)]:
        keep[c] = False
        if any(not np.any(keep[group.classes[d]]) for d in group.dims if len(group.classes[d])):
            keep[c] = True
    return keep


def _consumers_zeroed(pm, group, keep: np.ndarray) -> onnx.ModelProto | None:
    """The original with the input slices of the removed channels zeroed in every consuming
    weight of the group; None when a consuming weight is not a stored constant (nothing to zero)."""
    index = pm.index
    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    writer = ModelWriter(model, index)
    kept = kept_elements(pm.depgraph, {group.id: keep})
    values: dict[str, np.ndarray] = {}
    for dim in group.dims_with_role(IN):
        if dim.tensor not in writer.inits and dim.tensor not in index.constant_nodes:
            return None
        value = values.get(dim.tensor)
        if value is None:
            value = np.array(index.const(dim.tensor), copy=True)
        gone = np.setdiff1d(np.arange(value.shape[dim.axis]), kept[dim])
        index_ = [slice(None)] * value.ndim
        index_[dim.axis] = gone
        value[tuple(index_)] = 0
        values[dim.tensor] = value
    for name, value in values.items():
        writer._store(name, value)
    return model


def _checked_groups(pm) -> list:
    """Prunable groups whose channels leave only through consuming weights (the groups for
    which zeroing those weights is the same as removing the channels)."""
    graph_outputs = set(pm.index.graph_outputs)
    chosen = []
    for group in pm.depgraph.groups:
        if not group.prunable or not group.dims_with_role(IN):
            continue
        if any(not d.is_const and d.tensor in graph_outputs for d in group.dims):
            continue
        chosen.append(group)
    if len(chosen) <= GROUPS_PER_MODEL:
        return chosen
    picks = np.linspace(0, len(chosen) - 1, GROUPS_PER_MODEL).round().astype(int)
    return [chosen[i] for i in sorted(set(picks))]


def _error(expected: np.ndarray, got: np.ndarray, original: np.ndarray) -> float:
    """max |got - expected| / max |original|."""
    scale = float(np.max(np.abs(original.astype(np.float64)))) if original.size else 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
    return diff / scale if scale > 0 else diff


@pytest.mark.parametrize("name", list(realmodels.MODELS))
def test_pruned_equals_original_with_consumer_weights_zeroed(name):
    pm = onnxprune.load(model_path(name))
    groups = _checked_groups(pm)
    if not groups:
        pytest.skip(f"{name}: no prunable group whose channels are read by weights (nothing to check)")
    feeds = verification_feeds(name)
    rng = np.random.default_rng(7)
    original = session(pm.index.model).run(None, feeds)
    checked = 0
    for group in groups:
        keep = _removed_mask(group, rng)
        assert not keep.all()
        reference = _consumers_zeroed(pm, group, keep)
        if reference is None:
            continue
        pruned = apply_keep(pm.depgraph, {group.id: keep})
        expected = session(reference).run(None, feeds)
        got = session(pruned).run(None, feeds)
        assert [a.shape for a in expected] == [b.shape for b in got]
        errors = [_error(a, b, o) for a, b, o in zip(expected, got, original) if a.dtype.kind == "f"]
        assert max(errors, default=0.0) <= 1e-5, (name, group.id, int((~keep).sum()), errors)
        checked += 1
    assert checked, f"{name}: no checked group has stored consuming weights"
