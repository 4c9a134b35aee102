"""Lambda entry point of the job aggregation step (zip + the light layer: no torch).

Consumes the aggregate queue; each message names a job whose chunks are all done. A storage
error fails only that message (partial batch response); SQS retries it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.batch.aggregate_job import run_aggregation
from facegate.batch.job_messages import AggregateRequest
from facegate.errors import FaceGateError, StorageError
from facegate.settings import get_settings
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore

logger = Logger(service="facegate")
settings = get_settings()
s3 = aws_client("s3", settings)
jobs = JobStore(aws_client("dynamodb", settings), settings.table)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    failures = []
    for record in event.get("Records", []):
        job_id = AggregateRequest.from_message(record["body"]).job_id
        try:
            summary = run_aggregation(s3, settings.bucket, jobs, job_id, settings.model_id)
            logger.info("job aggregated", extra={"job_id": job_id, "rows": summary["rows"]})
        except StorageError:
            failures.append({"itemIdentifier": record["messageId"]})
        except FaceGateError as exc:
            logger.warning("job failed", extra={"job_id": job_id, "error": exc.message})
    return {"batchItemFailures": failures}
