"""Lambda entry point of the embedding job: SQS batches of S3 upload notifications.

Models and clients are built at module scope (the Lambda init phase). The handler is one
call into ``facegate.ingest_job``; it answers with the partial-batch response that
``ReportBatchItemFailures`` expects.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.batch.ingest_job import EmbedJob, JobConfig
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import get_settings
from facegate.storage.clients import aws_client
from facegate.storage.ledger import IngestLedger

logger = Logger(service="facegate")
settings = get_settings()
pipeline = FacePipeline(settings)
pipeline.warm_up()
job = EmbedJob(
    pipeline,
    aws_client("s3", settings),
    aws_client("sqs", settings),
    IngestLedger(aws_client("dynamodb", settings), settings.table),
    JobConfig(
        bucket=settings.bucket,
        queue_url=settings.ingest_queue_url,
        chunk_size=settings.archive_chunk_size,
        max_photo_bytes=settings.s3_max_image_bytes,
        policy=settings.gallery_multi_face,
    ),
)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    answer = job.handle(event)
    logger.info(
        "batch done",
        extra={
            "records": len(event.get("Records", [])),
            "failed": len(answer["batchItemFailures"]),
        },
    )
    return answer
