"""S3 objects, read and written in one way: :class:`ObjectStore`. Torch-free.

Every S3 read and write of the library goes through :class:`ObjectStore`, so three things are
decided once:

- **what "missing" means**: :data:`MISSING_CODES` (and, for a request naming a version,
  :data:`MISSING_VERSION_CODES`) become :class:`~facegate.errors.ObjectNotFoundError`, a
  permanent error; any other S3 or network failure is a :class:`~facegate.errors.StorageError`
  (worth a retry), through :func:`~facegate.storage.aws_errors.aws_errors`;
- **how big a read may be**: ``max_bytes`` is checked against ``ContentLength`` before the body
  is downloaded (:class:`~facegate.errors.ObjectTooLargeError`), and the read itself is bounded
  in case the object was replaced in between;
- **how objects are written**: always server-side encrypted (:data:`SERVER_SIDE_ENCRYPTION`:
  galleries and photos are biometric data) and always with a content type.

The stores above it (photos, galleries, re-embedding status) give a missing object their own
meaning: an unreadable photo, a gallery never built, nothing requested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

from botocore.exceptions import ClientError

from facegate.common import check_index, check_positive
from facegate.errors import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    ValidationError,
)
from facegate.storage.aws_errors import aws_errors, error_code

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

#: SSE-S3. Every put sets it explicitly rather than trusting the bucket default, so an object
#: written to a bucket configured by hand is encrypted all the same.
SERVER_SIDE_ENCRYPTION: Literal["AES256"] = "AES256"

PARQUET_TYPE = "application/vnd.apache.parquet"
JSON_TYPE = "application/json"

#: The S3 error codes that mean "no such object": ``NoSuchKey`` (GetObject; also a key whose
#: current version is a delete marker), ``NoSuchVersion`` (GetObject of a version id that does
#: not exist, or no longer: a version deleted since its notification was sent), ``404`` (HEAD
#: answers carry no body, so botocore reports the bare status), ``NotFound`` (some
#: S3-compatible stores). ``NoSuchBucket`` is deliberately absent: a missing bucket is a
#: misconfiguration, not a missing object, and stays a :class:`StorageError`.
MISSING_CODES = frozenset({"404", "NoSuchKey", "NoSuchVersion", "NotFound"})

#: Only when the request named a version id: S3 answers ``InvalidArgument`` ("Invalid version
#: id specified") to an id it cannot parse and ``405``/``MethodNotAllowed`` when the version is
#: a delete marker. Neither can change on a retry, so that version is missing. Without a
#: version id these codes mean a malformed request and stay storage errors; HEAD's bare ``400``
#: is never counted, because expired credentials answer a HEAD with ``400`` too.
MISSING_VERSION_CODES = frozenset({"InvalidArgument", "MethodNotAllowed", "405"})

#: A conditional GET whose ETag still matches.
_NOT_MODIFIED = frozenset({"304", "NotModified"})
#: ``DeleteObjects`` takes at most 1000 keys per call.
_DELETE_BATCH = 1000


@dataclass(frozen=True)
class ObjectRef:
    """One uploaded object version, as its notification names it.

    ``key`` is decoded (notifications URL-encode it). ``etag`` carries no quotes.
    ``version_id`` is None in an unversioned bucket; the ``"null"`` version of a bucket whose
    versioning is suspended is None too, since it is overwritten in place like an
    unversioned object and only its ``etag`` tells two uploads apart.
    """

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int


@dataclass(frozen=True)
class ObjectInfo:
    """What S3 says about one object version, without its bytes.

    ``etag`` is as S3 sends it (quoted), ready to pass back as ``if_none_match``;
    ``version_id`` is None in an unversioned bucket and for the ``"null"`` version, as in
    :class:`ObjectRef`.
    """

    key: str
    size: int
    etag: str
    version_id: str | None
    content_type: str | None


@dataclass(frozen=True)
class StoredObject(ObjectInfo):
    """One object version and its bytes (left out of ``repr``: they may be a photo)."""

    body: bytes = field(repr=False)


class ObjectStore:
    """Reads and writes of one bucket; see the module docstring for the rules it keeps."""

    #: ``list_objects_v2`` page size; the paginator follows continuation tokens past it.
    list_page_size: int = 1000

    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- reads -------------------------------------------------------------------------

    @overload
    def get(
        self,
        key: str,
        *,
        version_id: str | None = None,
        max_bytes: int | None = None,
        if_none_match: None = None,
    ) -> StoredObject: ...

    @overload
    def get(
        self,
        key: str,
        *,
        version_id: str | None = None,
        max_bytes: int | None = None,
        if_none_match: str,
    ) -> StoredObject | None: ...

    def get(
        self,
        key: str,
        *,
        version_id: str | None = None,
        max_bytes: int | None = None,
        if_none_match: str | None = None,
    ) -> StoredObject | None:
        """The object (the given version, else the current one) with its bytes.

        None only for a conditional GET (``if_none_match``, an ETag from an earlier read)
        whose object has not changed: nothing is downloaded then. Over ``max_bytes``:
        :class:`ObjectTooLargeError`, decided from ``ContentLength`` before the body is read.
        """
        if max_bytes is not None:
            check_positive(max_bytes, "max_bytes")
        args = self._args(key, version_id)
        if if_none_match:
            args["IfNoneMatch"] = if_none_match
        with aws_errors(f"reading {self.uri(key)}"):
            try:
                answer = self._s3.get_object(**args)
            except ClientError as exc:
                if if_none_match and error_code(exc) in _NOT_MODIFIED:
                    return None
                self._raise_if_missing(exc, key, version_id)
                raise
            body = answer["Body"]
            try:
                size = answer.get("ContentLength")
                if max_bytes is not None and size is not None and size > max_bytes:
                    raise ObjectTooLargeError(
                        f"{self.uri(key)} has {size} bytes, the limit is {max_bytes}"
                    )
                data = body.read() if max_bytes is None else body.read(max_bytes + 1)
            finally:
                body.close()
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(f"{self.uri(key)} has more than {max_bytes} bytes")
        return StoredObject(body=data, **self._info(key, answer, size=len(data)))

    def get_if_changed(self, key: str, etag: str | None) -> tuple[str, bytes | None]:
        """``(etag, bytes)``, or ``(etag, None)`` while the object still has ``etag``: the
        loader shape of :class:`~facegate.gallery.cache.GalleryCache`, so a warm function
        re-downloads a cached gallery only when it changed."""
        if etag:
            found = self.get(key, if_none_match=etag)
            if found is None:
                return etag, None
        else:
            found = self.get(key)
        return found.etag, found.body

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        """The object's size, ETag, version and content type, without its bytes."""
        with aws_errors(f"reading {self.uri(key)}"):
            try:
                answer = self._s3.head_object(**self._args(key, version_id))
            except ClientError as exc:
                self._raise_if_missing(exc, key, version_id)
                raise
        return ObjectInfo(**self._info(key, answer, size=int(answer["ContentLength"])))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    def get_range(self, key: str, start: int, end: int, *, version_id: str | None = None) -> bytes:
        """Bytes ``start`` to ``end`` of the object, both included (HTTP ``Range`` semantics;
        a range running past the end stops at it), e.g. a zip's central directory after a
        :meth:`head` gave the size. A range starting past the end is a
        :class:`ValidationError`."""
        check_index(start, "start")
        check_index(end, "end")
        if end < start:
            raise ValidationError(f"range end {end} is before its start {start}")
        args = {**self._args(key, version_id), "Range": f"bytes={start}-{end}"}
        with aws_errors(f"reading {self.uri(key)}"):
            try:
                answer = self._s3.get_object(**args)
            except ClientError as exc:
                if error_code(exc) in ("InvalidRange", "416"):
                    raise ValidationError(
                        f"bytes {start}-{end} are outside {self.uri(key)}"
                    ) from exc
                self._raise_if_missing(exc, key, version_id)
                raise
            body = answer["Body"]
            try:
                data: bytes = body.read()
                return data
            finally:
                body.close()

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted; pagination is followed to the end."""
        with aws_errors(f"listing {self.uri(prefix)}"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return sorted(keys)

    def versions(self, prefix: str) -> list[tuple[str, str]]:
        """``(key, version_id)`` of every version and delete marker under ``prefix`` (in an
        unversioned bucket each object has one, ``"null"``). The listing completes before
        anything is deleted from it, so pagination never walks a moving list."""
        with aws_errors(f"listing versions under {self.uri(prefix)}"):
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [
                (v["Key"], v["VersionId"])
                for page in pages
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]

    # -- writes ------------------------------------------------------------------------

    def put(self, key: str, body: bytes, *, content_type: str) -> ObjectInfo:
        """Write ``body`` at ``key``, encrypted, with ``content_type``; S3 replaces an object
        atomically, so a reader sees the previous bytes or the new ones, never a mix."""
        if not isinstance(content_type, str) or not content_type:
            raise ValidationError("every object is written with a content type")
        with aws_errors(f"writing {self.uri(key)}"):
            answer = self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ServerSideEncryption=SERVER_SIDE_ENCRYPTION,
            )
        return ObjectInfo(
            **self._info(key, {**answer, "ContentType": content_type}, size=len(body))
        )

    def delete(self, key: str) -> None:
        """Delete the current version (a delete marker in a versioned bucket); a missing
        key is no error, as in S3 itself."""
        with aws_errors(f"deleting {self.uri(key)}"):
            self._s3.delete_object(Bucket=self.bucket, Key=key)

    def delete_versions(self, targets: Sequence[tuple[str, str]]) -> None:
        """Delete these ``(key, version_id)`` pairs for good (erasing a person means every
        version, not a delete marker), 1000 per request."""
        for start in range(0, len(targets), _DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": k, "VersionId": v} for k, v in targets[start : start + _DELETE_BATCH]
            ]
            with aws_errors(f"deleting from {self.bucket}"):
                done = self._s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            errors = done.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"{len(errors)} objects not deleted from {self.bucket}",
                    detail=f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}",
                )

    # -- helpers -----------------------------------------------------------------------

    def _args(self, key: str, version_id: str | None) -> dict[str, Any]:
        if not isinstance(key, str) or not key:
            raise ValidationError("an object key must be a non-empty string", detail=repr(key))
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        return args

    def _raise_if_missing(self, exc: ClientError, key: str, version_id: str | None) -> None:
        """:class:`ObjectNotFoundError` if ``exc`` means the object (version) is missing;
        otherwise the caller re-raises ``exc`` for :func:`aws_errors` to turn into a
        :class:`StorageError`."""
        code = error_code(exc)
        if code in MISSING_CODES or (version_id and code in MISSING_VERSION_CODES):
            which = f" (version {version_id})" if version_id else ""
            raise ObjectNotFoundError(
                f"no such object: {self.uri(key)}{which}", detail=code
            ) from exc

    @staticmethod
    def _info(key: str, answer: Mapping[str, Any], *, size: int) -> dict[str, Any]:
        version = answer.get("VersionId")
        return {
            "key": key,
            "size": size,
            "etag": str(answer.get("ETag", "")),
            "version_id": None if version in (None, "null") else str(version),
            "content_type": answer.get("ContentType"),
        }
