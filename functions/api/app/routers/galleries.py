"""Parquet galleries built by the batch job: summary, on-demand compaction, re-embedding."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter, Depends
from pydantic import BaseModel

from app.deps import SettingsDep, StoresDep, require_api_key
from facegate.batch.reembed import ReembedRequest, get_status, put_status
from facegate.common import validate_id
from facegate.errors import StorageError, UnknownGalleryError, ValidationError
from facegate.models.card import list_cards
from facegate.storage.clients import aws_client

router = APIRouter(tags=["galleries"], dependencies=[Depends(require_api_key)])


@router.get("/galleries/{gallery}")
def show_gallery(gallery: str, stores: StoresDep) -> dict[str, object]:
    """Rows, subjects, parts, rejects by reason, model id, build time."""
    from facegate.storage.galleries import summarise

    return summarise(stores.galleries, validate_id(gallery, "gallery"))


@router.post("/galleries/{gallery}/compact")
def compact_gallery(gallery: str, stores: StoresDep) -> dict[str, object]:
    """Rebuild ``gallery.parquet`` from its parts now (deduplicated, deletions honoured);
    a gallery of any one model, not only the served one (see ``POST /reembed``)."""
    report = stores.galleries.compact(
        validate_id(gallery, "gallery"), deleted=stores.tombstones.all()
    )
    return report.to_dict()


class ReembedBody(BaseModel):
    """Re-embed ``source_gallery`` (or, when absent, the enrolled subjects' photos) with
    ``model_id`` into the new gallery ``target``."""

    target: str
    model_id: str
    source_gallery: str | None = None


@router.post("/reembed", status_code=202)
def reembed(body: ReembedBody, settings: SettingsDep, stores: StoresDep) -> dict[str, object]:
    """Queue a re-embedding for the jobs worker; poll ``GET /galleries/{target}/reembed``."""
    request = ReembedRequest(body.target, body.model_id, body.source_gallery)
    installed = [card.model_id for card in list_cards(settings.model_dir)]
    if request.model_id not in installed:
        raise ValidationError(
            f"model {request.model_id!r} is not installed here; installed: {', '.join(installed)}"
        )
    if request.source_gallery is not None and not stores.galleries.list_parts(
        request.source_gallery
    ):
        raise UnknownGalleryError(f"gallery {request.source_gallery!r} has no parts")
    if not settings.jobs_queue_url:
        raise StorageError("no jobs queue configured (FACEGATE_JOBS_QUEUE_URL)")
    status = {
        "status": "queued",
        "source": request.source,
        "target": request.target,
        "model_id": request.model_id,
    }
    put_status(aws_client("s3", settings), settings.bucket, request.target, status)
    try:
        aws_client("sqs", settings).send_message(
            QueueUrl=settings.jobs_queue_url, MessageBody=request.to_message()
        )
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot queue the re-embedding: {exc}") from exc
    return status


@router.get("/galleries/{gallery}/reembed")
def reembed_status(gallery: str, settings: SettingsDep) -> dict[str, object]:
    """``queued``, then ``done`` with the report (photos, faces, rejects, rows) or ``failed``."""
    return get_status(aws_client("s3", settings), settings.bucket, gallery)
