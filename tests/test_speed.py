"""Memory-mapped loading, stage timings and latency-targeted allocation, on the shipped sample model
(its weights are external data).  What these behaviours cost is measured by the benchmark scripts
(bench_pipeline.py, bench_latency_target.py, bench_large_model.py), never here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune import latency
from onnxprune.errors import InputError
from onnxprune.load import load_model

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_mapped_load_keeps_stubs_and_reads_the_same_values(sample: Path):
    eager, mapped = load_model(sample), load_model(sample, mapped=True)
    assert mapped.arrays, "the sample's weights are external data: they should be mapped"
    for tensor in mapped.model.graph.initializer:
        if tensor.name in mapped.arrays:
            assert tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.raw_data
            assert not mapped.arrays[tensor.name].flags.writeable  # the input can never be written through
    values = {t.name: onnx.numpy_helper.to_array(t) for t in eager.model.graph.initializer}
    for name, array in mapped.arrays.items():
        np.testing.assert_array_equal(array, values[name])
    assert mapped.sha256 == eager.sha256


def test_mapped_and_eager_pruning_write_identical_bytes(sample: Path, tmp_path: Path):
    outputs = []
    for mapped in (False, True):
        model = onnxprune.load(sample, mapped=mapped)
        result = model.apply(model.plan(ratio=0.4, criterion="l2", round_to=4))
        out = tmp_path / str(mapped) / "out.onnx"  # same name: the header names its data file
        onnxprune.save(result.model, out, external_data=True)
        outputs.append((out.read_bytes(), out.with_name(out.name + ".data").read_bytes()))
    assert outputs[0] == outputs[1]


def test_mapped_external_data_shorter_than_declared_is_refused(sample: Path):
    data = sample.with_name(sample.name + ".data")
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"declares \d+ elements but holds \d+"):
        load_model(sample, mapped=True)


def test_timings_lists_every_stage_on_stderr(sample: Path, tmp_path: Path):
    done = run_cli("prune", sample, "-o", tmp_path / "out.onnx", "--ratio", "0.3", "--timings", "--json")
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)  # stdout stays the summary alone
    stages = [line.split()[0] for line in done.stderr.strip().splitlines()]
    assert stages == ["load", "depgraph", "importance", "allocation", "surgery", "verification", "save", "total"]
    seconds = [float(line.split()[1]) for line in done.stderr.strip().splitlines()]
    # each figure is printed to 3 decimals (rounded by up to 0.0005), so the printed stages can sum
    # to the printed total only within that rounding of all eight figures
    rounding = 0.0005 * len(seconds) + 1e-9
    assert all(s >= 0 for s in seconds) and abs(sum(seconds[:-1]) - seconds[-1]) <= rounding


def test_timings_are_exclusive_of_nested_stages():
    from onnxprune.timings import Stage, Timings

    t = Timings()
    with t.stage(Stage.IMPORTANCE):
        with t.stage(Stage.DEPGRAPH):
            pass
    assert set(t.seconds) == {Stage.IMPORTANCE, Stage.DEPGRAPH}
    assert t.total == pytest.approx(sum(t.seconds.values()))


def _macs_table(sample: Path):
    """The sample model, its l1 scores, layer terms and groups, and a latency table proportional
    to MACs (the budget in table units is then a MACs budget), with the table's full sum."""
    model = onnxprune.load(sample)
    dg = model.depgraph
    terms = latency.layer_terms(dg)
    table = latency.LatencyTable({t.node: [(0.0, 0.0), (1.0, float(t.base))] for t in terms})
    return (model, model.importance("l1"), terms, latency.eligible_groups(dg, onnxprune.AllocationOptions()), table,
            table.predicted_sum(terms, {}))


def test_uniform_latency_allocation_stays_uniform_with_rounding(sample: Path):
    """The latency allocator's default (uniform) gives channels back as --target-macs does, by group
    within one round_to step: it used to give them back by raw score across groups (the digits CNN
    at half of a MACs-proportional table with round_to 8: 24, 40, 56, 48 of 32, 64, 64, 64), which
    on PP-OCRv4 det left one group at 90% and the rest at 58% and the detector finding nothing."""
    _, scores, terms, groups, table, full = _macs_table(sample)
    keep = latency.uniform(groups, scores, terms, table, 0.5 * full, onnxprune.AllocationOptions(round_to=8))
    removed = {g.id: 1 - keep[g.id].sum() / g.n_channels for g in groups}
    for a in groups:
        for b in groups:
            assert abs(removed[a.id] - removed[b.id]) <= max(8 / a.n_channels, 8 / b.n_channels) + 1e-9, removed
    assert all(keep[g.id].sum() % 8 == 0 for g in groups)
    assert 0.45 * full <= table.predicted_sum(terms, keep) <= 0.5 * full * 1.01


