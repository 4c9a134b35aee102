"""Re-embedding on a model change, the job: fetch, embed with the new model, write, compact.

Runs in the jobs worker (a ``facegate.reembed`` message on the jobs queue, sent by
``POST /reembed`` or ``facegate reembed --submit``) or in-process (``facegate reembed``).
Parts are named after the request and chunk, so a retried message overwrites its own parts
instead of adding copies; every source photo ends up as gallery rows or as a reject row with
its reason (a photo deleted since, no face under the new detector settings, ...).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from facegate.batch.embedding import PhotoInput, embed_photos
from facegate.batch.reembed import (
    PhotoFetcher,
    ReembedRequest,
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
    if pipeline.model_id != request.model_id:
        raise ModelMismatchError(
            f"request is for {request.model_id!r} but the pipeline serves {pipeline.model_id!r}"
        )
    store = GalleryStore(s3, bucket)
    if request.source_gallery is not None:
        found, scope = gallery_photos(store, request.source_gallery)
    elif subjects is not None:
        found, scope = subject_photos(subjects), API_SCOPE
    else:
        raise ValidationError("re-embedding the enrolled subjects needs the subjects table")
    photos = not_erased(found, scope, erasures)
    if not photos:
        raise ValidationError(f"{request.source!r} has no photos to re-embed")
    fetch = PhotoFetcher(s3, bucket, max_photo_bytes)
    tag = request.model_id.replace("+", "_")
    faces = rejects = parts = 0
    for index, chunk in enumerate(chunks(photos, chunk_size)):
        inputs = []
        for key, subject, when in chunk:
            try:
                inputs.append(PhotoInput(key, subject, data=fetch(key), source_at=when))
            except FaceGateError as exc:
                if isinstance(exc, StorageError):
                    raise
                inputs.append(PhotoInput(key, subject, error=exc, source_at=when))
        part = embed_photos(pipeline, inputs, policy=policy, subject_scope=scope)
        name = f"reembed-{tag}-{request.source}-{index:05d}"
        store.write_table(store.part_key(request.target, name), part.gallery)
        store.write_table(store.rejects_key(request.target, name), part.rejects)
        faces += part.faces
        rejects += part.rejects.num_rows
        parts += 1
    compaction = store.compact(
        request.target, erasures=erasures, expected_model_id=request.model_id
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
