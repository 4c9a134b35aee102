"""``GET /health``: is the function up, which model does it serve, at what threshold."""

from __future__ import annotations

import time

from fastapi import APIRouter

from app.deps import PipelineDep
from app.openapi import error_responses
from facegate import __version__

router = APIRouter(tags=["health"], responses=error_responses(429, 500, 503))
STARTED = time.monotonic()


@router.get("/health")
def health(pipeline: PipelineDep) -> dict[str, object]:
    card = pipeline.card
    return {
        "status": "ok",
        "version": __version__,
        "model_id": card.model_id,
        "model_version": card.version,
        "weights_sha256": card.weights_sha256,
        "threshold": pipeline.threshold,
        "far_thresholds": card.far_thresholds,
        "uptime_seconds": round(time.monotonic() - STARTED, 3),
    }
