"""The S3 embedding job: SQS batch of upload notifications in, gallery parts out.

One invocation handles one SQS batch (the event source's ``BatchSize``):

1. Each record is turned into work: a single photo (``uploads/<g>/<subject>/<file>``), a
   zip photo set (``uploads/<g>/<name>.zip``; small ones inline, large ones fanned out as
   chunk messages on the same queue so they run in parallel), or one such chunk.
2. Each unit of work is claimed in the ingest ledger first (keyed on bucket, key, object
   version and member range), so a notification delivered twice never yields two rows.
3. All photos of the batch are embedded together, and each gallery touched gets ONE part
   file and one rejects file, named after the claims, so a retry overwrites its own part.

Failures are sorted by kind. Permanent ones (corrupt photo, no face, bad zip, invalid id)
become reject rows and the message succeeds: retrying cannot help. Retryable ones (S3 or
DynamoDB errors) make that record a batch item failure, with its claims released, while the
rest of the batch goes on; SQS retries it and, after ``maxReceiveCount``, parks it in the DLQ.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from facegate.batch.archive_chunks import Chunk, is_chunk_message, plan_chunks
from facegate.batch.archives import open_archive, read_archive, read_member
from facegate.batch.embedding import PhotoInput, embed_photos
from facegate.batch.events import object_refs
from facegate.errors import FaceGateError, ImageTooLargeError, InvalidImageError, StorageError
from facegate.gallery.format import write_gallery
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import MultiFacePolicy
from facegate.storage.keys import ArchiveUpload, InvalidUpload, PhotoUpload, classify
from facegate.storage.ledger import IngestLedger, safe_part_name
from facegate.storage.objects import ObjectRef

PARTS = "galleries/{gallery}/parts/{name}.parquet"
REJECTS = "galleries/{gallery}/rejects/{name}.parquet"


class RetryableError(StorageError):
    """The record failed for a reason that may clear: report it as a batch item failure."""


@dataclass
class _Work:
    """What one SQS record contributes, kept apart so one record can fail alone."""

    message_id: str
    claims: list[str] = field(default_factory=list)
    photos: dict[str, list[PhotoInput]] = field(default_factory=lambda: defaultdict(list))
    rejects: dict[str, list[tuple[str, FaceGateError]]] = field(
        default_factory=lambda: defaultdict(list)
    )


@dataclass(frozen=True)
class JobConfig:
    bucket: str
    queue_url: str | None
    chunk_size: int
    max_photo_bytes: int
    policy: MultiFacePolicy = "reject"


class EmbedJob:
    """Everything the embedding function does, with its clients injected."""

    def __init__(
        self, pipeline: FacePipeline, s3: Any, sqs: Any, ledger: IngestLedger, config: JobConfig
    ) -> None:
        self.pipeline, self.s3, self.sqs, self.ledger, self.config = (
            pipeline,
            s3,
            sqs,
            ledger,
            config,
        )

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        """An SQS event -> ``{"batchItemFailures": [...]}`` (partial batch response)."""
        failures: list[str] = []
        works: list[_Work] = []
        for record in event.get("Records", []):
            work = _Work(record["messageId"])
            try:
                self._collect(record, work)
            except (RetryableError, StorageError):
                self._release(work)
                failures.append(work.message_id)
                continue
            works.append(work)
        failures += self._write(works)
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}

    def _collect(self, record: dict[str, Any], work: _Work) -> None:
        body = record.get("body", "")
        if is_chunk_message(body):
            chunk = Chunk.from_message(body)
            self._take_chunk(chunk, work)
            return
        for ref in object_refs({"Records": [record]}):
            upload = classify(ref.key)
            if isinstance(upload, PhotoUpload):
                self._take_photo(ref, upload, work)
            elif isinstance(upload, ArchiveUpload):
                self._take_archive(ref, upload, work)
            elif isinstance(upload, InvalidUpload) and upload.gallery:
                work.rejects[upload.gallery].append((ref.key, upload.error))

    def _claim(self, ref: ObjectRef, member_range: str, work: _Work) -> bool:
        source = self.ledger.source_id(ref, member_range)
        if not self.ledger.claim(source):
            return False
        work.claims.append(source)
        return True

    def _take_photo(self, ref: ObjectRef, upload: PhotoUpload, work: _Work) -> None:
        if not self._claim(ref, "", work):
            return
        try:
            data = self._get(ref.key, ref.version_id, self.config.max_photo_bytes)
            work.photos[upload.gallery].append(PhotoInput(ref.key, upload.subject_id, data=data))
        except (InvalidImageError, ImageTooLargeError) as exc:
            work.photos[upload.gallery].append(PhotoInput(ref.key, upload.subject_id, error=exc))

    def _take_archive(self, ref: ObjectRef, upload: ArchiveUpload, work: _Work) -> None:
        if not self._claim(ref, "plan", work):
            return
        try:
            data = self._get(ref.key, ref.version_id, None)
            plan = read_archive(data, self._manifest(upload))
        except FaceGateError as exc:
            if isinstance(exc, StorageError):
                raise
            work.rejects[upload.gallery].append((ref.key, exc))
            return
        for member, error in plan.rejects:
            work.rejects[upload.gallery].append((f"{ref.key}/{member}", error))
        chunks = plan_chunks(ref, upload.gallery, plan, self.config.chunk_size)
        if len(chunks) <= 1:
            for chunk in chunks:
                self._read_members(chunk, data, work)
            return
        self._fan_out(chunks)

    def _take_chunk(self, chunk: Chunk, work: _Work) -> None:
        if not self._claim(chunk.ref, chunk.member_range, work):
            return
        data = self._get(chunk.key, chunk.version_id, None)
        self._read_members(chunk, data, work)

    def _read_members(self, chunk: Chunk, data: bytes, work: _Work) -> None:
        archive = open_archive(data)
        for member, subject in chunk.members:
            key = f"{chunk.key}/{member}"
            try:
                photo = PhotoInput(key, subject, data=read_member(archive, member))
            except FaceGateError as exc:
                photo = PhotoInput(key, subject, error=exc)
            work.photos[chunk.gallery].append(photo)

    def _fan_out(self, chunks: list[Chunk]) -> None:
        if not self.config.queue_url:
            raise RetryableError("archive needs fan-out but FACEGATE_INGEST_QUEUE_URL is unset")
        for start in range(0, len(chunks), 10):
            batch = chunks[start : start + 10]
            entries = [{"Id": str(i), "MessageBody": c.to_message()} for i, c in enumerate(batch)]
            try:
                sent = self.sqs.send_message_batch(QueueUrl=self.config.queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                raise RetryableError(f"cannot queue archive chunks: {exc}") from exc
            if sent.get("Failed"):
                raise RetryableError(f"{len(sent['Failed'])} chunk messages were not queued")

    def _manifest(self, upload: ArchiveUpload) -> str | None:
        try:
            return self._get(upload.manifest_key, None, 16 * 1024 * 1024).decode("utf-8-sig")
        except InvalidImageError:
            return None

    def _get(self, key: str, version_id: str | None, max_bytes: int | None) -> bytes:
        """Object bytes; a missing object is permanent, anything else from S3 retryable."""
        args = {"Bucket": self.config.bucket, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        try:
            answer = self.s3.get_object(**args)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchVersion", "404"):
                raise InvalidImageError(f"{key} no longer exists") from exc
            raise RetryableError(f"cannot read s3://{self.config.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise RetryableError(f"cannot read s3://{self.config.bucket}/{key}: {exc}") from exc
        if max_bytes is not None and answer.get("ContentLength", 0) > max_bytes:
            raise ImageTooLargeError(f"{key} is over the {max_bytes} byte limit")
        return answer["Body"].read()

    def _write(self, works: list[_Work]) -> list[str]:
        """Embed per gallery and write one part + rejects each; failed records' ids."""
        galleries = sorted({g for w in works for g in (*w.photos, *w.rejects)})
        failed: set[str] = set()
        for gallery in galleries:
            members = [w for w in works if gallery in w.photos or gallery in w.rejects]
            name = safe_part_name(
                hashlib.sha256(
                    "\n".join(sorted(c for w in members for c in w.claims)).encode()
                ).hexdigest()
            )
            part = embed_photos(
                self.pipeline,
                [p for w in members for p in w.photos.get(gallery, [])],
                rejected=[r for w in members for r in w.rejects.get(gallery, [])],
                policy=self.config.policy,
            )
            try:
                keys = self._put_part(gallery, name, part.gallery, part.rejects)
            except RetryableError:
                failed.update(w.message_id for w in members)
                continue
            for work in members:
                for claim in work.claims:
                    self.ledger.complete(claim, keys)
        for work in works:
            if work.message_id in failed:
                self._release(work)
        return sorted(failed)

    def _put_part(self, gallery: str, name: str, table: pa.Table, rejects: pa.Table) -> list[str]:
        written = []
        for key, body in (
            (PARTS.format(gallery=gallery, name=name), _gallery_bytes(table)),
            (REJECTS.format(gallery=gallery, name=name), _table_bytes(rejects)),
        ):
            try:
                self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=body)
            except (ClientError, BotoCoreError) as exc:
                raise RetryableError(f"cannot write {key}: {exc}") from exc
            written.append(key)
        return written

    def _release(self, work: _Work) -> None:
        # If releasing fails too, the lease expires on its own and a retry claims it then.
        for claim in work.claims:
            with contextlib.suppress(StorageError):
                self.ledger.release(claim)


def _gallery_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    write_gallery(table, sink)
    return sink.getvalue()


def _table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
