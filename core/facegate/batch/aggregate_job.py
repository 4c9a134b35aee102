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

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from facegate.batch.aggregation import aggregate, summary_json
from facegate.batch.messages import AggregateRequest
from facegate.batch.processing import discard, is_retryable, logger, process_batch
from facegate.batch.results import results_from_parquet, results_to_parquet
from facegate.errors import FaceGateError, ObjectNotFoundError, StorageError
from facegate.storage.jobs import JobStore
from facegate.storage.keys import chunks_prefix, results_key, summary_key
from facegate.storage.objects import JSON_TYPE, PARQUET_TYPE, ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def run_aggregation(
    s3: S3Client, bucket: str, jobs: JobStore, job_id: str, model_id: str
) -> dict[str, Any]:
    """Aggregate ``job_id`` and mark it succeeded (or failed, with the reason)."""
    status = jobs.get(job_id)
    objects = ObjectStore(s3, bucket)
    keys = objects.list_keys(chunks_prefix(job_id))
    chunks = {key: _read_listed(objects, key) for key in keys}
    try:
        tables = [results_from_parquet(data, key) for key, data in chunks.items()]
        table, summary = aggregate(
            job_id,
            tables,
            started_at=status.created_at,
            model_id=model_id,
            expected_rows=status.rows,
        )
    except FaceGateError as exc:
        if isinstance(exc, StorageError):
            raise
        jobs.fail(job_id, f"{exc.code}: {exc.message}")
        raise
    objects.put(results_key(job_id), results_to_parquet(table), content_type=PARQUET_TYPE)
    objects.put(summary_key(job_id), summary_json(summary), content_type=JSON_TYPE)
    jobs.finish(job_id, summary_key(job_id), results_key(job_id), summary["counts"])
    return summary


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

    def __init__(self, s3: S3Client, bucket: str, jobs: JobStore, model_id: str) -> None:
        self.s3, self.bucket, self.jobs, self.model_id = s3, bucket, jobs, model_id

    def handle(self, event: dict[str, Any], context: Any = None) -> PartialItemFailureResponse:
        """SQS event -> partial batch response; only storage errors fail (their record)."""
        return process_batch(event, self.handle_record, context)

    def handle_record(self, record: SQSRecord) -> None:
        try:
            job_id = AggregateRequest.from_message(record.body).job_id
            summary = run_aggregation(self.s3, self.bucket, self.jobs, job_id, self.model_id)
        except FaceGateError as exc:
            if is_retryable(exc):
                raise
            discard(record, exc, "aggregate")
            return
        logger.info("job aggregated", extra={"job_id": job_id, "rows": summary["rows"]})
