"""Photos sent with the request: 1:1 compare, 1:N identify, embedding extraction.

Plain ``def`` routes (FastAPI runs them in its threadpool): the pipeline is synchronous and
must not hold the event loop; the body is read before, by :data:`app.requests.BodyDep`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.deps import IdentifyServiceDep, ServiceDep, require_api_key
from app.openapi import ID, KEYED, PHOTOS, error_responses, photo_body
from app.requests import Body, BodyDep
from facegate.service.faces import FaceService

router = APIRouter(
    tags=["faces"],
    dependencies=[Depends(require_api_key)],
    responses=error_responses(*KEYED, *PHOTOS),
)

#: Per-request decision rule: a raw threshold or a calibrated target FAR (not both).
DECISION_FIELDS: dict[str, object] = {
    "threshold": {
        "type": "number",
        "minimum": -1,
        "maximum": 1,
        "description": "cosine threshold for this request (default: the deployment's); "
        "not below the deployment's minimum (default: the model card's threshold for FAR "
        "0.01), else 400",
    },
    "far": {
        "type": "number",
        "description": "decide at the model card's threshold calibrated for this false "
        "accept rate, e.g. 0.001 (see GET /health for the calibrated ones), whose threshold "
        "is not below the deployment's minimum",
    },
}


COMPARE_BODY = photo_body(
    {"image_a": "first photo", "image_b": "second photo", "image": "photo to verify"},
    {
        "subject_id": {**ID, "description": "verify image against this subject"},
        "embedding": {"type": "array", "items": {"type": "number"}},
        "model_id": {"type": "string", "description": "model of the reference embedding"},
        **DECISION_FIELDS,
    },
    one_of=[["image_a", "image_b"], ["image", "subject_id"], ["image", "embedding"]],
)
IDENTIFY_BODY = photo_body(
    {"image": "probe photo"},
    {
        "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
        "gallery": {**ID, "description": "name of a Parquet gallery"},
        "subjects": {"type": "boolean", "default": True},
        **DECISION_FIELDS,
    },
    ["image"],
)


def compare_with(body: Body, service: FaceService) -> dict[str, object]:
    """A compare request's answer from ``service`` (the default collection's, or another's:
    ``subject_id`` is looked up in the service's collection)."""
    threshold, far = body.number("threshold"), body.number("far")
    if "subject_id" in body.fields:
        subject_id = str(body.fields["subject_id"])
        return service.compare_subject(
            body.photo("image"), subject_id, threshold=threshold, far=far
        )
    if "embedding" in body.fields:
        return service.compare_embedding(
            body.photo("image"),
            body.fields["embedding"],
            model_id=body.text("model_id"),
            threshold=threshold,
            far=far,
        )
    return service.compare_photos(
        body.photo("image_a"), body.photo("image_b"), threshold=threshold, far=far
    )


def identify_with(body: Body, service: FaceService) -> dict[str, object]:
    """An identify request's answer from ``service``: its collection's subjects and/or a
    named gallery."""
    return service.identify(
        body.photo("image"),
        top_k=body.integer("top_k", 5, 1, 100),
        gallery=body.text("gallery"),
        subjects=body.flag("subjects", True),
        threshold=body.number("threshold"),
        far=body.number("far"),
    )


@router.post("/compare", responses=error_responses(409), openapi_extra=COMPARE_BODY)
def compare(body: BodyDep, service: ServiceDep) -> dict[str, object]:
    """``image_a`` + ``image_b``; or ``image`` + ``subject_id`` (best of the subject's
    enrolled faces, in the default collection); or ``image`` + a reference ``embedding``
    (with its ``model_id``)."""
    return compare_with(body, service)


@router.post("/identify", responses=error_responses(409), openapi_extra=IDENTIFY_BODY)
def identify(body: BodyDep, service: IdentifyServiceDep) -> dict[str, object]:
    """Top-k subjects for ``image`` among the default collection's enrolled subjects and/or
    a named ``gallery``: only those at or above the decision threshold are listed, scores
    to 3 decimals. A key bound to collections searches as ``/collections/default/identify``
    does: default's subjects and its attached galleries, and may name no other gallery."""
    return identify_with(body, service)


@router.post(
    "/embedding",
    openapi_extra=photo_body(
        {"image": "photo"},
        {"multi_face": {"type": "string", "enum": ["all", "largest", "center", "reject"]}},
        ["image"],
    ),
)
def embedding(body: BodyDep, service: ServiceDep) -> dict[str, object]:
    """Every kept face's embedding, box and score (``multi_face``: all (default), largest,
    center or reject)."""
    return service.embed(body.photo("image"), multi_face=body.fields.get("multi_face", "all"))
