"""Dependencies: settings, pipeline, stores and the services, built once per process.

Tests override ``get_settings``/``get_pipeline``/``get_service`` through FastAPI's
``dependency_overrides`` instead of touching the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.openapi import IdPath
from facegate.batch.collection_deletion import CollectionDeleter
from facegate.batch.erasure import Eraser
from facegate.batch.erasure_job import ErasureJobs
from facegate.errors import CollectionDeletingError, ModelMismatchError
from facegate.gallery.cache import GalleryCache
from facegate.liveness.calibration import pose_calibration
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.service import FaceService, GalleryService
from facegate.service.collection_export import CollectionExporter
from facegate.service.collections import CollectionService, enrolled_counts
from facegate.service.export import SubjectExport
from facegate.service.liveness import LivenessService
from facegate.settings import Settings, get_settings
from facegate.storage.apikeys import ApiKey, ApiKeyStore, route_reach, route_scope
from facegate.storage.challenges import ChallengeStore
from facegate.storage.clients import aws_client
from facegate.storage.collections import DEFAULT_COLLECTION, Collection, CollectionStore
from facegate.storage.galleries import GalleryStore
from facegate.storage.jobs import JobStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import ErasureKey, Tombstones

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


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
    #: For the export's look into the dead-letter queues: one client per process, not one
    #: per request.
    sqs: SQSClient


@lru_cache(maxsize=4)
def _stores(settings: Settings) -> Stores:
    dynamodb, s3 = aws_client("dynamodb", settings), aws_client("s3", settings)
    return Stores(
        SubjectStore(dynamodb, settings.table),
        PhotoStore(s3, settings.bucket),
        ApiKeyStore(dynamodb, settings.keys_table),
        GalleryStore(s3, settings.bucket),
        Tombstones(
            dynamodb,
            settings.table,
            ErasureKey.from_settings(settings),
            settings.tombstone_retention,
        ),
        aws_client("sqs", settings),
    )


@lru_cache(maxsize=4)
def _gallery_cache(model_id: str) -> GalleryCache:
    """One per process (per model): galleries stay loaded between requests."""
    return GalleryCache(expected_model_id=model_id)


@lru_cache(maxsize=4)
def _eraser(settings: Settings, model_id: str) -> Eraser:
    """Erasures over the bucket, the table and the dead-letter queues; it drops what this
    process's gallery cache holds of the galleries it rewrites."""
    return Eraser.from_settings(settings, _stores(settings).tombstones, _gallery_cache(model_id))


def get_service(settings: SettingsDep, pipeline: PipelineDep) -> FaceService:
    stores = _stores(settings)
    return FaceService(
        pipeline,
        stores.subjects,
        stores.photos,
        stores.tombstones,
        _gallery_cache(pipeline.model_id),
        min_threshold=settings.min_threshold,
        eraser=_eraser(settings, pipeline.model_id),
    )


@lru_cache(maxsize=4)
def _challenges(settings: Settings) -> ChallengeStore:
    return ChallengeStore.from_settings(settings)


def get_liveness(
    settings: SettingsDep, service: Annotated[FaceService, Depends(get_service)]
) -> LivenessService:
    """Log-in with a liveness check, for the default collection's subjects, judged with the
    pose calibration of the served detector."""
    return LivenessService(
        service,
        _challenges(settings),
        pose_calibration(settings.detector),
        vertical=settings.liveness_vertical,
    )


def get_eraser(settings: SettingsDep, pipeline: PipelineDep) -> Eraser:
    return _eraser(settings, pipeline.model_id)


def get_erasure_jobs(settings: SettingsDep, pipeline: PipelineDep) -> ErasureJobs:
    """Erasures too large for a request: queued here, run by the jobs workers."""
    return ErasureJobs(_eraser(settings, pipeline.model_id), settings.jobs_queue_url)


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
        ingest_queue_url=settings.ingest_queue_url,
        backfill_chunk_size=settings.archive_chunk_size,
    )


def get_gallery_service(settings: SettingsDep) -> GalleryService:
    return _gallery_service(settings)


def get_export(settings: SettingsDep) -> SubjectExport:
    """The export reads the dead-letter queues an erasure purges (it deletes nothing): a
    message naming the person is data held on them until it expires or is erased."""
    stores = _stores(settings)
    return SubjectExport(
        stores.subjects,
        stores.photos,
        stores.galleries,
        stores.tombstones,
        sqs=stores.sqs,
        dead_letter_queues=[q for q in (settings.ingest_dlq_url, settings.jobs_dlq_url) if q],
    )


@lru_cache(maxsize=4)
def job_store(settings: Settings) -> JobStore:
    return JobStore(aws_client("dynamodb", settings), settings.table)


def get_photo_store(settings: SettingsDep) -> PhotoStore:
    return _stores(settings).photos


