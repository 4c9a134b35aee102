"""Parquet galleries built by the batch job: summary, erasure of a person, on-demand
compaction, re-embedding."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.deps import (
    EraserDep,
    ErasureJobsDep,
    GalleryServiceDep,
    SettingsDep,
    require_api_key,
)
from app.openapi import ID, KEYED, IdPath, error_responses
from app.requests import require_json
from facegate.storage.tombstones import gallery_scope

router = APIRouter(
    tags=["galleries"], dependencies=[Depends(require_api_key)], responses=error_responses(*KEYED)
)


@router.get("/galleries/{gallery}", responses=error_responses(404))
def show_gallery(gallery: IdPath, service: GalleryServiceDep) -> dict[str, object]:
    """Rows, subjects, parts, rejects by reason, model id, build time."""
    return service.summary(gallery)


@router.delete(
    "/galleries/{gallery}/subjects/{subject_id}",
    responses={**error_responses(404), 202: {"description": "queued as an erasure job"}},
)
def erase_gallery_subject(
    gallery: IdPath,
    subject_id: IdPath,
    eraser: EraserDep,
    jobs: ErasureJobsDep,
    settings: SettingsDep,
) -> Any:
    """Erase a person from the gallery (and every gallery re-embedded from it): rows, rejects,
    uploaded photos and photo-set members, verification results naming them, dead-letter
    messages. The answer is the receipt: what was removed where, and what remains by design.
    Another gallery's subject of the same id is untouched. 404: no such gallery.

    A gallery with more object versions than ``FACEGATE_ERASURE_INLINE_MAX_OBJECTS`` is
    erased by the jobs workers instead, fanned out over several: 202 with the ``queued``
    state, whose progress and then receipt ``GET /erasures/{erasure_id}`` gives (the
    tombstone is recorded first, and the gallery listed once)."""
    plan = eraser.prepare(subject_id, gallery_scope(gallery))
    if plan.objects > settings.erasure_inline_max_objects:
        return JSONResponse(jobs.submit(plan), status_code=202)
    return eraser.execute(plan).to_dict()


@router.get("/erasures/{erasure_id}", responses=error_responses(404))
def erasure_status(erasure_id: IdPath, jobs: ErasureJobsDep) -> dict[str, object]:
    """An erasure run as a job: ``queued``; ``running`` with ``chunks`` and ``chunks_done``;
    then ``done`` with its receipt, or ``failed`` with the error; 404 ``unknown_erasure`` for
    an id never queued (or expired with jobs)."""
    return jobs.status(erasure_id)


@router.post("/galleries/{gallery}/compact", responses=error_responses(404))
def compact_gallery(gallery: IdPath, service: GalleryServiceDep) -> dict[str, object]:
    """Rebuild ``gallery.parquet`` from its parts now (deduplicated, deletions honoured);
    a gallery of any one model, not only the served one (see ``POST /reembed``)."""
    return service.compact(gallery)


class BackfillBody(BaseModel):
    """Photos already in the photo bucket under ``prefix`` (``<prefix><subject_id>/<photo>``),
    which no upload notification announced."""

    prefix: Annotated[str, Field(max_length=1024, examples=["archive/2019/"])]


@router.post(
    "/galleries/{gallery}/backfill",
    status_code=202,
    dependencies=[Depends(require_json)],
    responses=error_responses(413, 415),
)
def backfill_gallery(
    gallery: IdPath, body: BackfillBody, service: GalleryServiceDep
) -> dict[str, object]:
    """Embed the photos under ``prefix`` into the gallery, through the ingest queue: the
    embedding function lists the prefix a page at a time and embeds each page's photos as it
    does uploads (each photo a row or a reject with its reason; running it twice adds no
    rows). Poll ``GET /galleries/{gallery}`` for the rows as they land."""
    return service.start_backfill(gallery, body.prefix)


class ReembedBody(BaseModel):
    """Re-embed ``source_gallery`` (or, when absent, the enrolled subjects' photos) with
    ``model_id`` into the new gallery ``target``."""

    target: Annotated[str, Field(json_schema_extra=ID)]
    model_id: str
    source_gallery: Annotated[str, Field(json_schema_extra=ID)] | None = None


@router.post(
    "/reembed",
    status_code=202,
    dependencies=[Depends(require_json)],
    responses=error_responses(404, 413, 415),
)
def reembed(body: ReembedBody, service: GalleryServiceDep) -> dict[str, object]:
    """Queue a re-embedding for the jobs worker; poll ``GET /galleries/{target}/reembed``."""
    return service.submit_reembed(body.target, body.model_id, body.source_gallery)


@router.get("/galleries/{gallery}/reembed", responses=error_responses(404))
def reembed_status(gallery: IdPath, service: GalleryServiceDep) -> dict[str, object]:
    """``queued``, then ``done`` with the report (photos, faces, rejects, rows) or ``failed``."""
    return service.reembed_status(gallery)
