"""Decisions that need only the served model: threshold, reference embedding, 1:1, embeddings.

Also how answers show what was decided: scores to 3 decimals, towards the decision.

Pure functions of a :class:`~facegate.types.FaceProcessor` (its card and its deployment
threshold), so the CLI runs the same decisions as the API without stores, and tests run them
with a fake processor. :class:`facegate.service.FaceService` is how the API reaches them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np

from facegate.errors import FaceGateError, ModelMismatchError, ValidationError
from facegate.models.card import resolve_threshold
from facegate.pipeline.verify import VerificationResult, verify_embeddings
from facegate.settings import MultiFacePolicy
from facegate.types import Detection, FaceEmbedding, FaceProcessor, FaceResult, ImageSource

#: What ``multi_face`` may ask of an embedding request, in the order errors list them.
POLICIES: tuple[MultiFacePolicy, ...] = get_args(MultiFacePolicy)
#: How far a reference embedding's L2 norm may be from 1. The API's embeddings are float32
#: unit vectors, off by ~1e-7 once sent as JSON; 1e-3 also admits float16 storage
#: (~5e-4) and refuses anything that would need normalising.
NORM_TOLERANCE = 1e-3
#: The false accept rate whose calibrated threshold is a deployment's default floor: no
#: request is decided where more than one impostor in a hundred would be accepted.
FLOOR_FAR = 0.01
#: Decimals of every similarity and detector score in an answer: enough to read a decision,
#: too few to steer a client-made embedding towards a subject by hill-climbing on scores.
SCORE_DECIMALS = 3


def decision_floor(processor: FaceProcessor, min_threshold: float | None = None) -> float:
    """The lowest threshold a request may be decided at in this deployment.

    ``min_threshold`` when the deployment names one (``FACEGATE_MIN_THRESHOLD``); else the
    card's threshold calibrated for FAR :data:`FLOOR_FAR` (its default threshold if it has no
    such calibration), or the deployment's own threshold where an operator set a lower one:
    the default floor never forbids what the deployment itself decides at. Without a floor
    ``threshold: -1`` made any face a match.
    """
    if min_threshold is not None:
        return float(min_threshold)
    card = processor.card
    calibrated = card.far_thresholds.get(f"{FLOOR_FAR:g}", card.threshold)
    return min(calibrated, processor.threshold)


def decision_threshold(
    processor: FaceProcessor,
    threshold: float | None = None,
    far: float | None = None,
    *,
    min_threshold: float | None = None,
) -> float:
    """The request's own rule, else the deployment's; never below :func:`decision_floor`.

    A request may name a raw cosine ``threshold`` or a target ``far`` (the card's threshold
    calibrated for that false accept rate), not both; without either it is decided at the
    deployment's threshold (``FACEGATE_THRESHOLD``, else ``FACEGATE_FAR``, else the card's
    default: ``processor.threshold``), raised to an explicit floor above it. Both rules go
    through :func:`~facegate.models.card.resolve_threshold`, so they cannot disagree on what
    a FAR means. :class:`ValidationError` for both at once, a threshold outside [-1, 1], a
    FAR the card has no calibration for, or a rule below the floor: refused rather than
    clamped, so that a caller never believes it was decided at what it asked.
    """
    floor = decision_floor(processor, min_threshold)
    if threshold is None and far is None:
        return max(processor.threshold, floor)
    decided = resolve_threshold(processor.card, threshold, far)
    if decided < floor:
        asked = f"threshold {decided:g}" if far is None else f"FAR {far:g} (threshold {decided:g})"
        raise ValidationError(f"{asked} is below this deployment's minimum {floor:g}")
    return decided


def reference_embedding(
    processor: FaceProcessor, values: object, model_id: str | None = None
) -> np.ndarray:
    """A caller's reference embedding as ``(D,) float32``, checked against the served model.

    ``model_id`` is the model the caller says made it (default: the served one); a vector of
    another model is refused with :class:`ModelMismatchError`, as its similarity would be
    judged at a threshold calibrated for a different embedding space. A vector no model
    could have made for this API is the caller's mistake, a :class:`ValidationError`: not
    ``D`` numbers, not finite, or not of unit length, within :data:`NORM_TOLERANCE`. It is
    used as sent, never normalised: a vector the API did not produce is not made to look
    like one.
    """
    served = processor.model_id
    claimed = served if model_id is None else model_id
    if claimed != served:
        raise ModelMismatchError(f"embedding is from {claimed!r}; this API serves {served!r}")
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError("embedding must be a list of numbers") from exc
    dim = processor.card.embedding_dim
    if vector.shape != (dim,):
        raise ValidationError(f"embedding must be {dim} numbers for {served!r}")
    if not np.isfinite(vector).all():
        raise ValidationError("embedding must hold finite numbers only")
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise ValidationError(
            f"embedding must be of unit length (L2 norm 1 +- {NORM_TOLERANCE:g}), got {norm:.6g}"
        )
    return vector.astype(np.float32)


def compare_photos(
    processor: FaceProcessor,
    first: ImageSource,
    second: ImageSource,
    *,
    threshold: float,
    labels: Sequence[str] | None = None,
) -> VerificationResult:
    """1:1 of the largest face of each photo, in one batch (same-size photos share one
    detection pass). A photo's error is raised, prefixed with its label when given (the CLI
    names the file; the API's fields are named by the error already)."""
    results = processor.process_many([first, second], policy="largest")
    faces: list[FaceEmbedding] = []
    for index, result in enumerate(results):
        if isinstance(result, FaceGateError):
            if labels is None:
                raise result
            raise type(result)(f"{labels[index]}: {result.message}")
        faces.append(result.primary)
    a, b = faces
    return verify_embeddings(
        a.vector,
        b.vector,
        threshold=threshold,
        model_id=processor.model_id,
        faces=(a.detection, b.detection),
    )