@lru_cache(maxsize=4)
def _collection_service(settings: Settings, stores: Stores) -> CollectionService:
    """Collections in the subjects table, counted from their enrolled subjects; deleted
    through the erasure path, exported into the bucket's galleries.

    Cached with the process's stores as part of the key, so that whatever drops those
    (a test's moto, a new client) drops this service's client too."""
    eraser = _eraser(settings, settings.model_id)
    return CollectionService(
        CollectionStore(
            aws_client("dynamodb", settings), settings.table, default_model_id=settings.model_id
        ),
        enrolled_counts(stores.subjects),
        model_dir=settings.model_dir,
        deleter=CollectionDeleter.from_settings(settings, eraser),
        exporter=CollectionExporter(stores.subjects, stores.galleries, stores.tombstones),
    )


def get_collection_service(settings: SettingsDep) -> CollectionService:
    return _collection_service(settings, _stores(settings))


def get_collection_faces(
    collection: IdPath,
    service: Annotated[FaceService, Depends(get_service)],
    collections: Annotated[CollectionService, Depends(get_collection_service)],
) -> FaceService:
    """The face service over the collection named in the path, at its decision rule and
    with its attached galleries: 404 ``unknown_collection`` for one never created, 409
    ``collection_deleting`` while it is deleted, 409 ``model_mismatch`` for one of a model
    this deployment does not serve (its embeddings cannot be compared here)."""
    return _bound_to(collections.store.get(collection), service)


def _bound_to(found: Collection, service: FaceService) -> FaceService:
    if found.deleting is not None:
        raise CollectionDeletingError.named(found.name)
    if found.model_id != service.pipeline.model_id:
        raise ModelMismatchError(
            f"collection {found.name!r} is of model {found.model_id!r}; this deployment "
            f"serves {service.pipeline.model_id!r}"
        )
    return service.in_collection(
        found.name, threshold=found.threshold, far=found.far, galleries=found.galleries
    )


#: The key header as an OpenAPI security scheme (clients and schemathesis see how to
#: authenticate); checked below, not by FastAPI, so a missing key gets the API's own 401.
API_KEY = APIKeyHeader(
    name="x-api-key",
    auto_error=False,
    description="an API key (`facegate keys create`); its scopes decide the routes it opens",
)


def require_api_key(
    request: Request,
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Security(API_KEY)] = None,
) -> ApiKey | None:
    """``x-api-key`` must be a stored, unexpired key holding the scope the matched route
    needs (:data:`~facegate.storage.apikeys.ROUTE_SCOPES`, the one place that says which),
    in the collection the request acts on when the key is bound to collections; IAM mode
    leaves auth to API Gateway (None: no key, nothing to narrow).

    Every router takes this as its dependency, so the scope and the collection are found
    from the route FastAPI matched rather than declared route by route: a route missing from
    the mapping is refused to every key, never open to all, and a route that names no
    ``{collection}`` and is not listed as acting on ``default`` is the deployment's, refused
    to bound keys (:func:`~facegate.storage.apikeys.route_reach`). The key's record is
    answered so that a route may narrow what it shows (``GET /collections``): FastAPI runs a
    dependency once per request, so a route that asks for it again reads the key once.
    """
    if settings.auth_mode != "api_key":
        return None
    path = getattr(request.scope.get("route"), "path", "")
    return _stores(settings).keys.authorize(
        x_api_key,
        route_scope(request.method, path),
        route_reach(request.method, path, request.path_params),
    )


def get_identify_service(
    service: Annotated[FaceService, Depends(get_service)],
    collections: Annotated[CollectionService, Depends(get_collection_service)],
    key: Annotated[ApiKey | None, Depends(require_api_key)],
) -> FaceService:
    """``POST /identify``'s service. For a key bound to collections it is the ``default``
    collection's, exactly as ``/collections/default/identify``: its subjects and its
    attached galleries, none other (gallery names are one namespace: a tenant naming
    another's gallery must get 404, not its people). An unbound key (or IAM mode) is the
    deployment's and may name any gallery, as before collections."""
    if key is None or key.collections is None:
        return service
    return _bound_to(collections.store.get(DEFAULT_COLLECTION), service)


ServiceDep = Annotated[FaceService, Depends(get_service)]
GalleryServiceDep = Annotated[GalleryService, Depends(get_gallery_service)]
ExportDep = Annotated[SubjectExport, Depends(get_export)]
PhotoStoreDep = Annotated[PhotoStore, Depends(get_photo_store)]
EraserDep = Annotated[Eraser, Depends(get_eraser)]
ErasureJobsDep = Annotated[ErasureJobs, Depends(get_erasure_jobs)]
CollectionServiceDep = Annotated[CollectionService, Depends(get_collection_service)]
CollectionFacesDep = Annotated[FaceService, Depends(get_collection_faces)]
ApiKeyDep = Annotated[ApiKey | None, Depends(require_api_key)]
IdentifyServiceDep = Annotated[FaceService, Depends(get_identify_service)]
LivenessDep = Annotated[LivenessService, Depends(get_liveness)]
