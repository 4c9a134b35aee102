"""The aggregation step of a batch verification job: chunk results -> results + summary.

Torch-free (it runs in the light zip function). Reads every table under
``results/<job_id>/chunks/`` (the chunks and the manifest's refused rows), merges them with
``facegate.jobs.aggregate`` (which refuses a missing or duplicated row rather than hiding
it), writes ``results.parquet`` and ``summary.json``, and marks the job succeeded.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from facegate.batch.aggregation import aggregate, summary_json
from facegate.batch.results import results_from_parquet, results_to_parquet
from facegate.errors import FaceGateError, StorageError
from facegate.storage.jobs import JobStore
from facegate.storage.keys import results_key, results_prefix, summary_key


def run_aggregation(s3: Any, bucket: str, jobs: JobStore, job_id: str, model_id: str) -> dict:
    """Aggregate ``job_id`` and mark it succeeded (or failed, with the reason)."""
    status = jobs.get(job_id)
    prefix = results_prefix(job_id) + "chunks/"
    try:
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]
        tables = [
            results_from_parquet(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys
        ]
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot read the chunk results of job {job_id}: {exc}") from exc
    try:
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
    try:
        s3.put_object(Bucket=bucket, Key=results_key(job_id), Body=results_to_parquet(table))
        s3.put_object(
            Bucket=bucket,
            Key=summary_key(job_id),
            Body=summary_json(summary),
            ContentType="application/json",
        )
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot write the results of job {job_id}: {exc}") from exc
    jobs.finish(job_id, summary_key(job_id), results_key(job_id), summary["counts"])
    return summary
