"""Collections: the named groups of enrolled subjects (create, list, describe, delete).

A first increment: the resource itself. Every enrolled subject belongs to the implicit
``default`` collection, which always exists and cannot be deleted; subjects are not keyed by
collection yet, so any other collection holds no subject.

Plain ``def`` routes, run in FastAPI's threadpool: every one calls boto3, which blocks.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
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
    the implicit collection (never created: as old as the deployment)."""

    name: str
    model_id: str
    description: str | None
    threshold: float | None
    far: float | None
    multi_face: MultiFacePolicy | None
    created_at: str | None
    subjects: int
    faces: int


class CollectionPage(BaseModel):
    """One page, ``default`` first; ``next_cursor`` null on the last page."""

    collections: list[CollectionAnswer]
    next_cursor: str | None


class CollectionDeleted(BaseModel):
    """The receipt of a deletion: ``subjects_erased`` and ``receipts`` (one erasure receipt
    per subject) stay empty until subjects are keyed by collection."""

    collection: str
    deleted: bool
    subjects_erased: int
    receipts: list[dict[str, Any]]


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
    responses=error_responses(404, 409),
)
def delete_collection(collection: IdPath, service: CollectionServiceDep) -> dict[str, Any]:
    """Delete an empty collection; 409 ``default_collection`` for ``default``, 409
    ``collection_not_empty`` for one that holds subjects."""
    return service.delete(collection)
