"""The S3 embedding job: SQS batch of upload notifications in, gallery parts out.

One invocation handles one SQS batch (the event source's ``BatchSize``):

1. Each record is turned into work: a single photo (``uploads/<g>/<subject>/<file>``), a
   zip photo set (``uploads/<g>/<name>.zip``; small ones inline, large ones fanned out as
   chunk messages on the same queue so they run in parallel), or one such chunk. An archive
   is read by ranged GETs of its exact version: planning fetches its end (the central
   directory), a chunk its own members, so no invocation holds the whole zip.
2. Each unit of work is claimed in the ingest ledger first (keyed on bucket, key, object
   version and member range), so a notification delivered twice never yields two rows.
3. All photos of the batch are embedded together, and each gallery touched gets ONE part
   file and one rejects file, named after the claims, so a retry overwrites its own part.

Records go through Powertools' batch utility (:mod:`facegate.batch.processing`): step 1 runs
per record, step 3 once for the batch. Failures are sorted by kind. Permanent ones (corrupt
photo, no face, bad zip, an unreadable or UTF-16 manifest, invalid id, an archive version
deleted before its chunk ran) become reject rows and the message succeeds: retrying cannot
help. A message that names no gallery at all (not JSON, an unknown message type) is logged
by id and reason and dropped. Retryable ones (S3, DynamoDB or SQS errors) make that record a
batch item failure, with its claims released, while the rest of the batch goes on; a part that
cannot be written fails exactly the records whose photos it held. SQS retries them and, after
``maxReceiveCount``, parks them in the DLQ.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from facegate.batch.archives import MAX_ARCHIVE_READ, open_archive, read_archive, read_member
from facegate.batch.backfill import BackfillChunk, BackfillPage, follow_page
from facegate.batch.csv_manifest import MAX_MANIFEST_BYTES
from facegate.batch.embedding import PhotoInput, embed_photos
from facegate.batch.erase_jobs import is_erasure_rewrite
from facegate.batch.events import notification_refs
from facegate.batch.gallery_work import INDEX_GALLERY, IndexGallery
from facegate.batch.messages import (
    ARCHIVE_CHUNK,
    BACKFILL_CHUNK,
    BACKFILL_PAGE,
    ArchiveChunk,
    message_type,
    parse_body,
    plan_archive_chunks,
)
from facegate.batch.processing import (
    CollectingBatchProcessor,
    discard,
    is_retryable,
    process_batch,
)
from facegate.errors import (
    FaceGateError,
    InvalidImageError,
    ObjectNotFoundError,
    StorageError,
    ValidationError,
)
from facegate.gallery.compaction import without_erased
from facegate.gallery.rejects import Reject
from facegate.settings import MultiFacePolicy
from facegate.storage.galleries import GalleryStore
from facegate.storage.gallery_ann import build_gallery_ann
from facegate.storage.keys import (
    ArchiveUpload,
    InvalidUpload,
    PhotoUpload,
    Upload,
    classify,
    part_key,
    rejects_key,
)
from facegate.storage.ledger import IngestLedger, safe_part_name
from facegate.storage.objects import ObjectInfo, ObjectRef, ObjectStore
from facegate.storage.photos import PhotoStore
from facegate.storage.queues import send_messages
from facegate.storage.tombstones import Tombstones, gallery_scope
from facegate.types import FaceProcessor

logger = logging.getLogger("facegate.batch")


class RetryableError(StorageError):
    """The record failed for a reason that may clear: report it as a batch item failure."""


@dataclass
class _Work:
    """What one SQS record contributes, kept apart so one record can fail alone."""

    message_id: str
    claims: list[str] = field(default_factory=list)
    photos: dict[str, list[PhotoInput]] = field(default_factory=lambda: defaultdict(list))
    rejects: dict[str, list[Reject]] = field(default_factory=lambda: defaultdict(list))


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
        self,
        pipeline: FaceProcessor,
        s3: Any,
        sqs: Any,
        ledger: IngestLedger,
        config: JobConfig,
        tombstones: Tombstones | None = None,
    ) -> None:
        """``tombstones``: the erasures a part is checked against (:meth:`_put_part`); None
        only where nothing is ever erased (a local folder)."""
        self.pipeline, self.s3, self.sqs, self.ledger, self.config = (
            pipeline,
            s3,
            sqs,
            ledger,
            config,
        )
        self.tombstones = tombstones

    def handle(self, event: dict[str, Any], context: Any = None) -> PartialItemFailureResponse:
        """An SQS event -> the partial batch response: only records a retry may fix are listed."""
        return process_batch(event, self.collect, context, CollectingBatchProcessor(self._write))

    def collect(self, record: SQSRecord) -> _Work:
        """What one record contributes; raises only what a retry may fix (claims released)."""
        work = _Work(record.message_id)
        try:
            self._collect(record, work)
        except FaceGateError as exc:
            self._release(work)
            if is_retryable(exc):
                raise
            discard(record, exc, "ingest")
            return _Work(record.message_id)
        except BaseException:
            self._release(work)
            raise
        return work

    def _collect(self, record: SQSRecord, work: _Work) -> None:
        doc = parse_body(record.body, "SQS message body")
        kind = message_type(doc)
        if kind == ARCHIVE_CHUNK:
            self._take_chunk(ArchiveChunk.from_message(doc), work)
        elif kind == BACKFILL_CHUNK:
            self._take_backfill(BackfillChunk.from_message(doc), work)
        elif kind == BACKFILL_PAGE:
            self._follow_backfill(BackfillPage.from_message(doc))
        elif kind == INDEX_GALLERY:
            self._build_index(IndexGallery.from_message(doc))
        elif kind is not None:
            raise ValidationError(f"unexpected message type {kind!r} on the ingest queue")
        else:
            for ref in notification_refs(doc):
                self._take_ref(ref, work)

    def _take_backfill(self, chunk: BackfillChunk, work: _Work) -> None:
        """Photos listed by a backfill (:mod:`facegate.batch.backfill`), each as its
        notification would have been taken: claimed, read, a row or a reject. Only this
        deployment's photo bucket is read."""
        if chunk.bucket != self.config.bucket:
            raise ValidationError("a backfill chunk names another bucket than the photo bucket")
        for ref in chunk.refs():
            self._take_ref(ref, work, chunk.upload(ref.key))

    def _follow_backfill(self, page: BackfillPage) -> None:
        """One listing page of a backfill started by the API: its chunks and the next page
        go back on this queue, so the listing fans out as the embedding does."""
        if page.bucket != self.config.bucket:
            raise ValidationError("a backfill page names another bucket than the photo bucket")
        follow_page(self.s3, self.sqs, self.config.queue_url, page)

    def _build_index(self, request: IndexGallery) -> None:
        """A compacted gallery's ANN index (queued by the compaction that left it large):
        built here because this image has faiss. Built from the gallery as it is now, so a
        request that arrives late still indexes the current version."""
        manifest = build_gallery_ann(
            ObjectStore(self.s3, self.config.bucket), request.gallery, min_rows=request.min_rows
        )
        logger.info(
            "gallery indexed" if manifest else "gallery too small to index",
            extra={
                "rows": manifest.gallery_rows if manifest else None,
                "build_s": manifest.build_s if manifest else None,
            },
        )

    def _take_ref(self, ref: ObjectRef, work: _Work, upload: Upload | None = None) -> None:
        """One uploaded object (``upload``: what it is, else what its key says under the
        upload layout); a permanent problem with it is a reject row of its gallery."""
        upload = classify(ref.key) if upload is None else upload
        if isinstance(upload, InvalidUpload):
            if upload.gallery:
                work.rejects[upload.gallery].append((ref.key, upload.error))
            return
        if not isinstance(upload, PhotoUpload | ArchiveUpload):
            return
        try:
            if isinstance(upload, PhotoUpload):
                self._take_photo(ref, upload, work)
            else:
                self._take_archive(ref, upload, work)
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            subject = upload.subject_id if isinstance(upload, PhotoUpload) else None
            work.rejects[upload.gallery].append((ref.key, exc, subject, ref.uploaded_at))

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
            photo = PhotoInput(ref.key, upload.subject_id, data=data, source_at=ref.uploaded_at)
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            photo = PhotoInput(ref.key, upload.subject_id, error=exc, source_at=ref.uploaded_at)
        work.photos[upload.gallery].append(photo)

    def _take_archive(self, ref: ObjectRef, upload: ArchiveUpload, work: _Work) -> None:
        """Plan the archive; one an erasure rewrote without a person is skipped: its other
        members' rows are in the gallery already, from the upload it replaced."""
        with _retryable():
            if is_erasure_rewrite(self.s3, ref):
                return
        if not self._claim(ref, "plan", work):
            return
        with self._archive(ref.key, ref.version_id, ref.etag) as archive:
            plan = read_archive(archive, self._manifest(upload))
            chunks = plan_archive_chunks(ref, upload.gallery, plan, self.config.chunk_size)
            for member, error in plan.rejects:
                work.rejects[upload.gallery].append((f"{ref.key}/{member}", error))
            if len(chunks) <= 1:
                for chunk in chunks:
                    self._read_members(chunk, archive, work)
                return
        self._fan_out(chunks)

    def _take_chunk(self, chunk: ArchiveChunk, work: _Work) -> None:
        """A chunk's members; if its archive version is gone or unreadable, every member is a
        reject with that reason (the chunk can never be read, so it must not be retried)."""
        if not self._claim(chunk.ref, chunk.member_range, work):
            return
        try:
            with self._archive(chunk.key, chunk.version_id, chunk.etag) as archive:
                self._read_members(chunk, archive, work)
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            for member, subject in chunk.members:
                work.rejects[chunk.gallery].append(
                    (f"{chunk.key}/{member}", exc, subject, chunk.uploaded_at)
                )

    @contextlib.contextmanager
    def _archive(
        self, key: str, version_id: str | None, etag: str | None
    ) -> Iterator[zipfile.ZipFile]:
        """The archive version over ranged GETs (:meth:`ObjectStore.open`), open while the
        block reads it. Its version gone (deleted, or replaced in an unversioned bucket) is
        permanent (:class:`InvalidImageError`); an S3 failure stays a retryable
        :class:`StorageError`."""
        try:
            reader = ObjectStore(self.s3, self.config.bucket).open(
                key, version_id=version_id, etag=etag, max_read=MAX_ARCHIVE_READ
            )
            with reader, open_archive(reader) as archive:
                yield archive
        except ObjectNotFoundError as exc:
            raise InvalidImageError(exc.message, detail=exc.detail) from exc

    def _read_members(self, chunk: ArchiveChunk, archive: zipfile.ZipFile, work: _Work) -> None:
        """Each member's bytes, or its reject; the version vanishing midway fails them all
        (the caller's reject rows), an S3 failure the record (retryable)."""
        photos = []
        for member, subject in chunk.members:
            key = f"{chunk.key}/{member}"
            when = chunk.uploaded_at
            try:
                photo = PhotoInput(key, subject, data=read_member(archive, member), source_at=when)
            except (ObjectNotFoundError, StorageError):
                raise
            except FaceGateError as exc:
                photo = PhotoInput(key, subject, error=exc, source_at=when)
            photos.append(photo)
        work.photos[chunk.gallery].extend(photos)

    def _fan_out(self, chunks: list[ArchiveChunk]) -> None:
        bodies = [c.to_message() for c in chunks]
        send_messages(self.sqs, self.config.queue_url, bodies, "archive chunks")

    def _manifest(self, upload: ArchiveUpload) -> bytes | None:
        """The manifest uploaded beside the archive, if any (decoded by ``read_archive``)."""
        try:
            return self._get(upload.manifest_key, None, MAX_MANIFEST_BYTES)
        except (ObjectNotFoundError, InvalidImageError):
            return None

    def _get(self, key: str, version_id: str | None, max_bytes: int | None) -> bytes:
        """Object bytes; a missing object (or version) is permanent
        (:class:`InvalidImageError`), so is one over ``max_bytes`` (:class:`ImageTooLargeError`,
        refused before the download); anything else from S3 is retryable."""
        try:
            return PhotoStore(self.s3, self.config.bucket).get(
                key, version_id=version_id, max_bytes=max_bytes
            )
        except StorageError as exc:
            raise RetryableError(exc.message, detail=exc.detail) from exc

    def _write(self, collected: Sequence[tuple[SQSRecord, _Work]]) -> dict[str, BaseException]:
        """Embed per gallery and write one part + rejects each, then complete the claims of
        the records whose every gallery was written; the others fail (claims released)."""
        works = [work for _, work in collected]
        failed: dict[str, BaseException] = {}
        written: dict[str, list[str]] = {}
        for gallery in sorted({g for w in works for g in (*w.photos, *w.rejects)}):
            members = [w for w in works if gallery in w.photos or gallery in w.rejects]
            try:
                written[gallery] = self._write_gallery(gallery, members)
            except Exception as exc:  # any failure of the write fails its records, no more
                for work in members:
                    failed.setdefault(work.message_id, exc)
        for work in works:
            if work.message_id not in failed:
                keys = [k for g in sorted({*work.photos, *work.rejects}) for k in written[g]]
                try:
                    for claim in work.claims:
                        self.ledger.complete(claim, keys)
                except StorageError as exc:
                    failed[work.message_id] = exc
            if work.message_id in failed:
                self._release(work)
        return failed

    def _write_gallery(self, gallery: str, members: Sequence[_Work]) -> list[str]:
        """One part and one rejects table of ``gallery``, named after the members' claims."""
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
        return self._put_part(gallery, name, part.gallery, part.rejects)

    def _put_part(self, gallery: str, name: str, table: pa.Table, rejects: pa.Table) -> list[str]:
        """The part and its rejects, through :class:`GalleryStore` (validated, encrypted and
        typed as Parquet like every gallery object); a storage failure is retryable.

        Without the rows of subjects erased in the gallery after their photo was uploaded
        (a notification redriven from the dead-letter queue, a worker that was in flight):
        checked before the write, and again after it. An erasure records its tombstone
        before it lists the gallery's parts, so either it lists this part and rewrites it,
        or this check, after the write, sees its tombstone: the writer then rewrites the
        part itself and deletes the version it wrote. No part it leaves holds the person.
        """
        store = GalleryStore(self.s3, self.config.bucket)
        tables = {part_key(gallery, name): table, rejects_key(gallery, name): rejects}
        tables = {key: self._without_erased(gallery, part) for key, part in tables.items()}
        written = {key: self._write_table(store, key, part) for key, part in tables.items()}
        for key, part in tables.items():
            kept = self._without_erased(gallery, part)
            if kept.num_rows != part.num_rows:
                self._write_table(store, key, kept)
                version = written[key].version_id
                with _retryable():
                    if version is not None:
                        store.objects.delete_versions([(key, version)])
        return list(written)

    def _without_erased(self, gallery: str, table: pa.Table) -> pa.Table:
        if self.tombstones is None or table.num_rows == 0:
            return table
        subjects = {s for s in table["subject_id"].to_pylist() if s is not None}
        with _retryable():
            erased = self.tombstones.in_scope(gallery_scope(gallery), subjects)
        return without_erased(table, erased)

    @staticmethod
    def _write_table(store: GalleryStore, key: str, table: pa.Table) -> ObjectInfo:
        with _retryable():
            return store.write_table(key, table)

    def _release(self, work: _Work) -> None:
        # If releasing fails too, the lease expires on its own and a retry claims it then.
        for claim in work.claims:
            with contextlib.suppress(StorageError):
                self.ledger.release(claim)


@contextlib.contextmanager
def _retryable() -> Iterator[None]:
    """A storage failure here is worth a retry of the record: :class:`RetryableError`."""
    try:
        yield
    except StorageError as exc:
        if isinstance(exc, RetryableError):
            raise
        raise RetryableError(exc.message, detail=exc.detail) from exc
