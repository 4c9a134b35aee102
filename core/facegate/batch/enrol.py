"""Enrolment from a folder: ``DIR/<subject_id>/<photo>`` -> a Parquet gallery + rejects.

Every file under ``DIR`` ends up either as gallery rows or as a reject row with its reason:
photos without a usable face, unreadable files, and files that sit outside any subject
folder. Nothing is silently skipped (hidden files such as ``.DS_Store`` excepted).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow.parquet as pq
from tqdm import tqdm

from facegate.batch.embedding import PhotoInput, embed_photos
from facegate.errors import FaceGateError, ValidationError
from facegate.gallery.format import write_gallery
from facegate.pipeline.image import ImageLimits, read_image_bytes
from facegate.settings import MultiFacePolicy
from facegate.types import FaceProcessor


class LimitedProcessor(FaceProcessor, Protocol):
    """A face processor that also says which files it reads (``FacePipeline`` is one)."""

    @property
    def limits(self) -> ImageLimits: ...


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


def _read(
    directory: Path, photos: list[tuple[str, Path]], limits: ImageLimits, progress: bool
) -> Iterator[PhotoInput]:
    for subject, path in tqdm(photos, desc="embedding", unit="photo", disable=not progress):
        key = path.relative_to(directory).as_posix()
        try:
            yield PhotoInput(key, subject, data=read_image_bytes(path, limits))
        except FaceGateError as exc:
            yield PhotoInput(key, subject, error=exc)


def embed_directory(
    pipeline: LimitedProcessor,
    directory: Path,
    out: Path,
    rejects_out: Path,
    *,
    batch: int = 32,
    policy: MultiFacePolicy | None = None,
    progress: bool = True,
) -> EnrolReport:
    """Embed every photo, write the gallery and the rejects table (always, even if empty)."""
    photos, loose = list_photos(directory)
    part = embed_photos(
        pipeline,
        _read(directory, photos, pipeline.limits, progress),
        batch=batch,
        policy=policy,
        rejected=loose,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gallery(part.gallery, out)
    pq.write_table(part.rejects, rejects_out)
    rejects = part.rejects.to_pylist()
    return EnrolReport(
        photos=part.photos,
        rows=part.faces,
        subjects=len(set(part.gallery.column("subject_id").to_pylist())),
        rejects=[(r["image_key"], r["reason"], r["detail"] or "") for r in rejects],
    )
