"""``facegate.pipeline.nms`` on hand-made boxes: the greedy rules' edges (empty input, exact
thresholds, ties, groups, degenerate boxes). Agreement with torchvision and facenet-pytorch on
random boxes is checked in tests/functional/pipeline/test_mtcnn.py, where torch is at hand."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.pipeline.nms import batched_nms, batched_nms_min, nms

# Two 10x10 boxes overlapping by half their width: IoU 50 / 150 = 1/3.
PAIR = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=np.float32)


def test_empty_input_keeps_nothing() -> None:
    boxes = np.zeros((0, 4), dtype=np.float32)
    scores = np.zeros(0, dtype=np.float32)
    groups = np.zeros(0, dtype=np.int64)
    for kept in (
        nms(boxes, scores, 0.5),
        batched_nms(boxes, scores, groups, 0.5),
        batched_nms_min(boxes, scores, groups, 0.5),
    ):
        assert kept.dtype == np.int64 and kept.shape == (0,)


@pytest.mark.parametrize(("threshold", "kept"), [(0.3, [1]), (0.34, [1, 0])])
def test_iou_over_the_threshold_suppresses(threshold: float, kept: list[int]) -> None:
    scores = np.array([0.5, 0.9], dtype=np.float32)
    assert nms(PAIR, scores, threshold).tolist() == kept


def test_equal_scores_keep_index_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [50, 0, 60, 10], [100, 0, 110, 10]], dtype=np.float32)
    scores = np.full(3, 0.7, dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, np.array([2, 0, 1]), 0.5).tolist() == [0, 1, 2]


def test_groups_never_suppress_each_other() -> None:
    """The same box in two images (negative coordinates too) is kept in both; within an image
    the overlapping lower-scored one goes. Kept by descending score across groups."""
    boxes = np.concatenate([PAIR - 20, PAIR - 20])
    scores = np.array([0.9, 0.8, 0.7, 0.95], dtype=np.float32)
    groups = np.array([0, 0, 1, 1])
    assert batched_nms(boxes, scores, groups, 0.3).tolist() == [3, 0]
    assert batched_nms(boxes, scores, np.zeros(4, dtype=np.int64), 0.3).tolist() == [3]


def test_min_overlap_uses_the_smaller_box() -> None:
    """A small box inside a large one overlaps it fully under "Min" (areas with +1 pixel),
    whatever the IoU; in another group it stays."""
    boxes = np.array([[0, 0, 99, 99], [10, 10, 19, 19], [10, 10, 19, 19]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert batched_nms_min(boxes, scores, np.array([0, 0, 1]), 0.7).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1]  # IoU 0.01: kept; then 1 drops 2


def test_degenerate_boxes_suppress_nothing_and_warn_nothing() -> None:
    """Zero-area boxes give 0/0 overlaps: kept, as torchvision keeps them, with no
    RuntimeWarning (an error under this suite's filterwarnings)."""
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, np.zeros(3, dtype=np.int64), 0.5).tolist() == [0, 1, 2]
