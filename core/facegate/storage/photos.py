"""Enrolment photos on S3, one prefix per subject. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from facegate.common import validate_id
from facegate.errors import (
    ImageTooLargeError,
    InvalidImageError,
    StorageError,
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.keys import ENROLMENT_PREFIX

_S3_DELETE_SIZE = 1000
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
    "image/gif": "gif",
}


# --------------------------------------------------------------------------------------
# S3: photos
# --------------------------------------------------------------------------------------


class PhotoStore:
    """Enrolment photos in one bucket, and caller-supplied ``s3://`` images from that bucket.

    ``client`` is an S3 client (see :func:`facegate.aws.aws_client`). Photos are written with
    SSE-S3 (``AES256``) under :data:`ENROLMENT_PREFIX`; the bucket itself is private.
    """

    def __init__(self, client: BaseClient, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings: Settings) -> PhotoStore:
        return cls(aws_client("s3", settings), settings.bucket)

    @staticmethod
    def subject_prefix(subject_id: str) -> str:
        """``enrolments/<subject_id>/``: the trailing slash keeps ``al`` from matching ``alice``."""
        return f"{ENROLMENT_PREFIX}{validate_id(subject_id)}/"

    def put(self, subject_id: str, face_id: str, data: bytes, content_type: str) -> str:
        """Store one enrolment photo; return its key ``enrolments/<subject>/<face>.<ext>``."""
        validate_id(face_id, "face_id")
        mime = content_type.split(";", 1)[0].strip().lower() if content_type else ""
        ext = _EXTENSIONS.get(mime)
        if ext is None:
            raise ValidationError(f"unsupported photo content type {content_type!r}")
        if not isinstance(data, bytes) or not data:
            raise ValidationError("photo data must be non-empty bytes")
        key = f"{self.subject_prefix(subject_id)}{face_id}.{ext}"
        with aws_errors(f"storing {key}"):
            self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=mime,
                ServerSideEncryption="AES256",
            )
        return key

    def get(self, key: str) -> bytes:
        """The object's bytes; a missing object is an :class:`InvalidImageError`."""
        data = self.get_if_changed(key, None)[1]
        assert data is not None
        return data

    def get_if_changed(self, key: str, etag: str | None) -> tuple[str, bytes | None]:
        """``(etag, bytes)``, or ``(etag, None)`` when the object still has ``etag`` (a
        conditional GET: a warm function re-downloads a cached gallery only when it changed)."""
        extra = {"IfNoneMatch": etag} if etag else {}
        with aws_errors(f"reading {key}"):
            try:
                answer = self._s3.get_object(Bucket=self.bucket, Key=key, **extra)
            except ClientError as exc:
                if error_code(exc) in ("304", "NotModified") and etag:
                    return etag, None
                if error_code(exc) in _NOT_FOUND:
                    raise InvalidImageError(f"no such object: s3://{self.bucket}/{key}") from exc
                raise
            return answer["ETag"], answer["Body"].read()

    def delete_subject(self, subject_id: str) -> int:
        """Delete every object under the subject's prefix, all versions and delete markers too.

        A plain delete in a versioned bucket only hides the photo behind a delete marker;
        erasing a person means removing every version. Returns the number of distinct keys
        removed. Listing completes before deleting so that pagination never sees a moving list.
        """
        prefix = self.subject_prefix(subject_id)
        with aws_errors(f"listing {prefix}"):
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            targets = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for page in pages
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
        for start in range(0, len(targets), _S3_DELETE_SIZE):
            self._delete_objects(targets[start : start + _S3_DELETE_SIZE])
        return len({t["Key"] for t in targets})

    def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete these objects, every version (undoing an enrolment that failed midway)."""
        targets: list[dict[str, str]] = []
        for key in keys:
            with aws_errors(f"listing versions of {key}"):
                listed = self._s3.list_object_versions(Bucket=self.bucket, Prefix=key)
            for entry in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
                if entry["Key"] == key:
                    targets.append({"Key": key, "VersionId": entry["VersionId"]})
        for start in range(0, len(targets), 1000):
            self._delete_objects(targets[start : start + 1000])

    def _delete_objects(self, targets: list[dict[str, str]]) -> None:
        with aws_errors(f"deleting from {self.bucket}"):
            done = self._s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": targets, "Quiet": True}
            )
        errors = done.get("Errors", [])
        if errors:
            first = errors[0]
            raise StorageError(
                f"{len(errors)} objects not deleted from {self.bucket}",
                detail=f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}",
            )

    def is_own_uri(self, uri: str) -> str | None:
        """The key of ``s3://<bucket>/<key>`` if ``<bucket>`` is ours, else None."""
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            return None
        bucket, _, key = uri[len("s3://") :].partition("/")
        return key if bucket == self.bucket and key else None

    def fetch(self, uri: str, max_bytes: int) -> bytes:
        """Read a caller-supplied ``s3://`` image, within limits, before any byte is downloaded.

        Only our bucket (:class:`ValidationError` otherwise: the function's role must not become
        a way to read other buckets) and never the private enrolment photos. The size comes
        from ``head_object`` (:class:`ImageTooLargeError`) and is enforced again on the read,
        in case the object was replaced in between. A missing object is an
        :class:`InvalidImageError`.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValidationError(f"max_bytes must be a positive int, got {max_bytes!r}")
        key = self.is_own_uri(uri)
        if key is None:
            raise ValidationError(f"only s3://{self.bucket}/ URIs are accepted", detail=repr(uri))
        if key.startswith(ENROLMENT_PREFIX):
            raise ValidationError("enrolment photos cannot be used as input", detail=repr(uri))
        with aws_errors(f"reading {uri}"):
            try:
                size = self._s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
                if size > max_bytes:
                    raise ImageTooLargeError(f"{uri} has {size} bytes, the limit is {max_bytes}")
                data = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read(max_bytes + 1)
            except ClientError as exc:
                if error_code(exc) in _NOT_FOUND:
                    raise InvalidImageError(f"no such image: {uri}") from exc
                raise
        if len(data) > max_bytes:
            raise ImageTooLargeError(f"{uri} has more than {max_bytes} bytes")
        return data
