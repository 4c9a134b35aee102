"""The pose calibration a liveness check decides with, per detector. Torch-free.

The records (``calibration/<detector>.json``) are written by ``facegate calibrate-pose``
(:mod:`facegate.evaluation.pose_calibration`) on LFW-dev, one per detector, since each
detector places the landmarks a little differently; they keep both distributions the
required movements were chosen from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from facegate.errors import ModelNotFoundError


@dataclass(frozen=True)
class PoseCalibration:
    """What a challenge's steps are judged by: the frontal face's nose ratio, and how far
    ``yaw`` (left/right) and ``pitch`` (up/down) must move from the ``center`` frames."""

    detector: str
    frontal_ratio: float
    required_yaw: float
    required_pitch: float
    record: dict[str, Any]


@lru_cache(maxsize=4)
def pose_calibration(detector: str) -> PoseCalibration:
    """The calibration recorded for ``detector``."""
    name = f"{detector}.json"
    folder = resources.files("facegate.liveness") / "calibration"
    try:
        record = json.loads((folder / name).read_text())
    except FileNotFoundError as error:
        raise ModelNotFoundError(
            f"no pose calibration for detector {detector!r}: run 'FACEGATE_DETECTOR={detector} "
            "facegate calibrate-pose --root <photos>'"
        ) from error
    return PoseCalibration(
        detector=detector,
        frontal_ratio=float(record["frontal_ratio"]),
        required_yaw=float(record["required_yaw"]),
        required_pitch=float(record["required_pitch"]),
        record=record,
    )


__all__ = ["PoseCalibration", "pose_calibration"]
