"""Enrolled subjects: enrol faces, list, describe, delete (photos included).

Plain ``def`` routes, run in FastAPI's threadpool: enrolment runs the synchronous pipeline
and every route calls boto3, neither of which may hold the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.deps import ServiceDep, require_api_key
from app.openapi import ID, KEYED, PHOTOS, IdPath, error_responses, photo_body
from app.requests import BodyDep
from facegate.errors import ValidationError

router = APIRouter(
    tags=["subjects"], dependencies=[Depends(require_api_key)], responses=error_responses(*KEYED)
)
#: An enrolment reads photos; 409: a subject of another model, or one being deleted.
ENROL_ERRORS = error_responses(*PHOTOS, 409)


ENROL_BODY = photo_body(
    {"image": "a photo", "images": "several photos (JSON: a list)"},
    {"metadata": {"type": "object", "additionalProperties": {"type": "string"}}},
    many=("images",),
)
ALIAS_BODY = photo_body(
    {"image": "a photo", "images": "several photos (JSON: a list)"},
    {"subject_id": ID, "metadata": {"type": "object"}},
    ["subject_id"],
    many=("images",),
)


@router.post(
    "/subjects/{subject_id}/faces",
    status_code=201,
    openapi_extra=ENROL_BODY,
    responses=ENROL_ERRORS,
)
def enrol(subject_id: IdPath, body: BodyDep, service: ServiceDep) -> dict[str, object]:
    """One or more photos (``image``, ``images``, or several ``image...`` fields); each gets
    its own verdict, and rejected photos do not stop the accepted ones."""
    return service.enrol(subject_id, body.all_photos(), body.fields.get("metadata"))


@router.post("/enroll", status_code=201, openapi_extra=ALIAS_BODY, responses=ENROL_ERRORS)
@router.post("/register", status_code=201, openapi_extra=ALIAS_BODY, responses=ENROL_ERRORS)
def enrol_alias(body: BodyDep, service: ServiceDep) -> dict[str, object]:
    """Aliases of ``POST /subjects/{subject_id}/faces`` with ``subject_id`` in the body."""
    subject_id = body.fields.get("subject_id")
    if not isinstance(subject_id, str):
        raise ValidationError("subject_id is required")
    return service.enrol(subject_id, body.all_photos(), body.fields.get("metadata"))


@router.get("/subjects")
def list_subjects(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, object]:
    return service.list_subjects(limit, cursor)


@router.get("/subjects/{subject_id}", responses=error_responses(404))
def get_subject(subject_id: IdPath, service: ServiceDep) -> dict[str, object]:
    return service.describe_subject(subject_id)


@router.delete("/subjects/{subject_id}", responses=error_responses(404))
def delete_subject(subject_id: IdPath, service: ServiceDep) -> dict[str, object]:
    return service.delete_subject(subject_id)
