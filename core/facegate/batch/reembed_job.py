"""Re-embedding on a model change, the job: fetch, embed with the new model, write, compact.

Runs in the jobs worker (a ``facegate.reembed`` message on the jobs queue, sent by
``POST /reembed`` or ``facegate reembed --submit``) or in-process (``facegate reembed``).
Parts are named after the request and chunk, so a retried message overwrites its own parts
instead of adding copies; every source photo ends up as gallery rows or as a reject row with
its reason (a photo deleted since, no face under the new detector settings, ...).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from facegate.batch.embedding import PartResult, PhotoInput, embed_photos
from facegate.batch.reembed import (
    PhotoFetcher,
    ReembedRequest,
    SourcePhoto,
    chunks,
    gallery_photos,
    not_erased,
    put_status,
    subject_photos,
)
from facegate.errors import FaceGateError, ModelMismatchError, StorageError, ValidationError
from facegate.settings import MultiFacePolicy
from facegate.storage.galleries import GalleryStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import API_SCOPE, Erasures
from facegate.types import FaceProcessor


@dataclass(frozen=True)
class ReembedReport:
    source: str
    target: str
    model_id: str
    photos: int
    faces: int
    rejects: int
    parts: int
    rows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"status": "done", **asdict(self)}


def check_model(pipeline: FaceProcessor, request: ReembedRequest) -> None:
    if pipeline.model_id != request.model_id:
        raise ModelMismatchError(
            f"request is for {request.model_id!r} but the pipeline serves {pipeline.model_id!r}"
        )


def source_photos(
    store: GalleryStore,
    request: ReembedRequest,
    subjects: SubjectStore | None,
    erasures: Erasures | None,
) -> tuple[list[SourcePhoto], str]:
    """The request's source photos not erased since, and their subject scope; a source with
    none is a :class:`ValidationError`."""
    if request.source_gallery is not None:
        found, scope = gallery_photos(store, request.source_gallery)
    elif subjects is not None:
        found, scope = subject_photos(subjects), API_SCOPE
    else:
        raise ValidationError("re-embedding the enrolled subjects needs the subjects table")
    photos = not_erased(found, scope, erasures)
    if not photos:
        raise ValidationError(f"{request.source!r} has no photos to re-embed")
    return photos, scope


def write_chunk(
    pipeline: FaceProcessor,
    store: GalleryStore,
    fetch: PhotoFetcher,
    request: ReembedRequest,
    index: int,
    photos: Sequence[SourcePhoto],
    scope: str,
    policy: MultiFacePolicy,
) -> PartResult:
    """Chunk ``index`` of the request fetched, embedded and written as the target's part and
    rejects (named after the request and the index: a retry overwrites its own); a photo
    that cannot be read is a reject row, a storage failure raises."""
    inputs = []
    for key, subject, when in photos:
        try:
            inputs.append(PhotoInput(key, subject, data=fetch(key), source_at=when))
        except FaceGateError as exc:
            if isinstance(exc, StorageError):
                raise
            inputs.append(PhotoInput(key, subject, error=exc, source_at=when))
    part = embed_photos(pipeline, inputs, policy=policy, subject_scope=scope)
    name = f"reembed-{request.model_id.replace('+', '_')}-{request.source}-{index:05d}"
    store.write_table(store.part_key(request.target, name), part.gallery)
    store.write_table(store.rejects_key(request.target, name), part.rejects)
    return part


def run_reembed(
    pipeline: FaceProcessor,
    s3: Any,
    bucket: str,
    request: ReembedRequest,
    *,
    subjects: SubjectStore | None = None,
    erasures: Erasures | None = None,
    chunk_size: int = 200,
    max_photo_bytes: int = 15 * 1024 * 1024,
    policy: MultiFacePolicy = "reject",
) -> ReembedReport:
    """Re-embed the request's source photos with ``pipeline`` into the target gallery.

    ``policy`` is the galleries' multi-face policy (settings ``gallery_multi_face``), as the
    upload job applies it.
    """
    started = time.perf_counter()
    check_model(pipeline, request)
    store = GalleryStore(s3, bucket)
    photos, scope = source_photos(store, request, subjects, erasures)
    fetch = PhotoFetcher(s3, bucket, max_photo_bytes)
    faces = rejects = parts = 0
    for index, chunk in enumerate(chunks(photos, chunk_size)):
        part = write_chunk(pipeline, store, fetch, request, index, chunk, scope, policy)
        faces += part.faces
        rejects += part.rejects.num_rows
        parts += 1
    # Full: every part of the target was just written (a re-run rewrites them whole).
    compaction = store.compact(
        request.target, erasures=erasures, expected_model_id=request.model_id, full=True
    )
    report = ReembedReport(
        source=request.source,
        target=request.target,
        model_id=request.model_id,
        photos=len(photos),
        faces=faces,
        rejects=rejects,
        parts=parts,
        rows=compaction.rows_out,
        seconds=round(time.perf_counter() - started, 2),
    )
    put_status(s3, bucket, request.target, report.to_dict())
    return report
