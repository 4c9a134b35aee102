"""Batch embedding: many photos in, one gallery part and one rejects table out.

Shared by ``facegate embed`` (a local folder) and the S3 embedding job: photos are embedded
in batches (same-size photos share a detection pass), every accepted face becomes a gallery
row and every photo that could not be used becomes a reject row with its error code. A photo
is never silently dropped: the two tables together account for every input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from facegate.common import iso_micros
from facegate.errors import FaceGateError
from facegate.gallery.format import GalleryMeta, build_gallery_table, rejects_from_errors
from facegate.gallery.rejects import Reject
from facegate.settings import MultiFacePolicy
from facegate.types import FaceProcessor, FaceResult


@dataclass(frozen=True)
class PhotoInput:
    """One photo to embed: its bytes, or the error met while fetching it.

    ``source_at`` is when the photo was uploaded (ISO-8601 UTC), which its rows and its
    reject carry; None dates them from the embedding, for photos read from a folder.
    """

    image_key: str
    subject_id: str
    data: bytes | None = None
    error: FaceGateError | None = None
    source_at: str | None = None


@dataclass
class _Rows:
    subject_ids: list[str] = field(default_factory=list)
    image_keys: list[str] = field(default_factory=list)
    face_indices: list[int] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    source_times: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PartResult:
    """A gallery part (schema of ``facegate.gallery``) and its rejects."""

    gallery: pa.Table
    rejects: pa.Table
    photos: int

    @property
    def faces(self) -> int:
        return self.gallery.num_rows


def gallery_meta(pipeline: FaceProcessor) -> GalleryMeta:
    return GalleryMeta(
        model_id=pipeline.model_id,
        weights_sha256=pipeline.card.weights_sha256,
        dim=pipeline.card.embedding_dim,
        threshold=pipeline.threshold,
        detector=pipeline.detector_name,
    )


def embed_photos(
    pipeline: FaceProcessor,
    photos: Iterable[PhotoInput] | Sequence[PhotoInput],
    *,
    batch: int = 32,
    policy: MultiFacePolicy | None = None,
    rejected: Iterable[Reject] = (),
    subject_scope: str | None = None,
) -> PartResult:
    """Embed ``photos`` ``batch`` at a time; ``rejected`` are inputs refused before this.
    ``subject_scope`` goes into the part's metadata (:class:`GalleryMeta`): re-embedded rows
    stay erasable in the scope they came from."""
    rows = _Rows()
    rejects: list[Reject] = list(rejected)
    pending: list[PhotoInput] = []
    count = len(rejects)
    built_at = iso_micros(datetime.now(UTC))
    for photo in photos:
        count += 1
        if photo.source_at is None:
            photo = replace(photo, source_at=built_at)
        if photo.error is not None or photo.data is None:
            rejects.append(_reject(photo, photo.error or FaceGateError("no data")))
            continue
        pending.append(photo)
        if len(pending) >= batch:
            _embed_batch(pipeline, pending, policy, rows, rejects)
            pending = []
    if pending:
        _embed_batch(pipeline, pending, policy, rows, rejects)
    meta = replace(gallery_meta(pipeline), subject_scope=subject_scope)
    table = build_gallery_table(
        subject_ids=rows.subject_ids,
        image_keys=rows.image_keys,
        face_indices=np.asarray(rows.face_indices, dtype=np.int32),
        bboxes=np.asarray(rows.boxes, dtype=np.float32).reshape(-1, 4),
        det_scores=np.asarray(rows.scores, dtype=np.float32),
        embeddings=np.asarray(rows.vectors, dtype=np.float32).reshape(-1, meta.dim),
        meta=meta,
        source_times=rows.source_times,
    )
    return PartResult(table, rejects_from_errors(rejects), count)


def _embed_batch(
    pipeline: FaceProcessor,
    photos: list[PhotoInput],
    policy: MultiFacePolicy | None,
    rows: _Rows,
    rejects: list[Reject],
) -> None:
    results = pipeline.process_many([p.data for p in photos if p.data is not None], policy)
    for photo, result in zip(photos, results, strict=True):
        if not isinstance(result, FaceResult):
            rejects.append(_reject(photo, result))
            continue
        for face in result.embeddings:
            rows.subject_ids.append(photo.subject_id)
            rows.image_keys.append(photo.image_key)
            rows.face_indices.append(face.face_index)
            rows.boxes.append(face.detection.box)
            rows.scores.append(face.detection.score)
            rows.vectors.append(face.vector)
            rows.source_times.append(photo.source_at or "")


def _reject(photo: PhotoInput, error: FaceGateError) -> Reject:
    return (photo.image_key, error, photo.subject_id, photo.source_at)
