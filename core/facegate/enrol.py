"""Enrolment from a folder: ``DIR/<subject_id>/<photo>`` -> a Parquet gallery + rejects.

Every file under ``DIR`` ends up either as gallery rows or as a reject row with its reason:
photos without a usable face, unreadable files, and files that sit outside any subject
folder. Nothing is silently skipped (hidden files such as ``.DS_Store`` excepted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facegate.errors import FaceGateError, ValidationError
from facegate.gallery import GalleryMeta, build_gallery_table, rejects_from_errors, write_gallery
from facegate.pipeline import FacePipeline, FaceResult
from facegate.settings import MultiFacePolicy


@dataclass
class EnrolReport:
    photos: int = 0
    rows: int = 0
    subjects: int = 0
    rejects: list[tuple[str, str, str]] = field(default_factory=list)


def list_photos(directory: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, FaceGateError]]]:
    """``(subject_id, path)`` for files in subject folders; rejects for loose files."""
    if not directory.is_dir():
        raise ValidationError(f"{directory} is not a directory")
    photos: list[tuple[str, Path]] = []
    loose: list[tuple[str, FaceGateError]] = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if len(rel.parts) != 2:
            loose.append((rel.as_posix(), ValidationError("not inside a <subject_id>/ folder")))
            continue
        photos.append((rel.parts[0], path))
    return photos, loose


def embed_directory(
    pipeline: FacePipeline,
    directory: Path,
    out: Path,
    rejects_out: Path,
    *,
    batch: int = 32,
    policy: MultiFacePolicy | None = None,
    progress: bool = True,
) -> EnrolReport:
    """Embed every photo, write the gallery and the rejects table (always, even if empty)."""
    photos, rejected = list_photos(directory)
    files = len(photos) + len(rejected)
    subject_ids: list[str] = []
    keys: list[str] = []
    face_indices: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    scores: list[float] = []
    vectors: list[np.ndarray] = []
    for start in tqdm(
        range(0, len(photos), batch), desc="embedding", unit="batch", disable=not progress
    ):
        chunk = photos[start : start + batch]
        results = pipeline.process_many([p for _, p in chunk], policy)
        for (subject, path), result in zip(chunk, results, strict=True):
            key = path.relative_to(directory).as_posix()
            if not isinstance(result, FaceResult):
                rejected.append((key, result))
                continue
            for face in result.embeddings:
                subject_ids.append(subject)
                keys.append(key)
                face_indices.append(face.face_index)
                boxes.append(face.detection.box)
                scores.append(face.detection.score)
                vectors.append(face.vector)
    meta = GalleryMeta(
        model_id=pipeline.model_id,
        weights_sha256=pipeline.card.weights_sha256,
        dim=pipeline.card.embedding_dim,
        threshold=pipeline.threshold,
    )
    table = build_gallery_table(
        subject_ids=subject_ids,
        image_keys=keys,
        face_indices=np.asarray(face_indices, dtype=np.int32),
        bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        det_scores=np.asarray(scores, dtype=np.float32),
        embeddings=np.asarray(vectors, dtype=np.float32).reshape(-1, meta.dim),
        meta=meta,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gallery(table, out)
    import pyarrow.parquet as pq

    pq.write_table(rejects_from_errors(rejected), rejects_out)
    return EnrolReport(
        photos=files,
        rows=len(keys),
        subjects=len(set(subject_ids)),
        rejects=[(k, e.code, e.message) for k, e in rejected],
    )
