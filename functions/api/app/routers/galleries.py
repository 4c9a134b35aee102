"""Parquet galleries built by the batch job: summary, on-demand compaction, re-embedding."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.deps import GalleryServiceDep, require_api_key
from app.openapi import ID, KEYED, IdPath, error_responses
from app.requests import require_json

router = APIRouter(
    tags=["galleries"], dependencies=[Depends(require_api_key)], responses=error_responses(*KEYED)
)


@router.get("/galleries/{gallery}", responses=error_responses(404))
def show_gallery(gallery: IdPath, service: GalleryServiceDep) -> dict[str, object]:
    """Rows, subjects, parts, rejects by reason, model id, build time."""
    return service.summary(gallery)


@router.post("/galleries/{gallery}/compact", responses=error_responses(404))
def compact_gallery(gallery: IdPath, service: GalleryServiceDep) -> dict[str, object]:
    """Rebuild ``gallery.parquet`` from its parts now (deduplicated, deletions honoured);
    a gallery of any one model, not only the served one (see ``POST /reembed``)."""
    return service.compact(gallery)


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
