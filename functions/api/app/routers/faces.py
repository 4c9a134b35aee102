"""Photos sent with the request: 1:1 compare, 1:N identify, embedding extraction."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Request

from app.deps import PhotoStoreDep, ServiceDep, SettingsDep, require_api_key
from app.openapi import photo_body
from app.requests import read_body
from facegate.errors import ModelMismatchError, ValidationError

router = APIRouter(tags=["faces"], dependencies=[Depends(require_api_key)])

#: Per-request decision rule: a raw threshold or a calibrated target FAR (not both).
DECISION_FIELDS: dict[str, object] = {
    "threshold": {
        "type": "number",
        "minimum": -1,
        "maximum": 1,
        "description": "cosine threshold for this request (default: the deployment's)",
    },
    "far": {
        "type": "number",
        "description": "decide at the model card's threshold calibrated for this false "
        "accept rate, e.g. 0.001 (see GET /health for the calibrated ones)",
    },
}


@router.post(
    "/compare",
    openapi_extra=photo_body(
        {"image_a": "first photo", "image_b": "second photo", "image": "photo to verify"},
        {
            "subject_id": {"type": "string", "description": "verify image against this subject"},
            "embedding": {"type": "array", "items": {"type": "number"}},
            "model_id": {"type": "string", "description": "model of the reference embedding"},
            **DECISION_FIELDS,
        },
    ),
)
async def compare(
    request: Request, service: ServiceDep, store: PhotoStoreDep, settings: SettingsDep
) -> dict[str, object]:
    """``image_a`` + ``image_b``; or ``image`` + ``subject_id`` (best of the subject's
    enrolled faces); or ``image`` + a reference ``embedding`` (with its ``model_id``)."""
    body = await read_body(request, store, settings.s3_max_image_bytes)
    threshold = _threshold(body.fields, service)
    if "subject_id" in body.fields:
        subject_id = str(body.fields["subject_id"])
        return service.compare_subject(body.photo("image"), subject_id, threshold=threshold)
    if "embedding" in body.fields:
        reference = _reference(body.fields, service)
        return service.compare_embedding(body.photo("image"), reference, threshold=threshold)
    return service.compare_photos(body.photo("image_a"), body.photo("image_b"), threshold=threshold)


@router.post(
    "/identify",
    openapi_extra=photo_body(
        {"image": "probe photo"},
        {
            "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
            "gallery": {"type": "string", "description": "name of a Parquet gallery"},
            "subjects": {"type": "boolean", "default": True},
            **DECISION_FIELDS,
        },
        ["image"],
    ),
)
async def identify(
    request: Request, service: ServiceDep, store: PhotoStoreDep, settings: SettingsDep
) -> dict[str, object]:
    """Top-k subjects for ``image`` among enrolled subjects and/or a named ``gallery``."""
    body = await read_body(request, store, settings.s3_max_image_bytes)
    top_k = _int(body.fields.get("top_k", 5), "top_k", 1, 100)
    gallery = body.fields.get("gallery")
    subjects = str(body.fields.get("subjects", "true")).lower() not in ("false", "0", "no")
    return service.identify(
        body.photo("image"),
        top_k=top_k,
        gallery=str(gallery) if gallery is not None else None,
        subjects=subjects,
        threshold=_threshold(body.fields, service),
    )


@router.post(
    "/embedding",
    openapi_extra=photo_body(
        {"image": "photo"},
        {"multi_face": {"type": "string", "enum": ["all", "largest", "center", "reject"]}},
        ["image"],
    ),
)
async def embedding(
    request: Request, service: ServiceDep, store: PhotoStoreDep, settings: SettingsDep
) -> dict[str, object]:
    """Every kept face's embedding, box and score (``multi_face``: all (default), largest,
    center or reject)."""
    body = await read_body(request, store, settings.s3_max_image_bytes)
    policy = body.fields.get("multi_face", "all")
    if policy not in ("largest", "all", "reject", "center"):
        raise ValidationError("multi_face must be one of largest, all, reject, center")
    pipeline = service.pipeline
    result = pipeline.process(body.photo("image"), policy=policy)
    return {
        "model_id": pipeline.model_id,
        "dim": pipeline.card.embedding_dim,
        "faces": [
            {"face_index": f.face_index, **f.detection.to_dict(), "embedding": f.vector.tolist()}
            for f in result.embeddings
        ],
        "detected": len(result.detections),
    }


def _int(value: object, name: str, low: int, high: int) -> int:
    try:
        number = int(str(value))
    except ValueError as exc:
        raise ValidationError(f"{name} must be an integer") from exc
    if not low <= number <= high:
        raise ValidationError(f"{name} must be between {low} and {high}")
    return number


def _number(value: object, name: str) -> float:
    try:
        number = float(str(value))
    except ValueError as exc:
        raise ValidationError(f"{name} must be a number") from exc
    if not np.isfinite(number):
        raise ValidationError(f"{name} must be finite")
    return number


def _threshold(fields: dict[str, object], service: object) -> float | None:
    """The request's ``threshold`` or ``far`` as a threshold; None: the deployment's."""
    threshold = _number(fields["threshold"], "threshold") if "threshold" in fields else None
    far = _number(fields["far"], "far") if "far" in fields else None
    if threshold is None and far is None:
        return None
    return service.decision_threshold(threshold, far)  # type: ignore[attr-defined]


def _reference(fields: dict[str, object], service: object) -> np.ndarray:
    pipeline = service.pipeline  # type: ignore[attr-defined]
    claimed = fields.get("model_id", pipeline.model_id)
    if claimed != pipeline.model_id:
        raise ModelMismatchError(
            f"embedding is from {claimed!r}; this API serves {pipeline.model_id!r}"
        )
    try:
        vector = np.asarray(fields["embedding"], dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValidationError("embedding must be a list of numbers") from exc
    dim = pipeline.card.embedding_dim
    if vector.shape != (dim,) or not np.isfinite(vector).all():
        raise ModelMismatchError(
            f"embedding must be {dim} finite numbers for {pipeline.model_id!r}"
        )
    return vector
