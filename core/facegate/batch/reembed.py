"""Re-embedding on a model change, the torch-free half: what to re-embed and where it is.

Upgrading the model must not mean re-uploading every photo. The photos a gallery was built
from are still in the bucket (``uploads/<g>/<subject>/<photo>``, or a member of an uploaded
zip, ``uploads/<g>/<set>.zip/<member>``), and so are the photos of enrolled subjects
(``subjects/<id>/<face>.jpg``). A re-embedding request names a source (a gallery, or the
enrolled subjects) and a target gallery and model id; the job (``reembed_job``) fetches
every source photo again, embeds it with the new model and writes the target gallery, parts
and rejects as the upload job does, then compacts it. The source is never modified, so the
old gallery keeps serving until the new one is checked and switched to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

import pyarrow as pa

from facegate.batch.archives import MAX_ARCHIVE_READ, open_archive, read_member
from facegate.batch.messages import REEMBED, Message
from facegate.common import parse_instant, validate_id
from facegate.errors import (
    InvalidImageError,
    ObjectNotFoundError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.storage.galleries import GalleryStore
from facegate.storage.keys import UPLOADS_PREFIX, reembed_status_key
from facegate.storage.objects import JSON_TYPE, ObjectStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore

SUBJECTS = "subjects"


@dataclass(frozen=True)
class ReembedRequest(Message):
    """Re-embed ``source`` (a gallery name, or None for the enrolled subjects) into
    ``target`` with ``model_id``; a :data:`~facegate.batch.messages.REEMBED` message."""

    MESSAGE_TYPE: ClassVar[str] = REEMBED

    target: str
    model_id: str
    source_gallery: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.target, "target gallery")
        if self.source_gallery is not None:
            validate_id(self.source_gallery, "source gallery")
            if self.source_gallery == self.target:
                raise ValidationError("the target gallery must differ from the source")
        if not isinstance(self.model_id, str) or not self.model_id:
            raise ValidationError("model_id must be a non-empty string")

    @property
    def source(self) -> str:
        return self.source_gallery if self.source_gallery is not None else SUBJECTS

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(doc.get("target", ""), doc.get("model_id", ""), doc.get("source_gallery"))


def gallery_photos(store: GalleryStore, gallery: str) -> list[tuple[str, str]]:
    """``(image_key, subject_id)`` of every photo behind a gallery's rows (its parts, which
    are the source of truth), in key order, each photo once."""
    keys = store.list_parts(gallery)
    if not keys:
        raise UnknownGalleryError(f"gallery {gallery!r} has no parts to re-embed")
    seen: dict[str, str] = {}
    for key in keys:
        table = store.read_table(key, columns=["image_key", "subject_id"])
        for image_key, subject in zip(
            _strings(table, "image_key", key), _strings(table, "subject_id", key), strict=True
        ):
            seen.setdefault(image_key, subject)
    return sorted(seen.items())


def _strings(table: pa.Table, column: str, key: str) -> list[str]:
    """A column the gallery schema declares non-null text; a part breaking that is refused
    by name rather than re-embedding a photo under a null key or subject."""
    values = table.column(column).to_pylist()
    strings = [v for v in values if isinstance(v, str)]
    if len(strings) != len(values):
        raise ValidationError(f"{key}: {column} holds values that are not strings")
    return strings


def subject_photos(
    subjects: SubjectStore, deleted: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """``(image_key, subject_id)`` of every enrolled face's stored photo.

    A face enrolled before its subject's tombstone (``deleted``: subject id -> deletion time)
    is one a DELETE is still erasing: left out. A face enrolled after it belongs to the same
    id enrolled again, a new person as far as the deletion goes: kept.
    """
    out: dict[str, str] = {}
    cursor: str | None = None
    while True:
        page, cursor = subjects.list_subjects(limit=100, cursor=cursor)
        for subject in page:
            _, faces = subjects.get_embeddings(subject.subject_id)
            gone = (deleted or {}).get(subject.subject_id)
            for face in faces:
                if gone is not None and _not_after(face.created_at, gone):
                    continue
                out.setdefault(face.image_key, subject.subject_id)
        if cursor is None:
            return sorted(out.items())


def _not_after(created_at: str | None, deleted_at: str) -> bool:
    """Whether a face stamped ``created_at`` is not newer than the deletion (unstamped: it is
    old)."""
    if created_at is None:
        return True
    return parse_instant(created_at, "created_at") <= parse_instant(deleted_at, "deleted_at")


class PhotoFetcher:
    """Photo bytes by image key: plain objects, or members of an uploaded zip (the archive
    is read once and kept while consecutive keys come from it: keys are sorted).

    A photo (plain or member) over ``max_bytes`` is an :class:`ImageTooLargeError` and a
    missing one an :class:`InvalidImageError`: reject rows, as in the upload job. Archives are
    read as the upload job reads them, over ranged GETs (:meth:`ObjectStore.open`): the central
    directory and the members asked for, never the whole zip.
    """

    def __init__(self, s3: Any, bucket: str, max_bytes: int) -> None:
        self.photos = PhotoStore(s3, bucket)
        self.objects = ObjectStore(s3, bucket)
        self.max_bytes = max_bytes
        self._archive: tuple[str, Any] | None = None

    def __call__(self, image_key: str) -> bytes:
        archive_key, member = split_member(image_key)
        if member is None:
            return self.photos.get(image_key, max_bytes=self.max_bytes)
        try:
            if self._archive is None or self._archive[0] != archive_key:
                reader = self.objects.open(archive_key, max_read=MAX_ARCHIVE_READ)
                self._archive = (archive_key, open_archive(reader))
            return read_member(self._archive[1], member, self.max_bytes)
        except ObjectNotFoundError as exc:
            raise InvalidImageError(exc.message, detail=exc.detail) from exc


def split_member(image_key: str) -> tuple[str, str | None]:
    """``uploads/g/set.zip/a/b.jpg`` -> (``uploads/g/set.zip``, ``a/b.jpg``); else (key, None)."""
    if image_key.startswith(UPLOADS_PREFIX) and ".zip/" in image_key:
        archive, _, member = image_key.partition(".zip/")
        return archive + ".zip", member
    return image_key, None


def chunks(items: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def put_status(s3: Any, bucket: str, target: str, doc: dict[str, Any]) -> None:
    """Record a re-embedding's state (``queued``, ``done`` + report, ``failed`` + error)."""
    body = json.dumps(doc).encode()
    ObjectStore(s3, bucket).put(reembed_status_key(target), body, content_type=JSON_TYPE)


def get_status(s3: Any, bucket: str, target: str) -> dict[str, Any]:
    """The recorded state; :class:`UnknownGalleryError` when nothing was requested."""
    try:
        found = ObjectStore(s3, bucket).get(reembed_status_key(target))
    except ObjectNotFoundError as exc:
        raise UnknownGalleryError(f"no re-embedding into {target!r} was requested") from exc
    doc: dict[str, Any] = json.loads(found.body)
    return doc