def test_latency_table_times_the_same_layers_where_surgery_adds_nodes(tmp_path: Path):
    """PP-OCRv4 rec: surgery adds nodes (860 -> 885), so the original's node positions point at
    other nodes of the pruned model; the table used to time those (a Reshape among them, fed
    zeros for its shape: onnxruntime failed, and `--target-latency` exited 1).  Each layer is now
    found by its output's name, and the table builds."""
    sys.path.insert(0, str(ROOT / "tests"))
    import realmodels  # noqa: PLC0415 - the real-model corpus is only needed here

    source = realmodels.locate("ppocrv4-rec")
    if source is None:
        pytest.skip("rapidocr-onnxruntime is not installed (pip install '.[test]')")
    model = onnx.load(source)
    for axis, size in ((0, 1), (2, 48), (3, 320)):  # as the package feeds it: costs and feeds fully known
        dim = model.graph.input[0].type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_value = size
    onnx.save(model, tmp_path / "rec.onnx")
    pm = onnxprune.load(tmp_path / "rec.onnx")
    dg = pm.depgraph
    terms = latency.layer_terms(dg)
    groups = latency.eligible_groups(dg, onnxprune.AllocationOptions())
    keep = latency.by_ratio(groups, pm.importance("l1"), 0.5, latency._uniform(onnxprune.AllocationOptions(round_to=8)))
    from onnxprune.graph import ModelIndex
    from onnxprune.surgery import apply_keep

    pruned = ModelIndex.build(apply_keep(dg, keep))
    assert len(pruned.model.graph.node) != len(dg.index.model.graph.node)  # what makes positions shift
    at = latency.node_positions(dg.index, pruned, [t.node for t in terms])
    assert set(at) == {t.node for t in terms}
    for original_i, pruned_i in at.items():
        before, after = dg.index.model.graph.node[original_i], pruned.model.graph.node[pruned_i]
        assert (before.op_type, list(before.output)) == (after.op_type, list(after.output))
    plan = pm.plan(target_latency=0.7, latency_threads=1, latency_cache=tmp_path / "cache", round_to=8)
    assert 0 < plan.options["measured_latency"] <= 1.5


def test_latency_table_interpolates_and_maps_to_fractions():
    table = latency.LatencyTable({0: [(0.25, 1.0), (1.0, 4.0)]}, slope=0.2, intercept=0.2, full_sum=4.0)
    assert table.layer_seconds(0, 0.5) == pytest.approx(2.0)
    assert table.layer_seconds(0, 0.1) == pytest.approx(1.0)  # below the grid: the smallest measured
    assert table.to_fraction(table.to_sum(0.6)) == pytest.approx(0.6)
    assert latency.LatencyTable.from_json(json.loads(json.dumps(table.to_json()))) == table


def test_target_latency_plan_records_the_measurement_and_caches_the_table(sample: Path, tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    model = onnxprune.load(sample, mapped=True)
    plan = model.plan(target_latency=0.6, latency_batch=16, latency_threads=1, latency_cache=cache, round_to=4)
    assert plan.options["target_latency"] == 0.6 and plan.options["latency_batch"] == 16
    assert 0 < plan.options["measured_latency"] <= 1.5
    assert plan.summary["macs"][1] < plan.summary["macs"][0]
    assert len(list((cache).glob("*.json"))) == 1
    result = model.apply(plan)
    onnx.checker.check_model(result.model)

    def no_measuring(*args, **kwargs):
        raise AssertionError("the cached table should have been used")

    monkeypatch.setattr(latency, "measure_table", no_measuring)
    onnxprune.load(sample).plan(target_latency=0.6, latency_batch=16, latency_threads=1, latency_cache=cache, round_to=4)


def test_target_latency_in_ncnn_times_the_converted_model(sample: Path, tmp_path: Path, monkeypatch):
    """--latency-engine ncnn: layers and candidates are converted by pnnx and timed in ncnn; the
    plan records the engine, and the table is cached apart from onnxruntime's."""
    from onnxprune.deploy import ncnn

    converted = []
    real_init = ncnn.NcnnSession.__init__

    def counting(self, model, *args, **kwargs):
        converted.append(len(model.graph.node))
        real_init(self, model, *args, **kwargs)

    monkeypatch.setattr(ncnn.NcnnSession, "__init__", counting)
    cache = tmp_path / "cache"
    model = onnxprune.load(sample, mapped=True)
    plan = model.plan(target_latency=0.6, latency_batch=2, latency_threads=1, latency_cache=cache, round_to=4,
                      latency_engine="ncnn")
    assert plan.options["latency_engine"] == "ncnn" and 0 < plan.options["measured_latency"] <= 1.5
    assert 1 in converted and max(converted) == len(model.index.model.graph.node)  # layers alone and whole models
    onnx.checker.check_model(model.apply(plan).model)
    onnxruntime_plan = model.plan(target_latency=0.6, latency_batch=2, latency_threads=1, latency_cache=cache, round_to=4)
    assert "latency_engine" not in onnxruntime_plan.options
    assert len(list(cache.glob("*.json"))) == 2


def test_an_unknown_latency_engine_is_refused(sample: Path):
    with pytest.raises(onnxprune.InputError, match="--latency-engine 'tensorrt' is not one of onnxruntime, ncnn"):
        onnxprune.load(sample).plan(target_latency=0.6, latency_engine="tensorrt")


def test_greedy_meets_the_predicted_budget(sample: Path):
    model, scores, terms, groups, table, full = _macs_table(sample)
    for strategy in (latency.greedy, latency.uniform):
        keep = strategy(groups, scores, terms, table, 0.5 * full, onnxprune.AllocationOptions(round_to=1))
        assert table.predicted_sum(terms, keep) <= 0.5 * full * 1.01
        assert model.cost(keep).macs == pytest.approx(table.predicted_sum(terms, keep), rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--target-latency", "0"], "--target-latency 0.0 is outside (0, 1]"),
    (["--target-latency", "1.5"], "--target-latency 1.5 is outside (0, 1]"),
    (["--target-latency", "0.5", "--ratio", "0.3"], "--target-latency cannot be combined"),
    (["--target-latency", "0.5", "--latency-batch", "0"], "--latency-batch 0 must be at least 1"),
])
def test_target_latency_bad_options_exit_2_and_write_nothing(sample: Path, tmp_path: Path, args, message):
    out = tmp_path / "out.onnx"
    done = run_cli("prune", sample, "-o", out, *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1
    assert not out.exists()