def check_policy(policy: object) -> MultiFacePolicy:
    """``multi_face`` of a request, refused unless it is one of :data:`POLICIES`."""
    for allowed in POLICIES:
        if policy == allowed:
            return allowed
    raise ValidationError(f"multi_face must be one of {', '.join(POLICIES)}")


def embedding_response(processor: FaceProcessor, result: FaceResult) -> dict[str, Any]:
    """The answer to an embedding request: every kept face's index, box, score, landmarks and
    ``(D,)`` embedding, the number of faces detected, and the model that made them."""
    return {
        "model_id": processor.model_id,
        "dim": processor.card.embedding_dim,
        "faces": [
            {"face_index": f.face_index, **shown_face(f.detection), "embedding": f.vector.tolist()}
            for f in result.embeddings
        ],
        "detected": len(result.detections),
    }


def shown_score(similarity: float, match: bool) -> float:
    """``similarity`` to :data:`SCORE_DECIMALS`, rounded towards the decision (up for a
    match, down for none), so that ``similarity >= threshold`` read off an answer always
    agrees with its ``match``: 0.70014 at threshold 0.7001 is a match, shown as 0.701."""
    scale: int = 10**SCORE_DECIMALS
    scaled = round(similarity * scale, 6)  # 0.3 * 1000 is 300.00000000000006
    shown = (math.ceil(scaled) if match else math.floor(scaled)) / scale
    # A cosine, whatever the float rounding of a dot product of unit vectors (1.0000003).
    return min(1.0, max(-1.0, shown))


def shown_face(detection: Detection) -> dict[str, Any]:
    """A detection as answers show it: its detector score to :data:`SCORE_DECIMALS`."""
    return detection.to_dict() | {"score": round(float(detection.score), SCORE_DECIMALS)}


def verification_response(result: VerificationResult) -> dict[str, Any]:
    """The answer to a 1:1 request: the decision, its rounded similarity and threshold, the
    model and each side's face (None for a side that was an embedding)."""
    return {
        "similarity": shown_score(result.similarity, result.match),
        "threshold": round(result.threshold, 6),
        "match": result.match,
        "model_id": result.model_id,
        "faces": [None if f is None else shown_face(f) for f in result.faces],
    }
