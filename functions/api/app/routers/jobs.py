"""Batch verification jobs: their status while they run and where their results are."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.deps import SettingsDep, job_store, require_api_key
from app.openapi import KEYED, IdPath, error_responses
from facegate.common import validate_id

router = APIRouter(
    tags=["jobs"], dependencies=[Depends(require_api_key)], responses=error_responses(*KEYED)
)


@router.get("/jobs/{job_id}", responses=error_responses(404))
def get_job(job_id: IdPath, settings: SettingsDep) -> dict[str, object]:
    """Status (running, succeeded, failed), rows, chunks done, counts, result keys."""
    return job_store(settings).get(validate_id(job_id, "job_id")).to_dict()
