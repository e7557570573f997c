"""The detection metric of scripts/bench_recovery.py: recall of the original model's boxes at IoU
0.5 (same class, one-to-one), and the PP-OCRv4 det and YOLOv8n (nudenet) pipelines it scores:
the original against itself recovers every box, an all-zero output recovers none."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_recovery", ROOT / "scripts" / "bench_recovery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_recovery"] = module
    spec.loader.exec_module(module)
    return module


def test_iou_matrix(bench):
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    iou = bench.iou_matrix(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(iou[1], [0.04, 0.0, 0.0])


def test_recall_counts_boxes_one_to_one_and_by_class(bench):
    box = np.array([0, 0, 10, 10])
    shifted = np.array([1, 0, 11, 10])      # IoU 9/11 with box
    far = np.array([6, 0, 16, 10])          # IoU 4/16 with box
    reference = [[(0, box), (0, shifted)], [(1, box)]]
    assert bench.box_recall(reference, reference) == 1.0
    # one candidate box covers at most one of two overlapping reference boxes
    assert bench.box_recall(reference, [[(0, box)], [(1, box)]]) == pytest.approx(2 / 3)
    # under IoU 0.5 or of another class: not recovered
    assert bench.box_recall(reference, [[(0, far)], [(0, box)]]) == 0.0
    assert bench.box_recall(reference, [[], []]) == 0.0
    assert np.isnan(bench.box_recall([[], []], [[], []]))


@pytest.mark.parametrize("task_name, package, n", [("Det", "rapidocr_onnxruntime", 1), ("Yolo", "nudenet", 6)])
def test_detector_pipeline_recall(bench, tmp_path, task_name, package, n):
    pytest.importorskip(package)
    task = getattr(bench, task_name)(n, n, tmp_path)
    assert task.score(task.model_path) == 1.0
    assert sum(len(boxes) for boxes in task.reference) >= n  # the rendered inputs do give detections
    raw = bench._run(task.model_path, task.eval_x, task.batch)
    assert bench.box_recall(task.reference, task.boxes_from(np.zeros_like(raw), task.eval_geometry)) == 0.0
    # a model whose output is shifted by half the input size loses its boxes too
    if task_name == "Det":
        moved = np.roll(raw, task.size // 2, axis=-1)
        assert bench.box_recall(task.reference, task.boxes_from(moved, task.eval_geometry)) < 0.5
    # the sensitivity row's loss on the calibration images: 0 for the original, 1 when every box is lost
    x, loss = task.calib_loss(n)
    assert len(x) == n
    calib_raw = bench._run(task.model_path, x, task.batch)
    assert loss([calib_raw], [calib_raw], None) == 0.0
    assert loss([calib_raw], [np.zeros_like(calib_raw)], None) == 1.0
