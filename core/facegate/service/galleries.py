"""Batch galleries as the API and the CLI offer them: summary, compaction, re-embedding.

``POST /reembed`` and ``facegate reembed --submit`` are one call, :meth:`submit_reembed`:
the same checks, the same ``queued`` status document in ``reembed/<target>.json`` (the one
the jobs worker later replaces with ``done`` + its report or ``failed`` + the error) and the
same message on the jobs queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegate.batch.backfill import BackfillPage, start_backfill
from facegate.batch.reembed import ReembedRequest, get_status, put_status
from facegate.common import validate_id
from facegate.errors import StorageError, UnknownGalleryError, ValidationError
from facegate.gallery.ann import ANN_MIN_ROWS
from facegate.models.card import list_cards
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore, summarise
from facegate.storage.gallery_ann import build_gallery_ann
from facegate.storage.tombstones import Tombstones

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient


def queued_status(request: ReembedRequest) -> dict[str, Any]:
    """The status document of a submitted re-embedding (and the answer to its submission)."""
    return {
        "status": "queued",
        "source": request.source,
        "target": request.target,
        "model_id": request.model_id,
    }


class GalleryService:
    """Galleries in one bucket, the deletions they must honour, and the jobs queue that
    re-embeds them."""

    def __init__(
        self,
        galleries: GalleryStore,
        tombstones: Tombstones,
        *,
        s3: S3Client,
        sqs: SQSClient,
        jobs_queue_url: str | None,
        model_dir: Path,
        ingest_queue_url: str | None,
        backfill_chunk_size: int,
    ) -> None:
        self.galleries = galleries
        self.tombstones = tombstones
        self.s3 = s3
        self.sqs = sqs
        self.jobs_queue_url = jobs_queue_url
        self.model_dir = model_dir
        self.ingest_queue_url = ingest_queue_url
        self.backfill_chunk_size = backfill_chunk_size

    @classmethod
    def from_settings(cls, settings: Settings) -> GalleryService:
        s3 = aws_client("s3", settings)
        return cls(
            GalleryStore(s3, settings.bucket),
            Tombstones.from_settings(settings),
            s3=s3,
            sqs=aws_client("sqs", settings),
            jobs_queue_url=settings.jobs_queue_url,
            model_dir=settings.model_dir,
            ingest_queue_url=settings.ingest_queue_url,
            backfill_chunk_size=settings.archive_chunk_size,
        )

    @property
    def bucket(self) -> str:
        return self.galleries.bucket

    def summary(self, gallery: str) -> dict[str, Any]:
        """Rows, subjects, parts, rejects by reason, model id, build time."""
        return summarise(self.galleries, validate_id(gallery, "gallery"))

    def compact(self, gallery: str) -> dict[str, Any]:
        """Rebuild ``gallery.parquet`` from its parts now, dropping every deleted subject."""
        name = validate_id(gallery, "gallery")
        return self.galleries.compact(name, erasures=self.tombstones.all()).to_dict()

    def build_index(self, gallery: str, *, min_rows: int = ANN_MIN_ROWS) -> dict[str, Any]:
        """Build and publish the ANN index of the compacted gallery (faiss; see
        :mod:`facegate.storage.gallery_ann`). ``{"indexed": false}`` below ``min_rows`` rows:
        exact search is fast enough there and nothing is written."""
        name = validate_id(gallery, "gallery")
        manifest = build_gallery_ann(self.galleries.objects, name, min_rows=min_rows)
        if manifest is None:
            return {"gallery": name, "indexed": False, "min_rows": min_rows}
        return {
            "gallery": name,
            "indexed": True,
            "rows": manifest.gallery_rows,
            "factory": manifest.params.factory,
            "nprobe": manifest.params.nprobe,
            "index_key": manifest.index_key,
            "index_bytes": manifest.index_bytes,
            "build_s": manifest.build_s,
        }

    def start_backfill(self, gallery: str, prefix: str) -> dict[str, Any]:
        """Queue a backfill of the photo bucket's ``prefix`` into ``gallery``: the first
        listing page goes to the ingest queue and the embedding function follows the rest
        (:func:`facegate.batch.backfill.follow_page`); returns what was queued."""
        page = start_backfill(
            self.sqs,
            self.ingest_queue_url,
            BackfillPage(self.bucket, prefix, gallery, self.backfill_chunk_size),
            photo_bucket=self.bucket,
        )
        return {"status": "queued", "gallery": page.gallery, "prefix": page.prefix}

    def submit_reembed(
        self, target: str, model_id: str, source_gallery: str | None = None
    ) -> dict[str, Any]:
        """Queue a re-embedding of ``source_gallery`` (None: the enrolled subjects' photos)
        into ``target`` with ``model_id`` for the jobs worker; returns the ``queued`` status.

        Refused before anything is written when the model is not installed here (the jobs
        worker runs the same image and model directory), the source gallery has no parts or
        no jobs queue is configured.
        """
        request = ReembedRequest(target, model_id, source_gallery)
        installed = [card.model_id for card in list_cards(self.model_dir)]
        if request.model_id not in installed:
            raise ValidationError(
                f"model {request.model_id!r} is not installed here; "
                f"installed: {', '.join(installed)}"
            )
        if request.source_gallery is not None and not self.galleries.list_parts(
            request.source_gallery
        ):
            raise UnknownGalleryError(f"gallery {request.source_gallery!r} has no parts")
        if not self.jobs_queue_url:
            raise StorageError("no jobs queue configured (FACEGATE_JOBS_QUEUE_URL)")
        status = queued_status(request)
        put_status(self.s3, self.bucket, request.target, status)
        with aws_errors("queueing the re-embedding"):
            self.sqs.send_message(QueueUrl=self.jobs_queue_url, MessageBody=request.to_message())
        return status

    def reembed_status(self, target: str) -> dict[str, Any]:
        """``queued``, then ``done`` with the report or ``failed`` with the error;
        :class:`UnknownGalleryError` when no re-embedding into ``target`` was requested."""
        return get_status(self.s3, self.bucket, target)
