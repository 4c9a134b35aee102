"""The aggregation step of a batch verification job: chunk results -> results + summary.

Torch-free (it runs in the light zip function). Reads every table under
``results/<job_id>/chunks/`` (the chunks and the manifest's refused rows), merges them with
:func:`facegate.batch.aggregation.aggregate` (which refuses a missing or duplicated row rather
than hiding it), writes ``results.parquet`` and ``summary.json`` through
:class:`~facegate.storage.objects.ObjectStore` (encrypted and typed, like every object: the
results name people), and marks the job succeeded.

:class:`AggregateWorker` is the function's record handler on Powertools' batch utility: a
storage error fails only its message (SQS retries it); a job whose results do not add up (a
row missing or repeated, a chunk file that is not a results table) is marked failed with the
reason, and a message that is not an aggregation request is dropped
(:func:`facegate.batch.processing.discard`): neither gets better by retrying.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from facegate.batch.aggregation import aggregate, summary_json
from facegate.batch.messages import AggregateRequest
from facegate.batch.processing import discard, is_retryable, logger, process_batch
from facegate.batch.results import results_from_parquet, results_to_parquet
from facegate.batch.results_guard import Check, guard, write_checked
from facegate.errors import FaceGateError, ObjectNotFoundError, StorageError
from facegate.storage.galleries import served_subject_scope
from facegate.storage.jobs import JobStore
from facegate.storage.keys import chunks_prefix, results_key, summary_key
from facegate.storage.objects import JSON_TYPE, PARQUET_TYPE, ObjectStore
from facegate.storage.tombstones import Tombstones

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def run_aggregation(
    s3: S3Client,
    bucket: str,
    jobs: JobStore,
    job_id: str,
    model_id: str,
    tombstones: Tombstones | None = None,
) -> dict[str, Any]:
    """Aggregate ``job_id`` and mark it succeeded (or failed, with the reason). With
    ``tombstones``, no row names a person erased while the job ran, in the chunk tables read
    or in the results written (:mod:`facegate.batch.results_guard`)."""
    status = jobs.get(job_id)
    objects = ObjectStore(s3, bucket)
    keys = objects.list_keys(chunks_prefix(job_id))
    chunks = {key: _read_listed(objects, key) for key in keys}
    check = None if tombstones is None else _erasure_check(objects, tombstones, status.created_at)

    def merged(tables: list[pa.Table]) -> tuple[pa.Table, dict[str, Any]]:
        if check is not None:
            tables = [check(t)[0] for t in tables]
        return aggregate(
            job_id,
            tables,
            started_at=status.created_at,
            model_id=model_id,
            expected_rows=status.rows,
        )

    try:
        table, summary = merged([results_from_parquet(data, key) for key, data in chunks.items()])
    except FaceGateError as exc:
        if isinstance(exc, StorageError):
            raise
        jobs.fail(job_id, f"{exc.code}: {exc.message}")
        raise
    if check is None:
        objects.put(results_key(job_id), results_to_parquet(table), content_type=PARQUET_TYPE)
    else:
        written = write_checked(objects, results_key(job_id), table, check)
        if written is not table:  # an erasure between the two checks: count what was written
            summary = merged([written])[1]
    objects.put(summary_key(job_id), summary_json(summary), content_type=JSON_TYPE)
    jobs.finish(job_id, summary_key(job_id), results_key(job_id), summary["counts"])
    return summary


def _erasure_check(objects: ObjectStore, tombstones: Tombstones, since: str) -> Check:
    scopes: dict[str, str] = {}

    def scope_of(gallery: str) -> str:
        if gallery not in scopes:
            scopes[gallery] = served_subject_scope(objects, gallery)
        return scopes[gallery]

    def check(table: pa.Table) -> tuple[pa.Table, int]:
        return guard(table, tombstones, since, scope_of)

    return check


def _read_listed(objects: ObjectStore, key: str) -> bytes:
    """A chunk file the listing just named. Gone since is a :class:`StorageError`, not a
    missing object: the retry lists again, and a chunk that is really lost then fails the
    job as a missing row instead of leaving it running."""
    try:
        return objects.get(key).body
    except ObjectNotFoundError as exc:
        raise StorageError(f"{exc.message}: it was listed a moment ago", detail=exc.detail) from exc


class AggregateWorker:
    """Everything the aggregation function does, with its clients injected."""

    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        jobs: JobStore,
        model_id: str,
        tombstones: Tombstones | None = None,
    ) -> None:
        self.s3, self.bucket, self.jobs, self.model_id = s3, bucket, jobs, model_id
        #: The erasures a job's results are checked against (None: not checked).
        self.tombstones = tombstones

    def handle(self, event: dict[str, Any], context: Any = None) -> PartialItemFailureResponse:
        """SQS event -> partial batch response; only storage errors fail (their record)."""
        return process_batch(event, self.handle_record, context)

    def handle_record(self, record: SQSRecord) -> None:
        try:
            job_id = AggregateRequest.from_message(record.body).job_id
            summary = run_aggregation(
                self.s3, self.bucket, self.jobs, job_id, self.model_id, self.tombstones
            )
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            discard(record, exc, "aggregate")
            return
        logger.info("job aggregated", extra={"job_id": job_id, "rows": summary["rows"]})
