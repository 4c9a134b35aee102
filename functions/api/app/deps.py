"""Dependencies: settings, pipeline, stores and the service, built once per process.

Tests override ``get_settings``/``get_pipeline``/``get_service`` through FastAPI's
``dependency_overrides`` instead of touching the environment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Header

from app.errors import UnauthorizedError
from facegate.apikeys import ApiKeyStore
from facegate.aws import aws_client
from facegate.pipeline import FacePipeline
from facegate.service import FaceService
from facegate.settings import Settings, get_settings
from facegate.stores import PhotoStore, SubjectStore


@lru_cache(maxsize=1)
def get_pipeline() -> FacePipeline:
    pipeline = FacePipeline(get_settings())
    pipeline.warm_up()
    return pipeline


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[FacePipeline, Depends(get_pipeline)]


@lru_cache(maxsize=4)
def _stores(settings: Settings) -> tuple[SubjectStore, PhotoStore, ApiKeyStore]:
    dynamodb = aws_client("dynamodb", settings)
    return (
        SubjectStore(dynamodb, settings.table),
        PhotoStore(aws_client("s3", settings), settings.bucket),
        ApiKeyStore(dynamodb, settings.table),
    )


def get_service(settings: SettingsDep, pipeline: PipelineDep) -> FaceService:
    subjects, photos, _ = _stores(settings)
    return FaceService(pipeline, subjects, photos)


def get_photo_store(settings: SettingsDep) -> PhotoStore:
    return _stores(settings)[1]


def require_api_key(
    settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None
) -> None:
    """``x-api-key`` must be a key whose hash is stored; IAM mode leaves auth to API Gateway."""
    if settings.auth_mode != "api_key":
        return
    if not x_api_key:
        raise UnauthorizedError("missing x-api-key header")
    if not _stores(settings)[2].is_valid(x_api_key):
        raise UnauthorizedError("unknown API key")


ServiceDep = Annotated[FaceService, Depends(get_service)]
PhotoStoreDep = Annotated[PhotoStore, Depends(get_photo_store)]
