"""Lambda entry point of the job aggregation step (zip + the light layer: no torch).

Consumes the aggregate queue; each message names a job whose chunks are all done. A storage
error fails only that message (partial batch response); SQS retries it. A job whose results
do not add up is marked failed; see ``facegate.batch.aggregate_job.AggregateWorker``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.batch.aggregate_job import AggregateWorker
from facegate.settings import get_settings
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore
from facegate.storage.tombstones import Tombstones

logger = Logger(service="facegate")
settings = get_settings()
worker = AggregateWorker(
    aws_client("s3", settings),
    settings.bucket,
    JobStore(aws_client("dynamodb", settings), settings.table),
    settings.model_id,
    Tombstones.from_settings(settings),
)


# Never the event, whatever POWERTOOLS_LOGGER_LOG_EVENT says: events can carry photo keys
# (which name subjects), subject ids or API keys.
@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(worker.handle(event, context))
