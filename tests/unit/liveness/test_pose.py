"""The pose estimate on landmark geometry: what moves it, and what must not."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.liveness.pose import estimate_pose

#: A frontal face, 60 px between the eyes (eyes, nose tip, mouth corners; image y down).
FRONTAL = np.array([[100, 100], [160, 100], [130, 130], [108, 160], [152, 160]], float)


def _roll(points: np.ndarray, degrees: float, centre=(130.0, 130.0)) -> np.ndarray:
    t = np.radians(degrees)
    rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (points - centre) @ rotation.T + centre


def test_a_frontal_face_is_at_zero_yaw_and_its_own_frontal_ratio():
    pose = estimate_pose(FRONTAL, frontal_ratio=0.5)
    assert pose.yaw == pytest.approx(0.0) and pose.ratio == pytest.approx(0.5)
    assert pose.pitch == pytest.approx(0.0)


def test_the_nose_moving_towards_the_image_right_is_a_turn_to_the_persons_left():
    turned = FRONTAL.copy()
    turned[2, 0] += 15  # a quarter of the eye distance: half of half of it
    assert estimate_pose(turned).yaw == pytest.approx(0.5)
    turned[2, 0] -= 30
    assert estimate_pose(turned).yaw == pytest.approx(-0.5)


def test_the_nose_rising_towards_the_eyes_is_looking_up():
    up = FRONTAL.copy()
    up[2, 1] -= 12  # ratio 0.5 -> 0.3
    assert estimate_pose(up, 0.5).pitch == pytest.approx(0.2)
    assert estimate_pose(up, 0.5).yaw == pytest.approx(0.0)


@pytest.mark.parametrize("degrees", [-25.0, 10.0, 40.0])
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_roll_distance_and_place_move_nothing(degrees, scale):
    turned = FRONTAL.copy()
    turned[2] += (9, -4)
    reference = estimate_pose(turned, 0.55)
    moved = _roll(turned, degrees) * scale + (37, -12)
    pose = estimate_pose(moved, 0.55)
    assert pose.yaw == pytest.approx(reference.yaw) and pose.pitch == pytest.approx(reference.pitch)


def test_a_mirror_image_turns_the_other_way():
    turned = FRONTAL.copy()
    turned[2, 0] += 11
    mirrored = turned.copy()
    mirrored[:, 0] = 300 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]  # image-left first again
    assert estimate_pose(mirrored).yaw == pytest.approx(-estimate_pose(turned).yaw)


def test_landmarks_of_no_face_are_refused():
    same_eyes = FRONTAL.copy()
    same_eyes[1] = same_eyes[0]
    with pytest.raises(ValueError, match="eyes"):
        estimate_pose(same_eyes)
    mouth_up = FRONTAL.copy()
    mouth_up[3:, 1] = 80
    with pytest.raises(ValueError, match="mouth"):
        estimate_pose(mouth_up)
