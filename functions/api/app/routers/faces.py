"""1:1 compare and embedding extraction on photos sent with the request."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from app.deps import PipelineDep
from app.requests import read_body, require
from facegate.errors import ModelMismatchError, ValidationError
from facegate.verify import verify_embeddings

router = APIRouter(tags=["faces"])


@router.post("/compare")
async def compare(request: Request, pipeline: PipelineDep) -> dict[str, object]:
    """Two photos (``image_a``, ``image_b``), or one photo and a reference ``embedding``."""
    photos, fields = await read_body(request)
    if "embedding" in fields:
        (photo,) = require(photos, "image")
        reference = _reference(fields, pipeline.model_id, pipeline.card.embedding_dim)
        face = pipeline.process(photo, policy="largest").primary
        result = verify_embeddings(
            face.vector,
            reference,
            threshold=pipeline.threshold,
            model_id=pipeline.model_id,
            faces=(face.detection, None),
        )
        return result.to_dict()
    first, second = require(photos, "image_a", "image_b")
    a = pipeline.process(first, policy="largest").primary
    b = pipeline.process(second, policy="largest").primary
    result = verify_embeddings(
        a.vector,
        b.vector,
        threshold=pipeline.threshold,
        model_id=pipeline.model_id,
        faces=(a.detection, b.detection),
    )
    return result.to_dict()


@router.post("/embedding")
async def embedding(request: Request, pipeline: PipelineDep) -> dict[str, object]:
    """Every kept face's embedding, box and score (``multi_face`` field: largest or all)."""
    photos, fields = await read_body(request)
    (photo,) = require(photos, "image")
    policy = fields.get("multi_face", "all")
    if policy not in ("largest", "all", "reject", "center"):
        raise ValidationError("multi_face must be one of largest, all, reject, center")
    result = pipeline.process(photo, policy=policy)
    return {
        "model_id": pipeline.model_id,
        "dim": pipeline.card.embedding_dim,
        "faces": [
            {"face_index": f.face_index, **f.detection.to_dict(), "embedding": f.vector.tolist()}
            for f in result.embeddings
        ],
        "detected": len(result.detections),
    }


def _reference(fields: dict[str, object], model_id: str, dim: int) -> np.ndarray:
    claimed = fields.get("model_id", model_id)
    if claimed != model_id:
        raise ModelMismatchError(f"embedding is from {claimed!r}; this API serves {model_id!r}")
    try:
        vector = np.asarray(fields["embedding"], dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValidationError("embedding must be a list of numbers") from exc
    if vector.shape != (dim,) or not np.isfinite(vector).all():
        raise ModelMismatchError(f"embedding must be {dim} finite numbers for {model_id!r}")
    return vector
