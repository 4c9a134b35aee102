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

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

from facegate.batch.archives import MAX_ARCHIVE_READ, open_archive, read_member
from facegate.batch.messages import REEMBED, Message
from facegate.common import iso_micros, parse_instant, validate_id
from facegate.errors import (
    InvalidImageError,
    ObjectNotFoundError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.lazy import lazy_module
from facegate.storage.galleries import GalleryStore, subject_scope
from facegate.storage.keys import UPLOADS_PREFIX, reembed_status_key
from facegate.storage.objects import ObjectStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Erasures

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

_EPOCH = "1970-01-01T00:00:00Z"

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


class SourcePhoto(NamedTuple):
    """A photo to re-embed: where it is, whose it is, and when it was uploaded (which the
    new rows keep: re-embedding does not make an old photo new to an erasure)."""

    image_key: str
    subject_id: str
    source_at: str


def gallery_photos(store: GalleryStore, gallery: str) -> tuple[list[SourcePhoto], str]:
    """Every photo behind a gallery's rows (its parts, which are the source of truth), in key
    order, each photo once; and the scope its subjects are erased in (:func:`subject_scope`)."""
    keys = store.list_parts(gallery)
    if not keys:
        raise UnknownGalleryError(f"gallery {gallery!r} has no parts to re-embed")
    seen: dict[str, SourcePhoto] = {}
    tables = []
    for key in keys:
        table = store.read_table(key, columns=["image_key", "subject_id", "source_at"])
        tables.append(table)
        image_keys = _strings(table, "image_key", key)
        subjects = _strings(table, "subject_id", key)
        times = [
            iso_micros(parse_instant(t, f"{key} source_at"))
            for t in table.column("source_at").to_pylist()
        ]
        for image_key, subject, when in zip(image_keys, subjects, times, strict=True):
            seen.setdefault(image_key, SourcePhoto(image_key, subject, when))
    return [seen[k] for k in sorted(seen)], subject_scope(gallery, tables)


def _strings(table: pa.Table, column: str, key: str) -> list[str]:
    """A column the gallery schema declares non-null text; a part breaking that is refused
    by name rather than re-embedding a photo under a null key or subject."""
    values = table.column(column).to_pylist()
    strings = [v for v in values if isinstance(v, str)]
    if len(strings) != len(values):
        raise ValidationError(f"{key}: {column} holds values that are not strings")
    return strings


def subject_photos(subjects: SubjectStore) -> list[SourcePhoto]:
    """Every enrolled face's stored photo, dated by its enrolment (an unstamped face, from
    before faces carried a time, dates from the epoch: older than any erasure)."""
    out: dict[str, SourcePhoto] = {}
    cursor: str | None = None
    while True:
        page, cursor = subjects.list_subjects(limit=100, cursor=cursor)
        for subject in page:
            _, faces = subjects.get_embeddings(subject.subject_id)
            for face in faces:
                when = iso_micros(parse_instant(face.created_at or _EPOCH, "created_at"))
                out.setdefault(
                    face.image_key, SourcePhoto(face.image_key, subject.subject_id, when)
                )
        if cursor is None:
            return [out[k] for k in sorted(out)]


def not_erased(
    photos: list[SourcePhoto], scope: str, erasures: Erasures | None
) -> list[SourcePhoto]:
    """The photos uploaded after their subject's latest erasure in ``scope`` (or never erased):
    an older one is being erased, or belongs to a part an erasure is rewriting; a newer one
    is the same id uploaded again, a new person as far as the erasure goes."""
    if erasures is None:
        return photos
    erased = erasures.in_scope(scope, (p.subject_id for p in photos))
    return [
        p
        for p in photos
        if p.subject_id not in erased
        or parse_instant(p.source_at, "source_at") > parse_instant(erased[p.subject_id], "erased")
    ]


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


def chunks(items: list[SourcePhoto], size: int) -> Iterator[list[SourcePhoto]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def put_status(s3: Any, bucket: str, target: str, doc: dict[str, Any]) -> None:
    """Record a re-embedding's state (``queued``, ``done`` + report, ``failed`` + error)."""
    ObjectStore(s3, bucket).put_json(reembed_status_key(target), doc)


def get_status(s3: Any, bucket: str, target: str) -> dict[str, Any]:
    """The recorded state; :class:`UnknownGalleryError` when nothing was requested."""
    doc = ObjectStore(s3, bucket).get_json(reembed_status_key(target), "a re-embedding's state")
    if doc is None:
        raise UnknownGalleryError(f"no re-embedding into {target!r} was requested")
    return doc
