"""The challenge's rules on faces made to measure: each refusal and its reason, the grant."""

from __future__ import annotations

import random

import numpy as np
import pytest

from facegate.errors import LivenessFailedError, ValidationError
from facegate.liveness.calibration import PoseCalibration, pose_calibration
from facegate.liveness.challenge import MAX_FRAMES_PER_STEP, judge, new_steps
from facegate.types import Detection, FaceEmbedding, FaceResult

CALIBRATION = PoseCalibration("test", 0.5, required_yaw=0.4, required_pitch=0.1, record={})
THRESHOLD = 0.6
FRONTAL = np.array([[100, 100], [160, 100], [130, 130], [108, 160], [152, 160]], np.float32)
PERSON = np.eye(8, dtype=np.float32)[0]
STRANGER = np.eye(8, dtype=np.float32)[1]
STEPS = ["center", "left", "right"]


def _face(nose_dx: float = 0.0, vector: np.ndarray = PERSON, faces: int = 1) -> FaceResult:
    landmarks = FRONTAL.copy()
    landmarks[2, 0] += nose_dx  # 30 px = half the eye distance: yaw 1.0
    detection = Detection((90.0, 80.0, 170.0, 180.0), 0.95, landmarks)
    embedding = FaceEmbedding(vector, detection, 0, "test")
    return FaceResult([detection] * faces, [embedding], (320, 240))


def _answer(left: float = 15.0, right: float = -15.0) -> tuple[list[str], list[FaceResult]]:
    """Two frontal frames, then two per turn, the second of each turned by ``left`` /
    ``right`` pixels of nose (15 px: yaw 0.5)."""
    labels = ["center", "center", "left", "left", "right", "right"]
    faces = [_face(), _face(1.0), _face(2.0), _face(left), _face(-1.0), _face(right)]
    return labels, faces


def test_steps_are_centre_then_both_turns_in_a_random_order():
    seen = {tuple(new_steps(rng=random.Random(seed))) for seed in range(40)}
    assert seen == {("center", "left", "right"), ("center", "right", "left")}
    nods = {new_steps(vertical=True, rng=random.Random(seed))[-1] for seed in range(40)}
    assert nods == {"up", "down"}


def test_turning_both_ways_passes_each_step_with_its_movement():
    labels, faces = _answer()
    verdicts, vectors = judge(STEPS, labels, faces, CALIBRATION, THRESHOLD)
    assert [(v.step, v.passed) for v in verdicts] == [("left", True), ("right", True)]
    assert verdicts[0].movement == pytest.approx(0.5 - 0.5 / 30)  # from the centre median
    assert vectors.shape == (6, 8)


@pytest.mark.parametrize(("left", "right"), [(0.0, 0.0), (15.0, 2.0), (-15.0, 15.0)])
def test_a_head_that_does_not_turn_as_asked_is_no_movement(left, right):
    """A still photo (nothing moves), one turn missing, both turns the wrong way round."""
    labels, faces = _answer(left, right)
    with pytest.raises(LivenessFailedError) as refused:
        judge(STEPS, labels, faces, CALIBRATION, THRESHOLD)
    assert refused.value.reason == "no_movement"
    assert refused.value.to_dict()["reason"] == "no_movement"


def test_a_face_swapped_in_for_a_turn_is_different_people():
    labels, faces = _answer()
    faces[3] = _face(15.0, vector=STRANGER)
    with pytest.raises(LivenessFailedError) as refused:
        judge(STEPS, labels, faces, CALIBRATION, THRESHOLD)
    assert refused.value.reason == "different_people"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (FaceResult([], [], (320, 240)), "no_face"),
        (_face(faces=2), "several_faces"),
    ],
)
def test_each_frame_holds_exactly_one_face(frame, reason):
    labels, faces = _answer()
    faces[2] = frame
    with pytest.raises(LivenessFailedError) as refused:
        judge(STEPS, labels, faces, CALIBRATION, THRESHOLD)
    assert refused.value.reason == reason


def test_a_step_without_frames_is_missing_and_a_step_not_asked_is_a_bad_request():
    labels, faces = _answer()
    with pytest.raises(LivenessFailedError) as refused:
        judge(STEPS, labels[:4], faces[:4], CALIBRATION, THRESHOLD)
    assert refused.value.reason == "missing_step"
    with pytest.raises(ValidationError, match="not one of the challenge"):
        judge(STEPS, [*labels, "up"], [*faces, _face()], CALIBRATION, THRESHOLD)
    many = ["left"] * (MAX_FRAMES_PER_STEP + 1)
    with pytest.raises(ValidationError, match="per step"):
        judge(STEPS, labels + many, faces + [_face(15.0)] * len(many), CALIBRATION, THRESHOLD)


def test_unknown_reasons_cannot_be_raised():
    with pytest.raises(ValueError, match="unknown liveness reason"):
        LivenessFailedError("no", reason="because")


@pytest.mark.parametrize("detector", ["yunet", "mtcnn"])
def test_each_detector_has_a_recorded_calibration(detector):
    calibration = pose_calibration(detector)
    record = calibration.record
    assert record["detector"] == detector and record["photos"]["found"] > 1000
    # The required turn stands above what a still photo's worst move did to 99% of photos.
    worst = max(v["p99"] for v in record["still_abs_yaw_change"].values())
    assert worst < calibration.required_yaw
