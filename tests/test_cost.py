"""Costs are counted at the shapes a model really runs at, and targets land on the real figure:
onnxprune's count against an independent counter (tests/macs_counter.py) on every test model."""

from __future__ import annotations

from functools import partial

import pytest

import handbuilt as hb
import onnxprune
from conftest import ALL_CASES, float_params, input_feeds, load_full
from macs_counter import count_macs

TARGET_CASES = [c for c in ALL_CASES if c.exporter in (None, "dynamo")]
HANDBUILT = {"recurrent_lstm": partial(hb.recurrent, "lstm_bidirectional"), "recurrent_gru": partial(hb.recurrent, "gru"),
             "crnn_reshape": hb.crnn_reshape}


def _shapes(feeds) -> dict[str, tuple[int, ...]]:
    return {name: value.shape for name, value in feeds.items()}


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_macs_and_params_match_an_independent_count(case, case_path):
    model = load_full(case_path(case))
    feeds = input_feeds(model, batch=1)
    info = onnxprune.load(case_path(case), input_shapes=_shapes(feeds)).inspect()
    assert info["macs"] == count_macs(model, feeds)
    assert info["params"] == float_params(model)


@pytest.mark.parametrize("case", TARGET_CASES, ids=lambda c: c.id)
def test_target_macs_lands_on_the_real_figure(case, case_path):
    model = load_full(case_path(case))
    feeds = input_feeds(model, batch=1)
    pm = onnxprune.load(case_path(case), input_shapes=_shapes(feeds))
    result = pm.apply(pm.plan(target_macs=0.5))
    achieved = count_macs(result.model, feeds) / count_macs(model, feeds)
    assert abs(achieved - 0.5) <= 0.01 * 0.5, f"kept {achieved:.4f} of the real MACs"
    assert result.after.macs == count_macs(result.model, feeds)


@pytest.mark.parametrize("name", sorted(HANDBUILT))
def test_recurrent_and_reshape_costs(name):
    model = HANDBUILT[name]()
    feeds = input_feeds(model, batch=3)
    pm = onnxprune.PrunableModel(model, input_shapes=_shapes(feeds))
    assert pm.inspect()["macs"] == count_macs(model, feeds)
    result = pm.apply(pm.plan(ratio=0.5))
    assert result.after.macs == count_macs(result.model, feeds) < count_macs(model, feeds)


def test_dynamic_sizes_count_as_one_without_input_shapes():
    """Without input_shapes a dynamic batch counts 1 (MACs per sample); with them, the real batch."""
    model = hb.crnn_reshape()
    assert onnxprune.PrunableModel(model).inspect()["macs"] == count_macs(model, input_feeds(model, batch=1))
    feeds = input_feeds(model, batch=4)
    assert onnxprune.PrunableModel(model, input_shapes=_shapes(feeds)).inspect()["macs"] == count_macs(model, feeds)
