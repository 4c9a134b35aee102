"""Lambda entry point of the batch verification worker (container image, torch).

Consumes the jobs queue: manifest notifications, chunk messages and re-embedding requests.
The worker is built at module scope by ``facegate.batch.wiring`` (models, clients, the gallery
cache), so a warm worker keeps its galleries and pipelines between batches.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.batch.wiring import job_worker
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import get_settings

logger = Logger(service="facegate")
worker = job_worker(get_settings(), FacePipeline)


# Never the event, whatever POWERTOOLS_LOGGER_LOG_EVENT says: events can carry photo keys
# (which name subjects), subject ids or API keys.
@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    answer = worker.handle(event, context)
    logger.info(
        "batch done",
        extra={"records": len(event["Records"]), "failed": len(answer["batchItemFailures"])},
    )
    return dict(answer)
