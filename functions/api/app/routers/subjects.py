"""Enrolled subjects: enrol faces, list, describe, delete (photos included), export.

Plain ``def`` routes, run in FastAPI's threadpool: enrolment runs the synchronous pipeline
and every route calls boto3, neither of which may hold the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from app.deps import ExportDep, ServiceDep, require_api_key
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


class ExportedRows(BaseModel):
    """The rows of one gallery table (compacted, a part, a rejects part) naming the subject."""

    key: str
    rows: int
    image_keys: list[str]


class ExportedGallery(BaseModel):
    gallery: str
    compacted: ExportedRows | None
    #: ``delta.parquet``: the rows compacted since ``gallery.parquet`` was last rewritten.
    delta: ExportedRows | None = None
    parts: list[ExportedRows]
    rejects: list[ExportedRows]


class ExportedFace(BaseModel):
    face_id: str
    model_id: str | None
    weights_sha256: str | None
    created_at: str | None
    bbox: list[float] | None
    det_score: float | None
    image_key: str
    photo_versions: int
    embedding: list[float] | None


class ExportedPhoto(BaseModel):
    key: str
    versions: int


class Enrolment(BaseModel):
    subject_id: str
    model_id: str
    face_count: int
    created_at: str
    updated_at: str
    metadata: dict[str, str]


class Tombstone(BaseModel):
    deleted_at: str


class GalleryErasure(BaseModel):
    """The subject's tombstone in one gallery: rows from older photos are dropped."""

    scope: str
    deleted_at: str


class ExportedJobRow(BaseModel):
    """A manifest row of the person's: ``row`` is its number in the job (its result's
    ``row``); ``probe`` the key its probe names (the cell as written if it names none);
    ``claimed`` false: a result identified the row's probe as the person."""

    row: int
    gallery: str | None
    mode: str | None
    probe: str | None
    claimed: bool


class ExportedJob(BaseModel):
    """A verification job whose manifest names the person, with those rows' probe photos in
    the job folder; ``readable`` false: the manifest holds the id but cannot be read as a job
    manifest, so no row is told apart."""

    job_id: str
    manifest: str
    readable: bool
    rows: list[ExportedJobRow]
    probes: list[ExportedPhoto]


class ExportedResults(BaseModel):
    """A results table under ``results/`` with rows naming the person (claimed, best or
    ranked subject): their count and ``row`` numbers, never their scores."""

    key: str
    rows: int
    row_numbers: list[int]


class ExportedDeadLetters(BaseModel):
    """Messages of one dead-letter queue naming the person, by id (left in the queue)."""

    queue: str
    messages: int
    message_ids: list[str]


class Unchecked(BaseModel):
    """An object that may hold the person but could not be read: ``too_large`` (a manifest
    over the worker's limit), ``unreadable`` (a ``.parquet`` under ``results/`` that is no
    results table)."""

    key: str
    reason: str


class SubjectExportAnswer(BaseModel):
    """What FaceGate holds on a person; ``embedding`` is null unless ``embeddings=true``."""

    subject_id: str
    enrolment: Enrolment | None
    faces: list[ExportedFace]
    photos: list[ExportedPhoto]
    galleries: list[ExportedGallery]
    uploads: list[ExportedPhoto]
    tombstone: Tombstone | None
    erasures: list[GalleryErasure]
    jobs: list[ExportedJob]
    results: list[ExportedResults]
    unchecked: list[Unchecked]
    dead_letters: list[ExportedDeadLetters]
    embeddings_included: bool


@router.get(
    "/subjects/{subject_id}/export",
    response_model=SubjectExportAnswer,
    responses=error_responses(404),
)
def export_subject(
    subject_id: IdPath, export: ExportDep, embeddings: bool = False
) -> dict[str, object]:
    """Data-subject access: the enrolment, faces, photo keys, gallery and rejects rows,
    tombstones, verification-job manifest rows and probes, result rows and dead-letter
    messages of a subject, API-enrolled or only in a batch gallery or a job; never photo
    bytes, scores or message bodies, and embeddings (6 decimals) only with
    ``embeddings=true``. The dead-letter queues are read, not changed: each message is
    visible again once the scan ends."""
    return export.export(subject_id, embeddings=embeddings)
