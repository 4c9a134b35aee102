"""Parquet galleries built by the batch job: summary, on-demand compaction, re-embedding."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from app.deps import GalleryServiceDep, require_api_key
from app.requests import require_json

router = APIRouter(tags=["galleries"], dependencies=[Depends(require_api_key)])


@router.get("/galleries/{gallery}")
def show_gallery(gallery: str, service: GalleryServiceDep) -> dict[str, object]:
    """Rows, subjects, parts, rejects by reason, model id, build time."""
    return service.summary(gallery)


@router.post("/galleries/{gallery}/compact")
def compact_gallery(gallery: str, service: GalleryServiceDep) -> dict[str, object]:
    """Rebuild ``gallery.parquet`` from its parts now (deduplicated, deletions honoured);
    a gallery of any one model, not only the served one (see ``POST /reembed``)."""
    return service.compact(gallery)


class ReembedBody(BaseModel):
    """Re-embed ``source_gallery`` (or, when absent, the enrolled subjects' photos) with
    ``model_id`` into the new gallery ``target``."""

    target: str
    model_id: str
    source_gallery: str | None = None


@router.post("/reembed", status_code=202, dependencies=[Depends(require_json)])
def reembed(body: ReembedBody, service: GalleryServiceDep) -> dict[str, object]:
    """Queue a re-embedding for the jobs worker; poll ``GET /galleries/{target}/reembed``."""
    return service.submit_reembed(body.target, body.model_id, body.source_gallery)


@router.get("/galleries/{gallery}/reembed")
def reembed_status(gallery: str, service: GalleryServiceDep) -> dict[str, object]:
    """``queued``, then ``done`` with the report (photos, faces, rejects, rows) or ``failed``."""
    return service.reembed_status(gallery)
