"""Photos on S3: enrolment photos (one prefix per subject) and images read by key. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from facegate.common import check_positive, validate_id
from facegate.errors import (
    ImageTooLargeError,
    InvalidImageError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage.clients import aws_client
from facegate.storage.keys import (
    DEFAULT_COLLECTION,
    PROBES_PREFIX,
    enrolment_photo_key,
    subject_prefix,
)
from facegate.storage.objects import ObjectStore
from facegate.storage.scrub import Scrubbed, erase_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
    "image/gif": "gif",
}


def _mime(content_type: str) -> str:
    """``image/jpeg; q=1`` -> ``image/jpeg``."""
    return content_type.split(";", 1)[0].strip().lower() if content_type else ""


class PhotoStore:
    """Enrolment photos in one bucket, and caller-supplied ``s3://`` images from that bucket.

    ``client`` is an S3 client (see :func:`~facegate.storage.clients.aws_client`). Photos go
    through :class:`ObjectStore` (encrypted, typed) under :data:`ENROLMENT_PREFIX`; the bucket
    itself is private. Reads speak the image vocabulary: a missing object is an
    :class:`InvalidImageError` (the photo cannot be used, and retrying will not change that)
    and one over the byte limit an :class:`ImageTooLargeError`, refused before the download.
    """

    def __init__(self, client: S3Client, bucket: str, collection: str = DEFAULT_COLLECTION) -> None:
        self.objects = ObjectStore(client, bucket)
        self.bucket = bucket
        self._client = client
        #: The collection whose photos this store writes and erases.
        self.collection = validate_id(collection, "collection")

    @classmethod
    def from_settings(cls, settings: Settings) -> PhotoStore:
        return cls(aws_client("s3", settings), settings.bucket)

    def in_collection(self, collection: str) -> PhotoStore:
        """The same bucket's photos of ``collection``."""
        return PhotoStore(self._client, self.bucket, collection)

    def subject_prefix(self, subject_id: str) -> str:
        """``enrolments/<collection>/<subject_id>/``: every photo of one subject."""
        return subject_prefix(subject_id, self.collection)

    def photo_key(self, subject_id: str, face_id: str, content_type: str) -> str:
        """Where :meth:`put` stores this photo, known before the write: an enrolment that
        fails undoes every photo it may have stored, the one whose put failed included (S3
        may have stored it before the answer was lost)."""
        validate_id(face_id, "face_id")
        ext = _EXTENSIONS.get(_mime(content_type))
        if ext is None:
            raise ValidationError(f"unsupported photo content type {content_type!r}")
        return enrolment_photo_key(subject_id, face_id, ext, self.collection)

    def put(self, subject_id: str, face_id: str, data: bytes, content_type: str) -> str:
        """Store one enrolment photo; return its key
        ``enrolments/<collection>/<subject>/<face>.<ext>``."""
        key = self.photo_key(subject_id, face_id, content_type)
        if not isinstance(data, bytes) or not data:
            raise ValidationError("photo data must be non-empty bytes")
        self.objects.put(key, data, content_type=_mime(content_type))
        return key

    def get(
        self, key: str, *, version_id: str | None = None, max_bytes: int | None = None
    ) -> bytes:
        """An image's bytes (that version, else the current one).

        Missing: :class:`InvalidImageError`; over ``max_bytes``: :class:`ImageTooLargeError`,
        before any byte is downloaded. S3 failures stay :class:`StorageError`.
        """
        try:
            return self.objects.get(key, version_id=version_id, max_bytes=max_bytes).body
        except ObjectNotFoundError as exc:
            raise InvalidImageError(exc.message, detail=exc.detail) from exc
        except ObjectTooLargeError as exc:
            raise ImageTooLargeError(exc.message) from exc

    def get_if_changed(self, key: str, etag: str | None) -> tuple[str, bytes | None]:
        """``(etag, bytes)``, or ``(etag, None)`` when the object still has ``etag`` (a
        conditional GET: a warm function re-downloads a cached gallery only when it changed).
        A missing object is an :class:`InvalidImageError`."""
        try:
            return self.objects.get_if_changed(key, etag)
        except ObjectNotFoundError as exc:
            raise InvalidImageError(exc.message, detail=exc.detail) from exc

    def delete_subject(self, subject_id: str) -> Scrubbed | None:
        """Delete every object under the subject's prefix, all versions and delete markers too.

        A plain delete in a versioned bucket only hides the photo behind a delete marker;
        erasing a person means removing every version. Returns what was removed (its
        ``rows_removed`` counts the distinct keys), None when there was nothing.
        """
        return erase_prefix(self.objects, self.subject_prefix(subject_id), "enrolment_photos")

    def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete these objects, every version (undoing an enrolment that failed midway)."""
        targets = [t for key in keys for t in self.objects.versions(key) if t[0] == key]
        self.objects.delete_versions(targets)

    def is_own_uri(self, uri: str) -> str | None:
        """The key of ``s3://<bucket>/<key>`` if ``<bucket>`` is ours, else None."""
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            return None
        bucket, _, key = uri[len("s3://") :].partition("/")
        return key if bucket == self.bucket and key else None

    def fetch(self, uri: str, max_bytes: int) -> bytes:
        """Read a caller-supplied ``s3://`` image, within limits, before any byte is downloaded.

        Only our bucket's :data:`PROBES_PREFIX` (:class:`ValidationError` otherwise). The
        function's role must not become a way to read other buckets, nor the bucket's other
        prefixes: enrolment photos and gallery uploads are photos of enrolled people, and a
        key that may only verify would get their embeddings by naming them. Segments that a
        path could read as ``.``/``..`` or an empty folder are refused too, so no spelling of a
        key leaves the prefix. The size limit is checked against the object's length before
        the body is read, and the read itself is bounded (:class:`ImageTooLargeError`). A
        missing object is an :class:`InvalidImageError`.
        """
        check_positive(max_bytes, "max_bytes")
        key = self.is_own_uri(uri)
        inside = (
            key is not None
            and key.startswith(PROBES_PREFIX)
            and all(part not in ("", ".", "..") for part in key.split("/"))
        )
        if key is None or not inside:
            raise ValidationError(
                f"photos by reference must be s3://{self.bucket}/{PROBES_PREFIX}<key>",
                detail=repr(uri),
            )
        return self.get(key, max_bytes=max_bytes)
