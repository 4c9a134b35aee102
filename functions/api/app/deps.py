"""Dependencies: settings, pipeline, stores and the services, built once per process.

Tests override ``get_settings``/``get_pipeline``/``get_service`` through FastAPI's
``dependency_overrides`` instead of touching the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Header

from app.errors import UnauthorizedError
from facegate.gallery.cache import GalleryCache
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.service import FaceService, GalleryService
from facegate.settings import Settings, get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.jobs import JobStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones


@lru_cache(maxsize=1)
def get_pipeline() -> FacePipeline:
    pipeline = FacePipeline(get_settings())
    pipeline.warm_up()
    return pipeline


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[FacePipeline, Depends(get_pipeline)]


@dataclass(frozen=True)
class Stores:
    subjects: SubjectStore
    photos: PhotoStore
    keys: ApiKeyStore
    galleries: GalleryStore
    tombstones: Tombstones


@lru_cache(maxsize=4)
def _stores(settings: Settings) -> Stores:
    dynamodb, s3 = aws_client("dynamodb", settings), aws_client("s3", settings)
    return Stores(
        SubjectStore(dynamodb, settings.table),
        PhotoStore(s3, settings.bucket),
        ApiKeyStore(dynamodb, settings.table),
        GalleryStore(s3, settings.bucket),
        Tombstones(dynamodb, settings.table),
    )


@lru_cache(maxsize=4)
def _gallery_cache(model_id: str) -> GalleryCache:
    """One per process (per model): galleries stay loaded between requests."""
    return GalleryCache(expected_model_id=model_id)


def get_service(settings: SettingsDep, pipeline: PipelineDep) -> FaceService:
    stores = _stores(settings)
    return FaceService(
        pipeline,
        stores.subjects,
        stores.photos,
        stores.tombstones,
        _gallery_cache(pipeline.model_id),
        min_threshold=settings.min_threshold,
    )


@lru_cache(maxsize=4)
def _gallery_service(settings: Settings) -> GalleryService:
    stores = _stores(settings)
    return GalleryService(
        stores.galleries,
        stores.tombstones,
        s3=aws_client("s3", settings),
        sqs=aws_client("sqs", settings),
        jobs_queue_url=settings.jobs_queue_url,
        model_dir=settings.model_dir,
    )


def get_gallery_service(settings: SettingsDep) -> GalleryService:
    return _gallery_service(settings)


@lru_cache(maxsize=4)
def job_store(settings: Settings) -> JobStore:
    return JobStore(aws_client("dynamodb", settings), settings.table)


def get_photo_store(settings: SettingsDep) -> PhotoStore:
    return _stores(settings).photos


def require_api_key(
    settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None
) -> None:
    """``x-api-key`` must be a key whose hash is stored; IAM mode leaves auth to API Gateway."""
    if settings.auth_mode != "api_key":
        return
    if not x_api_key:
        raise UnauthorizedError("missing x-api-key header")
    if not _stores(settings).keys.is_valid(x_api_key):
        raise UnauthorizedError("unknown API key")


ServiceDep = Annotated[FaceService, Depends(get_service)]
GalleryServiceDep = Annotated[GalleryService, Depends(get_gallery_service)]
PhotoStoreDep = Annotated[PhotoStore, Depends(get_photo_store)]
