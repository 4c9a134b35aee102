"""Head pose from the five landmarks the detector already gives: no model of its own.

The landmarks are, in the image, the two eyes, the nose tip and the two mouth corners
(image-left first, both detectors' order). The eyes and the mouth corners lie near one
plane; the nose tip stands in front of it. Turning the head moves the nose tip across the
face's midline, raising or lowering it moves the nose tip along it, while a roll (tilting
the head sideways) or a change of distance moves all five points together. So, in a frame
aligned with the eye line and scaled by the eyes' distance:

- ``yaw``: the nose tip's offset from the midline (the line from the eyes' midpoint to the
  mouth's), at the nose's height, in half inter-ocular distances. 0 for a frontal face;
  positive when the person turns to *their own* left (the nose moves towards the image's
  right in an unmirrored camera image), negative to their right. With the nose about one
  half-eye-distance in front of the eye plane (a typical face), ``yaw ~ sin(angle)``.
- ``pitch``: how far up the nose tip sits between the eye line and the mouth line, against
  a frontal face's (``frontal_ratio``, calibrated on LFW-dev): positive when the person looks
  up (the tip moves towards the eyes), negative looking down.

Both are ratios of distances between points of one face, so they do not depend on the
photo's size, the face's distance or a roll of the head; they are not angles, and the
calibration (:mod:`facegate.liveness.calibration`) records what they measure on real photos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The nose tip's place between the eye line (0) and the mouth line (1) on a frontal face;
#: the calibration's median over LFW-dev replaces it where one is recorded.
DEFAULT_FRONTAL_RATIO = 0.5


@dataclass(frozen=True)
class Pose:
    """A face's ``yaw`` and ``pitch`` as :mod:`facegate.liveness.pose` defines them, and the
    raw ``ratio`` the pitch came from."""

    yaw: float
    pitch: float
    ratio: float


def estimate_pose(landmarks: np.ndarray, frontal_ratio: float = DEFAULT_FRONTAL_RATIO) -> Pose:
    """The pose of one face from its ``(5, 2)`` landmarks (eyes, nose tip, mouth corners).

    Raises ``ValueError`` for landmarks that describe no face (eyes on one point, the mouth
    on the eye line), which a detector does not report for a real face."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    eye_axis = right_eye - left_eye
    eye_distance = float(np.hypot(*eye_axis))
    if eye_distance < 1e-6:
        raise ValueError("the two eyes are on one point")
    across = eye_axis / eye_distance
    down = np.array([-across[1], across[0]])  # image y grows downwards
    eyes = (left_eye + right_eye) / 2
    mouth = (mouth_left + mouth_right) / 2
    height = float((mouth - eyes) @ down)
    if height < 1e-6:
        raise ValueError("the mouth is not below the eyes")
    ratio = float((nose - eyes) @ down) / height
    midline = eyes + ratio * (mouth - eyes)
    yaw = float((nose - midline) @ across) / (eye_distance / 2)
    return Pose(yaw=yaw, pitch=frontal_ratio - ratio, ratio=ratio)


__all__ = ["DEFAULT_FRONTAL_RATIO", "Pose", "estimate_pose"]
