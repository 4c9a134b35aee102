"""The pose calibration's procedure on real photos (the committed records ran it on LFW-dev:
``facegate calibrate-pose --root ../shared/lfw-dev``, 1,583 photos, 90 s with YuNet)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from facegate.evaluation.pose_calibration import MARGIN, STILL_MOVES, calibrate_pose, tilted
from facegate.liveness.calibration import pose_calibration


def test_a_photo_tilted_by_nothing_is_the_photo_and_a_tilt_narrows_it(faces_dir):
    image = Image.open(faces_dir / "person_a_1.jpg").convert("RGB")
    same = np.asarray(tilted(image, 0.0), np.int16)
    assert np.abs(same - np.asarray(image, np.int16)).mean() < 1.0
    narrowed = np.asarray(tilted(image, 30.0).convert("L")) > 0
    columns = np.flatnonzero(narrowed.any(axis=0))
    assert columns[-1] - columns[0] < 0.95 * image.width  # foreshortened, still the face


def test_calibrating_records_both_distributions_and_a_movement_above_the_still_tail(
    faces_dir, pipeline
):
    record = calibrate_pose(pipeline, faces_dir)
    assert record["detector"] == pipeline.detector_name
    assert record["photos"] == {"root": faces_dir.name, "found": 6, "no_face": 0}
    assert set(record["still_abs_yaw_change"]) == set(STILL_MOVES)
    worst = max(v["p99"] for v in record["still_abs_yaw_change"].values())
    assert record["required_yaw"] >= MARGIN * worst
    assert 0.3 < record["frontal_ratio"] < 0.8
    assert record["mirror_yaw_sum"]["p50"] < 0.2  # a mirror turns the estimate round


def test_the_committed_record_is_the_served_detectors_on_lfw_dev(pipeline):
    record = pose_calibration(pipeline.detector_name).record
    assert record["photos"]["root"] == "lfw-dev" and record["photos"]["found"] == 1583
    assert record["detector_threshold"] == pipeline.detector.threshold
