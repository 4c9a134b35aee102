"""Subjects of a collection: enrol, list, describe, delete, compare (1:1), identify (1:N).

The same operations as ``/subjects``, ``/compare`` and ``/identify`` (which act on the
``default`` collection), within the collection the path names: its subjects only, its
decision rule when a request gives none, its tombstone scope on delete. A collection never
created is 404 ``unknown_collection``; the same subject id in another collection is someone
else, never seen from here.

Plain ``def`` routes, run in FastAPI's threadpool (the pipeline and boto3 block).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.deps import CollectionFacesDep, require_api_key
from app.openapi import KEYED, PHOTOS, IdPath, error_responses
from app.requests import BodyDep
from app.routers.faces import COMPARE_BODY, IDENTIFY_BODY, compare_with, identify_with
from app.routers.subjects import ENROL_BODY, ENROL_ERRORS

router = APIRouter(
    tags=["collections"],
    dependencies=[Depends(require_api_key)],
    responses=error_responses(*KEYED, 404),
)
PREFIX = "/collections/{collection}"


@router.post(
    f"{PREFIX}/subjects/{{subject_id}}/faces",
    status_code=201,
    openapi_extra=ENROL_BODY,
    responses=ENROL_ERRORS,
)
def enrol(subject_id: IdPath, body: BodyDep, service: CollectionFacesDep) -> dict[str, object]:
    """Enrol photos of ``subject_id`` into the collection (as ``POST /subjects/{id}/faces``)."""
    return service.enrol(subject_id, body.all_photos(), body.fields.get("metadata"))


@router.get(f"{PREFIX}/subjects")
def list_subjects(
    service: CollectionFacesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, object]:
    """The collection's subjects, a page at a time."""
    return service.list_subjects(limit, cursor)


@router.get(f"{PREFIX}/subjects/{{subject_id}}")
def get_subject(subject_id: IdPath, service: CollectionFacesDep) -> dict[str, object]:
    return service.describe_subject(subject_id)


@router.delete(f"{PREFIX}/subjects/{{subject_id}}")
def delete_subject(subject_id: IdPath, service: CollectionFacesDep) -> dict[str, object]:
    """Erase the subject from the collection, with the erasure's receipt."""
    return service.delete_subject(subject_id)


@router.post(
    f"{PREFIX}/compare",
    responses=error_responses(*PHOTOS, 409),
    openapi_extra=COMPARE_BODY,
)
def compare(body: BodyDep, service: CollectionFacesDep) -> dict[str, object]:
    """As ``POST /compare``; ``subject_id`` names a subject of this collection."""
    return compare_with(body, service)


@router.post(
    f"{PREFIX}/identify",
    responses=error_responses(*PHOTOS, 409),
    openapi_extra=IDENTIFY_BODY,
)
def identify(body: BodyDep, service: CollectionFacesDep) -> dict[str, object]:
    """As ``POST /identify``, among this collection's subjects (and/or a named gallery)."""
    return identify_with(body, service)
