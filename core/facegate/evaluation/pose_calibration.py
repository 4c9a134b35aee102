"""Calibrating the liveness check's head-pose estimate on real photos
(``facegate calibrate-pose --root ../shared/lfw-dev``).

LFW's photos hold their people in many poses, with no pose labels; what the liveness check
needs from them is two distributions, and the gap between them:

- how far a *still* face seems to move: each photo against itself moved the ways a photo or
  screen held up to a camera moves (rescaled, shifted, rolled, re-compressed, darker, and
  tilted away from the camera by up to 30 degrees as a whole plane, seen by a pinhole camera
  of a webcam's field of view). A printed face is a plane: its nose cannot cross its
  midline, so what these move the estimate is the estimate's own noise;
- how far real heads are turned in ordinary photos: the spread of LFW's yaw and pitch, and
  each photo against its mirror image (the same face turned the other way).

The movement a step of a challenge requires is chosen above the still-photo tail by a
margin, and recorded with both distributions (:mod:`facegate.liveness.calibration`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from facegate.evaluation.calibrate import IMAGE_SUFFIXES
from facegate.liveness.pose import Pose, estimate_pose
from facegate.pipeline.face_pipeline import FacePipeline

QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
#: A webcam's horizontal field of view, for the tilted-photo projection.
FIELD_OF_VIEW_DEG = 60.0
TILTS_DEG = (-30.0, -15.0, 15.0, 30.0)
#: The required movement is this many times the 99th percentile of a still photo's apparent
#: movement under the move that moves it most (rounded up to 0.05). Not the maximum: among
#: 1,500 photos a few moves make the detector pick another face or lose the face, which
#: says nothing of the estimate.
MARGIN = 1.25


def _perspective_coefficients(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """PIL's 8 PERSPECTIVE coefficients mapping output points ``dst`` to input ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solution = np.linalg.solve(np.array(rows, float), src.reshape(8).astype(float))
    return [float(c) for c in solution]


def tilted(image: Image.Image, degrees: float) -> Image.Image:
    """The photo as a plane turned ``degrees`` about its vertical axis, through a pinhole
    camera of :data:`FIELD_OF_VIEW_DEG` at the distance where the photo fills the frame."""
    width, height = image.size
    focal = (width / 2) / np.tan(np.radians(FIELD_OF_VIEW_DEG / 2))
    theta = np.radians(degrees)
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], float)
    projected = []
    for x, y in corners - [width / 2, height / 2]:
        depth = focal + x * np.sin(theta)
        projected.append([focal * x * np.cos(theta) / depth, focal * y / depth])
    dst = np.array(projected) + np.array([width / 2, height / 2])
    coefficients = _perspective_coefficients(corners, dst)
    return image.transform(
        image.size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC
    )


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _shifted(image: Image.Image, dx: int, dy: int) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy))


def _rescaled(image: Image.Image, scale: float) -> Image.Image:
    width, height = image.size
    return image.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC)


#: The ways a still photo held to a camera moves, by name.
STILL_MOVES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "scale 0.8": lambda im: _rescaled(im, 0.8),
    "scale 1.25": lambda im: _rescaled(im, 1.25),
    "shift 10 px": lambda im: _shifted(im, 10, -6),
    "roll +10 deg": lambda im: im.rotate(10, Image.Resampling.BICUBIC),
    "roll -10 deg": lambda im: im.rotate(-10, Image.Resampling.BICUBIC),
    "jpeg q40": lambda im: _jpeg(im, 40),
    "darker 0.6": lambda im: ImageEnhance.Brightness(im).enhance(0.6),
    **{f"tilt {t:+.0f} deg": partial(tilted, degrees=t) for t in TILTS_DEG},
}


def _quantiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, float)
    found = {f"p{round(q * 100)}": round(float(np.quantile(array, q)), 4) for q in QUANTILES}
    return found | {"max": round(float(array.max()), 4), "n": int(array.size)}


def _pose(pipeline: FacePipeline, image: Image.Image, ratio: float) -> Pose | None:
    faces = pipeline.detector.detect(np.asarray(image.convert("RGB")))
    return estimate_pose(faces[0].landmarks, ratio) if faces else None


def calibrate_pose(pipeline: FacePipeline, root: Path) -> dict[str, Any]:
    """The record described in the module docstring, for ``pipeline``'s detector, on every
    photo under ``root`` (``ROOT/<identity>/<photo>``)."""
    started = time.perf_counter()
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    images, poses = [], []
    for path in photos:
        image = Image.open(path).convert("RGB")
        pose = _pose(pipeline, image, 0.0)
        if pose is not None:
            images.append(image)
            poses.append(pose)
    frontal_ratio = float(np.median([p.ratio for p in poses]))
    yaws = [p.yaw for p in poses]
    pitches = [frontal_ratio - p.ratio for p in poses]
    mirrored = []
    still_yaw: dict[str, list[float]] = {name: [] for name in STILL_MOVES}
    still_pitch: dict[str, list[float]] = {name: [] for name in STILL_MOVES}
    missed = 0
    for image, pose in zip(images, poses, strict=True):
        flipped = _pose(pipeline, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 0.0)
        if flipped is not None:
            mirrored.append(abs(flipped.yaw + pose.yaw))
        for name, move in STILL_MOVES.items():
            moved = _pose(pipeline, move(image), 0.0)
            if moved is None:
                missed += 1
                continue
            still_yaw[name].append(abs(moved.yaw - pose.yaw))
            still_pitch[name].append(abs(moved.ratio - pose.ratio))
    yaw_tail = max(float(np.quantile(v, 0.99)) for v in still_yaw.values())
    pitch_tail = max(float(np.quantile(v, 0.99)) for v in still_pitch.values())
    return {
        "detector": pipeline.detector_name,
        "detector_threshold": pipeline.detector.threshold,
        "frontal_ratio": round(frontal_ratio, 4),
        "required_yaw": float(np.ceil(MARGIN * yaw_tail * 20) / 20),
        "required_pitch": float(np.ceil(MARGIN * pitch_tail * 20) / 20),
        "margin": MARGIN,
        "photos": {"root": root.name, "found": len(poses), "no_face": len(photos) - len(poses)},
        "yaw": _quantiles(yaws),
        "pitch": _quantiles(pitches),
        "abs_yaw": _quantiles([abs(y) for y in yaws]),
        "mirror_yaw_sum": _quantiles(mirrored),
        "still_abs_yaw_change": {name: _quantiles(v) for name, v in still_yaw.items()},
        "still_abs_pitch_change": {name: _quantiles(v) for name, v in still_pitch.items()},
        "still_without_face": missed,
        "method": "facegate.evaluation.pose_calibration: required movement = margin x the "
        "99th percentile of a still photo's apparent movement under its worst move, rounded "
        "up to 0.05",
        "command": f"FACEGATE_DETECTOR={pipeline.detector_name} facegate calibrate-pose "
        f"--root {root}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }


__all__ = ["STILL_MOVES", "calibrate_pose", "tilted"]
