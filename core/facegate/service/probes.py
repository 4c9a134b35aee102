"""Decisions that need only the served model: threshold, reference embedding, 1:1, embeddings.

Pure functions of a :class:`~facegate.types.FaceProcessor` (its card and its deployment
threshold), so the CLI runs the same decisions as the API without stores, and tests run them
with a fake processor. :class:`facegate.service.FaceService` is how the API reaches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

import numpy as np

from facegate.errors import FaceGateError, ModelMismatchError, ValidationError
from facegate.models.card import resolve_threshold
from facegate.pipeline.verify import VerificationResult, verify_embeddings
from facegate.settings import MultiFacePolicy
from facegate.types import FaceEmbedding, FaceProcessor, FaceResult, ImageSource

#: What ``multi_face`` may ask of an embedding request, in the order errors list them.
POLICIES: tuple[MultiFacePolicy, ...] = get_args(MultiFacePolicy)
#: How far a reference embedding's L2 norm may be from 1. The API's embeddings are float32
#: unit vectors, off by ~1e-7 once sent as JSON; 1e-3 also admits float16 storage
#: (~5e-4) and refuses anything that would need normalising.
NORM_TOLERANCE = 1e-3


def decision_threshold(
    processor: FaceProcessor, threshold: float | None = None, far: float | None = None
) -> float:
    """The request's own rule, else the deployment's.

    A request may name a raw cosine ``threshold`` or a target ``far`` (the card's threshold
    calibrated for that false accept rate), not both; without either it is decided at the
    deployment's threshold (``FACEGATE_THRESHOLD``, else ``FACEGATE_FAR``, else the card's
    default: ``processor.threshold``). Both rules go through
    :func:`~facegate.models.card.resolve_threshold`, so they cannot disagree on what a FAR
    means. :class:`ValidationError` for both at once, a threshold outside [-1, 1] or a FAR
    the card has no calibration for.
    """
    if threshold is None and far is None:
        return processor.threshold
    return resolve_threshold(processor.card, threshold, far)


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
            {"face_index": f.face_index, **f.detection.to_dict(), "embedding": f.vector.tolist()}
            for f in result.embeddings
        ],
        "detected": len(result.detections),
    }
