"""Lambda entry point of the embedding job: SQS batches of S3 upload notifications.

The job is built at module scope (the Lambda init phase) by ``facegate.batch.wiring``; the
handler is one call into it, which answers with the partial-batch response that
``ReportBatchItemFailures`` expects (only the records a retry may fix).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.batch.wiring import embed_job
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import get_settings

logger = Logger(service="facegate")
job = embed_job(get_settings(), FacePipeline)


# Never the event, whatever POWERTOOLS_LOGGER_LOG_EVENT says: events can carry photo keys
# (which name subjects), subject ids or API keys.
@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    answer = job.handle(event, context)
    logger.info(
        "batch done",
        extra={"records": len(event["Records"]), "failed": len(answer["batchItemFailures"])},
    )
    return dict(answer)
