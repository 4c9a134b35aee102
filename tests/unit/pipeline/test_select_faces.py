"""``select_faces``: which detected faces a request uses under each multi-face policy, and the
typed errors (with their stable codes) when none qualifies. Detections are built by hand:
the policy is pure logic over boxes, no detector needed."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.errors import FaceError, FaceTooSmallError, MultipleFacesError, NoFaceError
from facegate.pipeline.detect import select_faces
from facegate.types import Detection

MIN_FACE = 32
IMAGE = (400, 300)  # width, height: the centre is (200, 150)


def face(x1: float, y1: float, width: float, height: float) -> Detection:
    landmarks = np.tile([x1 + width / 2, y1 + height / 2], (5, 1)).astype(np.float32)
    return Detection(box=(x1, y1, x1 + width, y1 + height), score=0.99, landmarks=landmarks)


def largest_first(*faces: Detection) -> list[Detection]:
    """As ``FaceDetector`` returns them: sorted by box area, largest first."""
    return sorted(faces, key=lambda d: d.area, reverse=True)


PORTRAIT = face(150, 90, 100, 120)  # centred, 100x120
BYSTANDER = face(0, 0, 60, 70)  # at the corner, usable
TINY = face(300, 250, 20, 20)  # under MIN_FACE


# ---------------------------------------------------------------------------- no usable face


@pytest.mark.parametrize("policy", ["largest", "center", "all", "reject"])
def test_no_detection_is_no_face(policy):
    with pytest.raises(NoFaceError) as info:
        select_faces([], policy, MIN_FACE, image_size=IMAGE)
    assert info.value.code == "no_face" and isinstance(info.value, FaceError)


@pytest.mark.parametrize("policy", ["largest", "center", "all", "reject"])
def test_only_tiny_faces_is_face_too_small_naming_the_largest(policy):
    faces = largest_first(TINY, face(10, 10, 30, 25))
    with pytest.raises(FaceTooSmallError) as info:
        select_faces(faces, policy, MIN_FACE, image_size=IMAGE)
    assert info.value.code == "face_too_small" and isinstance(info.value, FaceError)
    assert "30x25 px" in info.value.message and f"at least {MIN_FACE} px" in info.value.message


def test_the_shorter_box_side_decides_and_the_minimum_itself_is_enough():
    long_and_thin = face(0, 0, 200, MIN_FACE - 0.5)
    with pytest.raises(FaceTooSmallError):
        select_faces([long_and_thin], "largest", MIN_FACE)
    assert select_faces([face(0, 0, 200, MIN_FACE)], "largest", MIN_FACE) == [0]
    assert select_faces([face(0, 0, MIN_FACE, MIN_FACE)], "largest", MIN_FACE) == [0]


# ---------------------------------------------------------------------------- policies


def test_largest_takes_the_first_usable_face():
    faces = largest_first(PORTRAIT, BYSTANDER, TINY)
    assert select_faces(faces, "largest", MIN_FACE) == [faces.index(PORTRAIT)]
    banner = face(0, 0, 300, 20)  # the largest box, but too thin to use
    faces = largest_first(banner, BYSTANDER)
    assert faces[0] is banner
    assert select_faces(faces, "largest", MIN_FACE) == [1]


def test_all_returns_every_usable_face_in_order_without_tiny_ones():
    faces = largest_first(PORTRAIT, TINY, BYSTANDER)
    chosen = select_faces(faces, "all", MIN_FACE)
    assert chosen == [faces.index(PORTRAIT), faces.index(BYSTANDER)]
    assert select_faces([PORTRAIT], "all", MIN_FACE) == [0]


def test_reject_refuses_several_usable_faces():
    faces = largest_first(PORTRAIT, BYSTANDER)
    with pytest.raises(MultipleFacesError, match="2 faces found") as info:
        select_faces(faces, "reject", MIN_FACE)
    assert info.value.code == "multiple_faces" and isinstance(info.value, FaceError)


def test_reject_ignores_a_tiny_face_in_the_background():
    faces = largest_first(PORTRAIT, TINY)
    assert select_faces(faces, "reject", MIN_FACE) == [faces.index(PORTRAIT)]


def test_center_takes_the_face_nearest_the_centre_even_if_smaller():
    cut_off = face(0, 0, 150, 160)  # a larger bystander cut at the edge
    centred = face(170, 120, 60, 60)  # centre (200, 150): the image's centre
    faces = largest_first(cut_off, centred, TINY)
    assert faces[0] is cut_off
    assert select_faces(faces, "center", MIN_FACE, image_size=IMAGE) == [faces.index(centred)]
    # The same faces in a frame whose centre is near the bystander's.
    assert select_faces(faces, "center", MIN_FACE, image_size=(150, 160)) == [0]


def test_center_never_takes_a_tiny_face_however_central():
    central_tiny = face(190, 140, 20, 20)
    faces = largest_first(BYSTANDER, central_tiny)
    assert select_faces(faces, "center", MIN_FACE, image_size=IMAGE) == [faces.index(BYSTANDER)]


def test_center_without_an_image_size_takes_the_largest():
    cut_off, centred = face(0, 0, 150, 160), face(170, 120, 60, 60)
    assert select_faces(largest_first(cut_off, centred), "center", MIN_FACE) == [0]
