"""The batch verification worker: manifests in, chunk results out (torch: it embeds).

Messages it handles, all from the jobs queue:

- an S3 notification for ``jobs/<job_id>/manifest.csv``: parse the manifest, create the job
  (once: a duplicate notification starts nothing), record refused rows, and fan the valid
  rows out as chunk messages (or ask for aggregation at once when there are none);
- a chunk: embed its probes in one batch, verify each against its claimed subject (best
  similarity over the subject's rows in the gallery) or identify it (top-k subjects), write
  the chunk's results, count the chunk done; the chunk that completes the job asks the
  aggregation function to merge the results;
- a re-embedding request (``facegate.reembed``): list a gallery's or the enrolled subjects'
  photos and queue them as chunks (``facegate.batch.reembed_fanout``), each a
  ``facegate.reembed_chunk`` re-embedded with the requested model into a part of the new
  gallery, the last one compacting it; the state, the outcome or the error, is written to
  ``reembed/<target>.json``.

Galleries are loaded through a per-process cache keyed by object ETag, so a warm worker
reuses them across chunks and reloads a gallery that was recompacted.

Records go through Powertools' batch utility (:mod:`facegate.batch.processing`), each on its
own. A job always ends with a status: a manifest that cannot be read (deleted, over 16 MB,
UTF-16, no valid header) creates the job ``failed`` with the reason, so ``GET /jobs/<id>``
shows it; a probe that cannot be used (missing, over the byte limit, not a photo) is a
``failed`` result row with its reason code; a chunk message that cannot be run fails its job.
Only storage errors are retried, for the one record that met them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from facegate.batch.collection_deletion import CollectionDeleter, CollectionDeletionRequest
from facegate.batch.csv_manifest import MAX_MANIFEST_BYTES
from facegate.batch.erase_jobs import is_erasure_rewrite
from facegate.batch.erasure_job import ErasureChunk, ErasureJobs, ErasureRequest
from facegate.batch.events import notification_refs
from facegate.batch.manifest import JobRow, parse_job_manifest
from facegate.batch.messages import (
    COLLECTION_DELETION,
    ERASURE,
    ERASURE_CHUNK,
    JOB_CHUNK,
    REEMBED,
    AggregateRequest,
    JobChunk,
    message_type,
    parse_body,
    plan_job_chunks,
)
from facegate.batch.processing import discard, is_retryable, process_batch
from facegate.batch.reembed import ReembedRequest, put_status
from facegate.batch.reembed_fanout import REEMBED_CHUNK, ReembedChunk, plan_reembed, run_chunk
from facegate.batch.reembed_job import run_reembed
from facegate.batch.results import (
    build_results_table,
    failed_record,
    failure_records,
    identify_record,
    results_to_parquet,
    verify_record,
)
from facegate.batch.results_guard import Check, guard, write_checked
from facegate.errors import (
    FaceGateError,
    ImageTooLargeError,
    ModelMismatchError,
    ObjectTooLargeError,
    StorageError,
    UnknownJobError,
    UnknownSubjectError,
    ValidationError,
)
from facegate.gallery.cache import GalleryCache
from facegate.gallery.index import GalleryIndex
from facegate.settings import MultiFacePolicy
from facegate.storage.gallery_ann import gallery_loader
from facegate.storage.jobs import JobStore
from facegate.storage.keys import (
    chunk_result_key,
    gallery_key,
    job_id_from_manifest_key,
    manifest_failures_key,
    manifest_key,
)
from facegate.storage.objects import PARQUET_TYPE, ObjectStore
from facegate.storage.photos import PhotoStore
from facegate.storage.queues import send_messages
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones, gallery_scope
from facegate.types import FaceProcessor, FaceResult

#: Builds, warm, the pipeline of another installed model (a re-embedding's target model).
PipelineFactory = Callable[[str], FaceProcessor]


@dataclass(frozen=True)
class WorkerConfig:
    bucket: str
    jobs_queue_url: str | None
    aggregate_queue_url: str | None
    chunk_size: int = 100
    top_k: int = 5
    max_photo_bytes: int = 15 * 1024 * 1024
    #: Multi-face policy of the galleries a re-embedding writes (``gallery_multi_face``).
    gallery_policy: MultiFacePolicy = "reject"
    #: Photos per re-embedding chunk message (``archive_chunk_size``: the same work per
    #: invocation as an archive chunk).
    reembed_chunk_size: int = 200


class JobWorker:
    """Everything the jobs function does, with its clients and pipelines injected."""

    def __init__(
        self,
        pipeline: FaceProcessor,
        s3: Any,
        sqs: Any,
        jobs: JobStore,
        config: WorkerConfig,
        cache: GalleryCache | None = None,
        subjects: SubjectStore | None = None,
        tombstones: Tombstones | None = None,
        *,
        pipeline_factory: PipelineFactory | None = None,
        erasures: ErasureJobs | None = None,
        collections: CollectionDeleter | None = None,
    ) -> None:
        self.pipeline, self.s3, self.sqs, self.jobs, self.config = pipeline, s3, sqs, jobs, config
        self.cache = cache or GalleryCache(expected_model_id=pipeline.model_id)
        self.subjects, self.tombstones = subjects, tombstones
        self.pipeline_factory = pipeline_factory
        #: Runs the erasures too large to answer inline (``facegate.erasure`` messages and
        #: their ``facegate.erasure_chunk`` fan-out).
        self.erasures = erasures
        #: Deletes the collections too large to delete inline (``facegate.collection_deletion``).
        self.collections = collections
        self._pipelines: dict[str, FaceProcessor] = {pipeline.model_id: pipeline}

    def handle(self, event: dict[str, Any], context: Any = None) -> PartialItemFailureResponse:
        """SQS event -> partial batch response; only storage errors fail (their record)."""
        return process_batch(event, self.handle_record, context)

    def handle_record(self, record: SQSRecord) -> None:
        """One message of the jobs queue; a permanent problem is recorded, not raised."""
        try:
            doc = parse_body(record.body, "SQS message body")
            kind = message_type(doc)
            if kind == JOB_CHUNK:
                self._chunk_message(doc)
            elif kind == REEMBED:
                self.reembed(ReembedRequest.from_message(doc))
            elif kind == REEMBED_CHUNK:
                self.reembed_chunk(ReembedChunk.from_message(doc))
            elif kind == ERASURE:
                self._erasures().run(ErasureRequest.from_message(doc))
            elif kind == ERASURE_CHUNK:
                self._erasures().run_chunk(ErasureChunk.from_message(doc))
            elif kind == COLLECTION_DELETION:
                if self.collections is None:
                    raise StorageError("this worker was built without a collection deleter")
                self.collections.run(CollectionDeletionRequest.from_message(doc))
            elif kind is not None:
                raise ValidationError(f"unexpected message type {kind!r} on the jobs queue")
            else:
                for ref in notification_refs(doc):
                    job_id = job_id_from_manifest_key(ref.key)
                    # An erasure's rewrite of the manifest must not start the job again.
                    if job_id is not None and not is_erasure_rewrite(self.s3, ref):
                        self.start(job_id)
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            discard(record, exc, "jobs")

    def _chunk_message(self, doc: Mapping[str, Any]) -> None:
        """Run a chunk; one that cannot be decoded or run fails its job (if it names one),
        since the job could never count that chunk done."""
        try:
            self.run_chunk(JobChunk.from_message(doc))
        except FaceGateError as exc:
            if not is_retryable(exc):
                self._fail_job(doc.get("job_id"), exc)
            raise

    def _fail_job(self, job_id: Any, exc: FaceGateError) -> None:
        with contextlib.suppress(UnknownJobError, ValidationError):
            self.jobs.fail(job_id, f"{exc.code}: {exc.message}")

    def start(self, job_id: str) -> None:
        """Create the job and fan its rows out; an unusable manifest creates it ``failed``."""
        try:
            text = self._manifest(job_id)
            rows, refused = parse_job_manifest(job_id, text, bucket=self.config.bucket)
            chunks = plan_job_chunks(job_id, rows, self.config.chunk_size)
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            self._refuse(job_id, exc)
            return
        galleries = {row.gallery for row in rows}
        if not self.jobs.create(
            job_id, len(rows) + len(refused), len(chunks), len(refused), galleries
        ):
            return
        if refused:
            table = build_results_table(failure_records(refused))
            self._put(manifest_failures_key(job_id), results_to_parquet(table))
        if chunks:
            self._send(self.config.jobs_queue_url, [c.to_message() for c in chunks])
        else:
            self._send(self.config.aggregate_queue_url, [AggregateRequest(job_id).to_message()])

    def _refuse(self, job_id: str, exc: FaceGateError) -> None:
        """Record a job whose manifest is unusable: created with no rows, then failed.

        A retry after the first write (the second failed) finds the job and finishes it; a
        duplicate notification of a job that did start (it has rows) changes nothing.
        """
        if not self.jobs.create(job_id, rows=0, chunks=0, failed_rows=0):
            status = self.jobs.get(job_id)
            if status.rows or status.status != "running":
                return
        self.jobs.fail(job_id, f"{exc.code}: {exc.message}")

    def _manifest(self, job_id: str) -> bytes:
        """The job's manifest; deleted or over the limit is a :class:`ValidationError`."""
        limit = MAX_MANIFEST_BYTES
        try:
            return self._get(manifest_key(job_id), limit)
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            if isinstance(exc, ImageTooLargeError | ObjectTooLargeError):
                message = f"the manifest is larger than the limit of {limit} bytes"
            else:
                message = f"the manifest cannot be read ({exc.code}): was it deleted?"
            raise ValidationError(message) from exc

    def run_chunk(self, chunk: JobChunk) -> None:
        """Decide every row of the chunk and write its results; a probe that cannot be used
        (missing, over the byte limit, not a photo) is a failed row with its reason code."""
        probes: list[bytes | FaceGateError] = []
        for row in chunk.rows:
            try:
                probes.append(self._get(row.probe_key, self.config.max_photo_bytes))
            except FaceGateError as exc:
                if is_retryable(exc):
                    raise
                probes.append(exc)
        readable = [p for p in probes if isinstance(p, bytes)]
        outcomes = iter(self.pipeline.process_many(readable, policy="largest"))
        records = []
        for row, probe in zip(chunk.rows, probes, strict=True):
            result = next(outcomes) if isinstance(probe, bytes) else probe
            records.append(self._decide(row, result))
        table = build_results_table(records)
        key = chunk_result_key(chunk.job_id, chunk.index)
        objects = ObjectStore(self.s3, self.config.bucket)
        if self.tombstones is None:
            objects.put(key, results_to_parquet(table), content_type=PARQUET_TYPE)
        else:
            write_checked(objects, key, table, self._erasure_check(chunk.job_id, self.tombstones))
        done, total = self.jobs.chunk_done(chunk.job_id, chunk.index)
        if done == total:
            self._send(
                self.config.aggregate_queue_url, [AggregateRequest(chunk.job_id).to_message()]
            )

    def _erasure_check(self, job_id: str, tombstones: Tombstones) -> Check:
        """Rows naming a person erased from their gallery since the job was created go
        (:mod:`facegate.batch.results_guard`); the scope is the served gallery's."""
        since = self.jobs.get(job_id).created_at

        def scope_of(gallery: str) -> str:
            try:
                meta = self._gallery(gallery).meta
            except FaceGateError as exc:  # the rows of a gallery that cannot load failed
                if is_retryable(exc):
                    raise
                return gallery_scope(gallery)
            scope = meta.subject_scope if meta is not None else None
            return scope or gallery_scope(gallery)

        def check(table: pa.Table) -> tuple[pa.Table, int]:
            return guard(table, tombstones, since, scope_of)

        return check

    def _decide(self, row: JobRow, result: FaceResult | FaceGateError) -> dict[str, Any]:
        if not isinstance(result, FaceResult):
            return failed_record(row, result)
        vector = result.primary.vector
        try:
            gallery = self._gallery(row.gallery)
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            return failed_record(row, exc)
        threshold = self.pipeline.threshold
        if row.mode == "verify":
            rows = _subject_rows(gallery, row.claimed_subject)
            if rows.size == 0:
                error = UnknownSubjectError(f"{row.claimed_subject!r} is not in {row.gallery!r}")
                return failed_record(row, error)
            enrolled = np.asarray(gallery.embeddings[rows], dtype=np.float32)
            return verify_record(row, float(np.max(enrolled @ vector)), threshold)
        found = gallery.search(vector, self.config.top_k, threshold)
        ranks = [(m.subject_id, float(m.similarity)) for m in found.candidates]
        return identify_record(row, ranks, threshold)

    def _gallery(self, name: str) -> GalleryIndex:
        """The gallery's index from the cache: one conditional GET per use when warm."""
        objects = ObjectStore(self.s3, self.config.bucket)
        return self.cache.get(self.config.bucket, gallery_key(name), gallery_loader(objects, name))

    def _erasures(self) -> ErasureJobs:
        if self.erasures is None:
            raise StorageError("this worker was built without an eraser")
        return self.erasures

    def reembed(self, request: ReembedRequest) -> None:
        """Fan a re-embedding out as chunks on the jobs queue (:mod:`reembed_fanout`), or run
        it here when the worker has no queue; a permanent failure is recorded where its
        report would be."""
        erasures = self.tombstones.all() if self.tombstones is not None else None
        try:
            if self.config.jobs_queue_url:
                self.pipeline_for(request.model_id)  # another model must be installed here
                plan_reembed(
                    self.sqs,
                    self.config.jobs_queue_url,
                    self.s3,
                    self.config.bucket,
                    request,
                    subjects=self.subjects,
                    erasures=erasures,
                    chunk_size=self.config.reembed_chunk_size,
                )
                return
            run_reembed(
                self.pipeline_for(request.model_id),
                self.s3,
                self.config.bucket,
                request,
                subjects=self.subjects,
                erasures=erasures,
                max_photo_bytes=self.config.max_photo_bytes,
                policy=self.config.gallery_policy,
            )
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            self._reembed_failed(request, exc)

    def reembed_chunk(self, chunk: ReembedChunk) -> None:
        """One chunk of a fanned-out re-embedding; the last one compacts the target."""
        try:
            run_chunk(
                self.pipeline_for(chunk.request.model_id),
                self.s3,
                self.config.bucket,
                chunk,
                erasures=self.tombstones.all() if self.tombstones is not None else None,
                max_photo_bytes=self.config.max_photo_bytes,
                policy=self.config.gallery_policy,
            )
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            self._reembed_failed(chunk.request, exc)

    def _reembed_failed(self, request: ReembedRequest, exc: FaceGateError) -> None:
        failure = {
            "status": "failed",
            "source": request.source,
            "target": request.target,
            "model_id": request.model_id,
            "error": exc.to_dict(),
        }
        put_status(self.s3, self.config.bucket, request.target, failure)

    def pipeline_for(self, model_id: str) -> FaceProcessor:
        """The worker's pipeline, or one for another installed model from the injected
        factory (:func:`facegate.batch.wiring.model_pipelines` shares the detector), built
        once per process; without a factory, another model is a :class:`ModelMismatchError`."""
        if model_id not in self._pipelines:
            if self.pipeline_factory is None:
                raise ModelMismatchError(
                    f"this worker serves {self.pipeline.model_id!r} only, not {model_id!r}"
                )
            self._pipelines[model_id] = self.pipeline_factory(model_id)
        return self._pipelines[model_id]

    def _get(self, key: str, max_bytes: int) -> bytes:
        """A manifest or probe: missing is an :class:`InvalidImageError`, over ``max_bytes``
        an :class:`ImageTooLargeError` (refused before the download), S3 failures a
        :class:`StorageError`."""
        return PhotoStore(self.s3, self.config.bucket).get(key, max_bytes=max_bytes)

    def _put(self, key: str, body: bytes) -> None:
        """A results Parquet file, encrypted like every object (it names subjects)."""
        ObjectStore(self.s3, self.config.bucket).put(key, body, content_type=PARQUET_TYPE)

    def _send(self, queue_url: str | None, bodies: list[str]) -> None:
        send_messages(self.sqs, queue_url, bodies, "job messages")


def _subject_rows(gallery: GalleryIndex, subject: str | None) -> np.ndarray:
    """Row indices of ``subject`` in the gallery (empty when it has none)."""
    names = gallery.subject_names.to_pylist()
    if subject not in names:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(gallery.subject_codes == names.index(subject))
