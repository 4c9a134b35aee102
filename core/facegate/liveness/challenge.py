"""A liveness challenge's rules: which steps it asks for, and whether frames answer them.
Torch-free, storage-free: :mod:`facegate.service.liveness` feeds it the faces the pipeline
found and keeps the challenges (:mod:`facegate.storage.challenges`).

A challenge asks the person to look at the camera (``center``), then to turn their head
``left`` and ``right`` in a random order (and, where set, ``up`` or ``down``), while the
client captures a few frames per step. The frames answer it when:

1. every frame holds exactly one face (``no_face``, ``several_faces``);
2. all of them are one person: each frame's cosine with a ``center`` frame at or above the
   model's threshold (``different_people``), so a face cannot be swapped between steps;
3. each step moved the head the way it asked, from the ``center`` frames' median pose, by
   at least the calibrated movement (``no_movement``): a still photo, printed or on a screen,
   moved, tilted or rolled before the camera, does not turn its nose across its face, and
   what such moves make the estimate do was measured (:mod:`facegate.liveness.calibration`).

It does not stop a video of the right person making the right movements, a 3-D mask, or a
deepfake fed to the camera: see the README's liveness section.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np

from facegate.errors import LivenessFailedError, ValidationError
from facegate.liveness.calibration import PoseCalibration
from facegate.liveness.pose import Pose, estimate_pose
from facegate.types import FaceResult

Step = Literal["center", "left", "right", "up", "down"]
STEPS: tuple[str, ...] = get_args(Step)
TURNS: tuple[Step, ...] = ("left", "right")
NODS: tuple[Step, ...] = ("up", "down")
#: Frames a client may send per step, and in all: enough to catch the movement at a few
#: frames a second, few enough that a request stays small and quick to check.
MAX_FRAMES_PER_STEP = 5
MAX_FRAMES = 20

_RANDOM = secrets.SystemRandom()


def new_steps(*, vertical: bool = False, rng: random.Random = _RANDOM) -> list[Step]:
    """``center``, then ``left`` and ``right`` in a random order, then (``vertical``) one
    of ``up`` / ``down``: a client cannot know the order before it asks."""
    turns = list(TURNS)
    rng.shuffle(turns)
    steps: list[Step] = ["center", *turns]
    if vertical:
        steps.append(rng.choice(NODS))
    return steps


@dataclass(frozen=True)
class StepResult:
    """One step's verdict: how far the head moved the asked way (``movement``, in the pose
    estimate's units), against what the calibration requires."""

    step: str
    passed: bool
    movement: float
    required: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"movement": round(self.movement, 3)}


def check_frame_steps(steps: Sequence[str], frame_steps: Sequence[str]) -> None:
    """The frames' step labels fit the challenge: known steps, every step answered, within
    the limits. A :class:`ValidationError` (400) for a malformed request; a step with no
    frame is a refusal (``missing_step``)."""
    if len(frame_steps) > MAX_FRAMES:
        raise ValidationError(f"at most {MAX_FRAMES} frames per challenge")
    for label in set(frame_steps):
        if label not in steps:
            raise ValidationError(f"frame step {label!r} is not one of the challenge's {steps}")
        if frame_steps.count(label) > MAX_FRAMES_PER_STEP:
            raise ValidationError(f"at most {MAX_FRAMES_PER_STEP} frames per step")
    for step in steps:
        if step not in frame_steps:
            raise LivenessFailedError(f"no frame for step {step!r}", reason="missing_step")


def _one_face(results: Sequence[FaceResult]) -> None:
    for index, result in enumerate(results):
        if not result.detections:
            raise LivenessFailedError(f"frame {index} holds no face", reason="no_face")
        if len(result.detections) > 1:
            raise LivenessFailedError(f"frame {index} holds several faces", reason="several_faces")
        if not result.embeddings:  # found, but too small to embed
            raise LivenessFailedError(f"frame {index}'s face is too small", reason="no_face")


def _one_person(vectors: np.ndarray, centre: Sequence[int], threshold: float) -> float:
    """Every frame matches one of the ``center`` frames (another one, for those): the
    lowest such best similarity (1.0 for a lone frame). Against the frontal frames rather
    than every pair: a face turned one way and the same face turned the other are the least
    alike of a real answer, and each has the frontal view in common."""
    lowest = 1.0
    for index in range(len(vectors)):
        others = [c for c in centre if c != index]
        if others:
            lowest = min(lowest, float(np.max(vectors[others] @ vectors[index])))
    if lowest < threshold:
        raise LivenessFailedError(
            f"the frames are not all of one person (lowest similarity {lowest:.3f} < "
            f"{threshold:.3f})",
            reason="different_people",
        )
    return lowest


def _pose(index: int, result: FaceResult, calibration: PoseCalibration) -> Pose:
    try:
        return estimate_pose(result.primary.detection.landmarks, calibration.frontal_ratio)
    except ValueError as error:  # landmarks of no face: not a face to judge
        raise LivenessFailedError(f"frame {index}: {error}", reason="no_face") from error


def _movement(step: str, poses: Sequence[Pose], reference: Pose) -> float:
    """How far the step's frames went the asked way from the reference: the best frame."""
    if step == "left":
        return max(p.yaw - reference.yaw for p in poses)
    if step == "right":
        return max(reference.yaw - p.yaw for p in poses)
    if step == "up":
        return max(p.pitch - reference.pitch for p in poses)
    return max(reference.pitch - p.pitch for p in poses)


def judge(
    steps: Sequence[str],
    frame_steps: Sequence[str],
    results: Sequence[FaceResult],
    calibration: PoseCalibration,
    threshold: float,
) -> tuple[list[StepResult], np.ndarray]:
    """The verdict on a challenge's frames (``results[i]`` is frame ``i``'s, the pipeline's
    answer under the ``all`` policy): each movement step's result, and the frames' unit
    vectors for matching the claimed subject. Raises :class:`LivenessFailedError` with the
    first rule of the module docstring that fails."""
    check_frame_steps(steps, frame_steps)
    _one_face(results)
    vectors = np.stack([r.primary.vector for r in results])
    _one_person(vectors, [i for i, s in enumerate(frame_steps) if s == "center"], threshold)
    poses = [_pose(i, r, calibration) for i, r in enumerate(results)]
    centre = [p for p, s in zip(poses, frame_steps, strict=True) if s == "center"]
    reference = Pose(
        yaw=float(np.median([p.yaw for p in centre])),
        pitch=float(np.median([p.pitch for p in centre])),
        ratio=float(np.median([p.ratio for p in centre])),
    )
    verdicts = []
    for step in steps:
        if step == "center":
            continue
        mine = [p for p, s in zip(poses, frame_steps, strict=True) if s == step]
        required = calibration.required_pitch if step in NODS else calibration.required_yaw
        moved = _movement(step, mine, reference)
        verdicts.append(StepResult(step, moved >= required, moved, required))
    failed = [v.step for v in verdicts if not v.passed]
    if failed:
        raise LivenessFailedError(
            f"the head did not move as asked at step(s) {', '.join(failed)}",
            reason="no_movement",
        )
    return verdicts, vectors


__all__ = [
    "MAX_FRAMES",
    "MAX_FRAMES_PER_STEP",
    "NODS",
    "STEPS",
    "TURNS",
    "Step",
    "StepResult",
    "check_frame_steps",
    "judge",
    "new_steps",
]
