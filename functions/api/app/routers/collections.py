"""Collections: the named groups of enrolled subjects (create, list, describe, delete),
exported as Parquet galleries and searching attached ones.

Every subject enrolled without naming a collection belongs to the implicit ``default``
collection, which always exists and cannot be deleted. Deleting another erases every subject
in it through the erasure path (a receipt; ``202`` and ``GET /erasures/{id}`` for a large
one). Exports and attachments touch galleries, the deployment's: keys bound to collections
cannot use them.

Plain ``def`` routes, run in FastAPI's threadpool: every one calls boto3, which blocks.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from app.deps import ApiKeyDep, CollectionServiceDep, require_api_key
from app.openapi import ID, KEYED, IdPath, error_responses
from app.requests import require_json
from facegate.settings import MultiFacePolicy
from facegate.storage.collections import MAX_DESCRIPTION_CHARS, MAX_LIST_LIMIT

router = APIRouter(
    tags=["collections"],
    dependencies=[Depends(require_api_key)],
    responses=error_responses(*KEYED),
)


class CollectionBody(BaseModel):
    """A new collection. ``model_id`` defaults to the deployment's model; ``threshold`` (a
    cosine) or ``far`` (a calibrated false accept rate), at most one, and ``multi_face``
    default to the deployment's when absent. Unknown fields are refused, so that a
    misspelt rule is not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(json_schema_extra=ID)]
    model_id: str | None = None
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)] | None = None
    threshold: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    far: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    multi_face: MultiFacePolicy | None = None


class CollectionAnswer(BaseModel):
    """A collection and what it holds. ``created_at`` is null for ``default`` while it is
    the implicit collection (never created: as old as the deployment); ``galleries`` are
    the batch galleries its identify searches besides its subjects; ``deleting`` is when its
    deletion began (null: it is not being deleted)."""

    name: str
    model_id: str
    description: str | None
    threshold: float | None
    far: float | None
    multi_face: MultiFacePolicy | None
    created_at: str | None
    galleries: list[str]
    deleting: str | None
    subjects: int
    faces: int


class CollectionPage(BaseModel):
    """One page, ``default`` first; ``next_cursor`` null on the last page."""

    collections: list[CollectionAnswer]
    next_cursor: str | None


class CollectionDeleted(BaseModel):
    """The receipt of a deletion done in the request: one erasure receipt per subject
    (``receipts``), the ``totals`` over them all (per kind: objects, versions destroyed,
    rows removed), the exports destroyed, and what remains by design. When the deletion is
    handed to the jobs workers (``202``), ``deleted`` is false and ``erasure_id`` says what
    to poll; the receipt is then ``GET /erasures/{id}``'s, with totals only."""

    model_config = ConfigDict(extra="allow")

    collection: str
    deleted: bool
    subjects_erased: int | None = None
    galleries_destroyed: list[str] = []
    totals: dict[str, dict[str, int]] = {}
    receipts: list[dict[str, Any]] = []
    remaining: list[dict[str, Any]] = []
    erasure_id: str | None = None
    status: str | None = None


class ExportBody(BaseModel):
    """The gallery to export the collection into: a new name, or its own earlier export."""

    model_config = ConfigDict(extra="forbid")

    gallery: Annotated[str, Field(json_schema_extra=ID)]


class ExportAnswer(BaseModel):
    """The export: its gallery and key, rows (faces) and subjects, and the rows dropped for
    subjects erased while it ran."""

    collection: str
    gallery: str
    model_id: str
    key: str
    rows: int
    subjects: int
    erased_dropped: int
    exported_at: str


@router.post(
    "/collections",
    status_code=201,
    response_model=CollectionAnswer,
    dependencies=[Depends(require_json)],
    responses=error_responses(409, 413, 415),
)
def create_collection(body: CollectionBody, service: CollectionServiceDep) -> dict[str, Any]:
    """Create a collection; 409 ``collection_exists`` when the name is taken (``default``
    always is), 400 ``validation_error`` for a model not installed here or a FAR its card
    has no calibration for."""
    return service.create(
        body.name,
        body.model_id,
        description=body.description,
        threshold=body.threshold,
        far=body.far,
        multi_face=body.multi_face,
    )


@router.get("/collections", response_model=CollectionPage)
def list_collections(
    service: CollectionServiceDep,
    key: ApiKeyDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of collections, ``default`` first, with their subject and face counts; a
    key bound to collections sees its own only (the others' names are theirs)."""
    return service.list(limit, cursor, only=None if key is None else key.collections)


@router.get(
    "/collections/{collection}", response_model=CollectionAnswer, responses=error_responses(404)
)
def get_collection(collection: IdPath, service: CollectionServiceDep) -> dict[str, Any]:
    """The collection, its decision defaults and its subject and face counts."""
    return service.describe(collection)


@router.delete(
    "/collections/{collection}",
    response_model=CollectionDeleted,
    response_model_exclude_none=True,
    responses=error_responses(404, 409) | {202: {"description": "handed to the jobs workers"}},
)
def delete_collection(
    collection: IdPath, service: CollectionServiceDep, response: Response
) -> dict[str, Any]:
    """Delete the collection and erase every subject in it, with the receipt; a collection
    of many subjects answers 202 and is deleted by the jobs workers (poll
    ``GET /erasures/{erasure_id}``). From the call on, its routes answer 409
    ``collection_deleting``. 409 ``default_collection`` for ``default``, 409
    ``collection_busy`` while verification jobs run on a gallery exported from it."""
    done, answer = service.delete(collection)
    if not done:
        response.status_code = 202
        return answer | {"deleted": False}
    return answer


@router.post(
    "/collections/{collection}/export",
    response_model=ExportAnswer,
    dependencies=[Depends(require_json)],
    responses=error_responses(404, 409, 413, 415),
)
def export_collection(
    collection: IdPath, body: ExportBody, service: CollectionServiceDep
) -> dict[str, Any]:
    """Export the collection's enrolled faces as a Parquet gallery (the batch galleries'
    schema), so that verification jobs match probes against these people; exporting again
    refreshes it. Erasing a subject of the collection erases them from the export too, and
    deleting the collection destroys it. 409 ``gallery_exists`` for a gallery that is not
    this collection's export, 409 ``no_enrolled_faces`` for an empty collection."""
    return service.export(collection, body.gallery)


@router.put(
    "/collections/{collection}/galleries/{gallery}",
    response_model=CollectionAnswer,
    responses=error_responses(404, 409),
)
def attach_gallery(
    collection: IdPath, gallery: IdPath, service: CollectionServiceDep
) -> dict[str, Any]:
    """Attach a built gallery of the collection's model: identify in the collection then
    searches its subjects and this gallery (at most 10 galleries). 404 ``unknown_gallery``
    for a gallery not built, 409 ``model_mismatch`` for another model's."""
    return service.attach(collection, gallery)


@router.delete(
    "/collections/{collection}/galleries/{gallery}",
    response_model=CollectionAnswer,
    responses=error_responses(404, 409),
)
def detach_gallery(
    collection: IdPath, gallery: IdPath, service: CollectionServiceDep
) -> dict[str, Any]:
    """Stop searching the gallery in the collection's identify; the gallery itself stays."""
    return service.detach(collection, gallery)
