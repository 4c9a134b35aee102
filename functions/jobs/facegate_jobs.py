"""Lambda entry point of the batch verification worker (container image, torch).

Consumes the jobs queue: manifest notifications and chunk messages. Models, clients and the
gallery cache live at module scope, so a warm worker keeps its galleries between batches.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.batch.job_worker import JobWorker, WorkerConfig
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import get_settings
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones

logger = Logger(service="facegate")
settings = get_settings()
pipeline = FacePipeline(settings)
pipeline.warm_up()
worker = JobWorker(
    pipeline,
    aws_client("s3", settings),
    aws_client("sqs", settings),
    JobStore(aws_client("dynamodb", settings), settings.table),
    WorkerConfig(
        bucket=settings.bucket,
        jobs_queue_url=settings.jobs_queue_url,
        aggregate_queue_url=settings.aggregate_queue_url,
        chunk_size=settings.job_chunk_size,
        top_k=settings.job_top_k,
        max_photo_bytes=settings.s3_max_image_bytes,
    ),
    subjects=SubjectStore.from_settings(settings),
    tombstones=Tombstones.from_settings(settings),
)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return worker.handle(event)
