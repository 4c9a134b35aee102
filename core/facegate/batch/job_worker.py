"""The batch verification worker: manifests in, chunk results out (torch: it embeds).

Messages it handles, all from the jobs queue:

- an S3 notification for ``jobs/<job_id>/manifest.csv``: parse the manifest, create the job
  (once: a duplicate notification starts nothing), record refused rows, and fan the valid
  rows out as chunk messages (or ask for aggregation at once when there are none);
- a chunk: embed its probes in one batch, verify each against its claimed subject (best
  similarity over the subject's rows in the gallery) or identify it (top-k subjects), write
  the chunk's results, count the chunk done; the chunk that completes the job asks the
  aggregation function to merge the results;
- a re-embedding request (``facegate.reembed``): re-embed a gallery's or the enrolled
  subjects' photos with the requested model into a new gallery (``facegate.reembed_job``);
  the outcome, or the error, is written to ``galleries/<target>/reembed.json``.

Galleries are loaded through a per-process cache keyed by object ETag, so a warm worker
reuses them across chunks and reloads a gallery that was recompacted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from facegate.batch.events import object_refs
from facegate.batch.job_messages import (
    AggregateRequest,
    JobChunk,
    is_job_chunk_message,
    plan_job_chunks,
)
from facegate.batch.manifest import JobRow, parse_manifest
from facegate.batch.reembed import ReembedRequest, put_status, reembed_doc
from facegate.batch.reembed_job import run_reembed
from facegate.batch.results import (
    build_results_table,
    failed_record,
    failure_records,
    identify_record,
    results_to_parquet,
    verify_record,
)
from facegate.errors import (
    FaceGateError,
    ImageTooLargeError,
    InvalidImageError,
    StorageError,
    UnknownGalleryError,
    UnknownSubjectError,
)
from facegate.gallery.cache import GalleryCache
from facegate.gallery.index import GalleryIndex
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.storage.galleries import GalleryStore
from facegate.storage.jobs import JobStore
from facegate.storage.keys import (
    chunk_result_key,
    job_id_from_manifest_key,
    manifest_failures_key,
    manifest_key,
)
from facegate.storage.subjects import SubjectStore
from facegate.types import FaceResult


@dataclass(frozen=True)
class WorkerConfig:
    bucket: str
    jobs_queue_url: str | None
    aggregate_queue_url: str | None
    chunk_size: int = 100
    top_k: int = 5
    max_photo_bytes: int = 15 * 1024 * 1024


class JobWorker:
    def __init__(
        self,
        pipeline: FacePipeline,
        s3: Any,
        sqs: Any,
        jobs: JobStore,
        config: WorkerConfig,
        cache: GalleryCache | None = None,
        subjects: SubjectStore | None = None,
        tombstones: Any | None = None,
    ) -> None:
        self.pipeline, self.s3, self.sqs, self.jobs, self.config = pipeline, s3, sqs, jobs, config
        self.cache = cache or GalleryCache(expected_model_id=pipeline.model_id)
        self.subjects, self.tombstones = subjects, tombstones
        self._pipelines: dict[str, FacePipeline] = {pipeline.model_id: pipeline}

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        """SQS event -> partial batch response; storage errors fail only their record."""
        failures = []
        for record in event.get("Records", []):
            try:
                self._handle_record(record)
            except StorageError:
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    def _handle_record(self, record: dict[str, Any]) -> None:
        body = record.get("body", "")
        if is_job_chunk_message(body):
            self.run_chunk(JobChunk.from_message(body))
            return
        if reembed_doc(body) is not None:
            self.reembed(ReembedRequest.from_message(body))
            return
        for ref in object_refs({"Records": [record]}):
            job_id = job_id_from_manifest_key(ref.key)
            if job_id is not None:
                self.start(job_id)

    def start(self, job_id: str) -> None:
        text = self._get(manifest_key(job_id), 16 * 1024 * 1024)
        try:
            rows, refused = parse_manifest(job_id, text, bucket=self.config.bucket)
        except FaceGateError as exc:
            if isinstance(exc, StorageError):
                raise
            if self.jobs.create(job_id, rows=0, chunks=0, failed_rows=0):
                self.jobs.fail(job_id, f"{exc.code}: {exc.message}")
            return
        chunks = plan_job_chunks(job_id, rows, self.config.chunk_size)
        if not self.jobs.create(job_id, len(rows) + len(refused), len(chunks), len(refused)):
            return
        if refused:
            table = build_results_table(failure_records(refused))
            self._put(manifest_failures_key(job_id), results_to_parquet(table))
        if chunks:
            self._send(self.config.jobs_queue_url, [c.to_message() for c in chunks])
        else:
            self._send(self.config.aggregate_queue_url, [AggregateRequest(job_id).to_message()])

    def run_chunk(self, chunk: JobChunk) -> None:
        probes: list[bytes | FaceGateError] = []
        for row in chunk.rows:
            try:
                probes.append(self._get(row.probe_key, self.config.max_photo_bytes))
            except InvalidImageError as exc:
                probes.append(exc)
        readable = [p for p in probes if isinstance(p, bytes)]
        outcomes = iter(self.pipeline.process_many(readable, policy="largest"))
        records = []
        for row, probe in zip(chunk.rows, probes, strict=True):
            result = next(outcomes) if isinstance(probe, bytes) else probe
            records.append(self._decide(row, result))
        table = build_results_table(records)
        self._put(chunk_result_key(chunk.job_id, chunk.index), results_to_parquet(table))
        done, total = self.jobs.chunk_done(chunk.job_id, chunk.index)
        if done == total:
            self._send(
                self.config.aggregate_queue_url, [AggregateRequest(chunk.job_id).to_message()]
            )

    def _decide(self, row: JobRow, result: FaceResult | FaceGateError) -> dict[str, Any]:
        if not isinstance(result, FaceResult):
            return failed_record(row, result)
        vector = result.primary.vector
        try:
            gallery = self._gallery(row.gallery)
        except FaceGateError as exc:
            if isinstance(exc, StorageError):
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
        key = GalleryStore.gallery_key(name)

        def load(if_none_match: str | None) -> tuple[str, bytes | None]:
            extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
            try:
                answer = self.s3.get_object(Bucket=self.config.bucket, Key=key, **extra)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("304", "NotModified"):
                    return if_none_match or "", None
                if code in ("NoSuchKey", "404"):
                    raise UnknownGalleryError(f"gallery {name!r} has not been built") from exc
                raise StorageError(f"cannot read {key}: {exc}") from exc
            except BotoCoreError as exc:
                raise StorageError(f"cannot read {key}: {exc}") from exc
            return answer["ETag"], answer["Body"].read()

        return self.cache.get(self.config.bucket, key, load)

    def reembed(self, request: ReembedRequest) -> None:
        """Run a re-embedding; a permanent failure is recorded where its report would be."""
        try:
            run_reembed(
                self.pipeline_for(request.model_id),
                self.s3,
                self.config.bucket,
                request,
                subjects=self.subjects,
                deleted=self.tombstones.all() if self.tombstones is not None else None,
                max_photo_bytes=self.config.max_photo_bytes,
            )
        except FaceGateError as exc:
            if isinstance(exc, StorageError):
                raise
            failure = {
                "status": "failed",
                "source": request.source,
                "target": request.target,
                "model_id": request.model_id,
                "error": exc.to_dict(),
            }
            put_status(self.s3, self.config.bucket, request.target, failure)

    def pipeline_for(self, model_id: str) -> FacePipeline:
        """The worker's pipeline, or one for another installed model sharing its detector."""
        if model_id not in self._pipelines:
            settings = self.pipeline.settings.model_copy(update={"model_id": model_id})
            pipeline = FacePipeline(settings, detector=self.pipeline.detector)
            pipeline.warm_up()
            self._pipelines[model_id] = pipeline
        return self._pipelines[model_id]

    def _get_object(self, key: str) -> dict[str, Any]:
        try:
            return self.s3.get_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise InvalidImageError(f"{key} does not exist") from exc
            raise StorageError(f"cannot read {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def _get(self, key: str, max_bytes: int) -> bytes:
        answer = self._get_object(key)
        if answer.get("ContentLength", 0) > max_bytes:
            raise ImageTooLargeError(f"{key} is over the {max_bytes} byte limit")
        return answer["Body"].read()

    def _put(self, key: str, body: bytes) -> None:
        try:
            self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=body)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc

    def _send(self, queue_url: str | None, bodies: list[str]) -> None:
        if not queue_url:
            raise StorageError("no queue configured for this step (FACEGATE_*_QUEUE_URL)")
        for start in range(0, len(bodies), 10):
            entries = [
                {"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])
            ]
            try:
                sent = self.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"cannot queue job messages: {exc}") from exc
            if sent.get("Failed"):
                raise StorageError(f"{len(sent['Failed'])} job messages were not queued")


def _subject_rows(gallery: GalleryIndex, subject: str | None) -> np.ndarray:
    """Row indices of ``subject`` in the gallery (empty when it has none)."""
    names = gallery.subject_names.to_pylist()
    if subject not in names:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(gallery.subject_codes == names.index(subject))
