"""Builds the queue jobs from settings: what the embed and jobs Lambda handlers run at init.

Both handlers need the same things: warm pipelines, the AWS clients and stores, a job config
read from settings. They pass the pipeline class (``FacePipeline``) in, so that this module,
like every batch module, imports no torch; the handler module is the one that does.
"""

from __future__ import annotations

from typing import Any, Protocol

from facegate.batch.collection_deletion import CollectionDeleter
from facegate.batch.erasure import Eraser
from facegate.batch.erasure_job import ErasureJobs
from facegate.batch.ingest_job import EmbedJob, JobConfig
from facegate.batch.job_worker import JobWorker, PipelineFactory, WorkerConfig
from facegate.settings import Settings
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore
from facegate.storage.ledger import IngestLedger
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones
from facegate.types import FaceProcessor


class DetectingPipeline(FaceProcessor, Protocol):
    """A pipeline whose detector another pipeline can share (the detector has no model id)."""

    @property
    def detector(self) -> Any: ...


class PipelineClass(Protocol):
    """How to build a pipeline from settings, optionally on another one's detector:
    :class:`facegate.pipeline.face_pipeline.FacePipeline` is one."""

    def __call__(self, settings: Settings, *, detector: Any = None) -> DetectingPipeline: ...


def warm_pipeline(pipeline_class: PipelineClass, settings: Settings) -> DetectingPipeline:
    """The settings' pipeline, models loaded now (at init, not on the first record)."""
    pipeline = pipeline_class(settings)
    pipeline.warm_up()
    return pipeline


def model_pipelines(
    pipeline_class: PipelineClass, settings: Settings, main: DetectingPipeline
) -> PipelineFactory:
    """Pipelines for other installed models (re-embedding targets), warm, on ``main``'s
    detector so that a second model costs only its embedder."""

    def build(model_id: str) -> FaceProcessor:
        pipeline = pipeline_class(
            settings.model_copy(update={"model_id": model_id}), detector=main.detector
        )
        pipeline.warm_up()
        return pipeline

    return build


def embed_job(settings: Settings, pipeline_class: PipelineClass) -> EmbedJob:
    """The embedding function's job: upload notifications in, gallery parts out."""
    return EmbedJob(
        warm_pipeline(pipeline_class, settings),
        aws_client("s3", settings),
        aws_client("sqs", settings),
        IngestLedger.from_settings(settings),
        JobConfig(
            bucket=settings.bucket,
            queue_url=settings.ingest_queue_url,
            chunk_size=settings.archive_chunk_size,
            max_photo_bytes=settings.s3_max_image_bytes,
            policy=settings.gallery_multi_face,
        ),
        Tombstones.from_settings(settings),
    )


def job_worker(settings: Settings, pipeline_class: PipelineClass) -> JobWorker:
    """The verification worker: manifests, chunks and re-embedding requests."""
    pipeline = warm_pipeline(pipeline_class, settings)
    tombstones = Tombstones.from_settings(settings)
    eraser = Eraser.from_settings(settings, tombstones)
    return JobWorker(
        pipeline,
        aws_client("s3", settings),
        aws_client("sqs", settings),
        JobStore.from_settings(settings),
        WorkerConfig(
            bucket=settings.bucket,
            jobs_queue_url=settings.jobs_queue_url,
            aggregate_queue_url=settings.aggregate_queue_url,
            chunk_size=settings.job_chunk_size,
            top_k=settings.job_top_k,
            max_photo_bytes=settings.s3_max_image_bytes,
            gallery_policy=settings.gallery_multi_face,
            reembed_chunk_size=settings.archive_chunk_size,
        ),
        subjects=SubjectStore.from_settings(settings),
        tombstones=tombstones,
        pipeline_factory=model_pipelines(pipeline_class, settings, pipeline),
        erasures=ErasureJobs(
            eraser, settings.jobs_queue_url, chunk_size=settings.erasure_chunk_size
        ),
        collections=CollectionDeleter.from_settings(settings, eraser),
    )
