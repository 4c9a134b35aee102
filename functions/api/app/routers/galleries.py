"""Parquet galleries built by the batch job: summary and on-demand compaction."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.deps import PipelineDep, StoresDep, require_api_key
from facegate.stores import validate_id

router = APIRouter(tags=["galleries"], dependencies=[Depends(require_api_key)])


@router.get("/galleries/{gallery}")
def show_gallery(gallery: str, stores: StoresDep) -> dict[str, object]:
    """Rows, subjects, parts, rejects by reason, model id, build time."""
    from facegate.compact import summarise

    return summarise(stores.galleries, validate_id(gallery, "gallery"))


@router.post("/galleries/{gallery}/compact")
def compact_gallery(gallery: str, stores: StoresDep, pipeline: PipelineDep) -> dict[str, object]:
    """Rebuild ``gallery.parquet`` from its parts now (deduplicated, deletions honoured)."""
    report = stores.galleries.compact(
        validate_id(gallery, "gallery"),
        deleted=stores.tombstones.all(),
        expected_model_id=pipeline.model_id,
    )
    return report.to_dict()
