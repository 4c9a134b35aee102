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

An object read in parts (a zip's central directory, then one chunk's members) is opened as
an :class:`ObjectReader`: ranged GETs of one version, never more than is read.

The stores above it (photos, galleries, re-embedding status) give a missing object their own
meaning: an unreadable photo, a gallery never built, nothing requested.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, overload

from botocore.exceptions import ClientError

from facegate.common import check_index, check_positive
from facegate.errors import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    ValidationError,
    WriteConflictError,
)
from facegate.storage.aws_errors import aws_errors, error_code

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
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
#: A GET ``IfMatch`` an ETag that the object no longer has: the version read is gone.
_REPLACED = frozenset({"412", "PreconditionFailed"})
#: A conditional delete that found the object rewritten, gone, or being written.
_NOT_DELETED = _REPLACED | {"404", "NoSuchKey", "ConditionalRequestConflict"}
#: The least an :class:`ObjectReader` fetches: a zip's end record with the longest comment
#: (a small central directory too), or a local header with the start of its data.
READ_AHEAD = 64 * 1024 + 22
#: ``DeleteObjects`` takes at most 1000 keys per call.
_DELETE_BATCH = 1000


@dataclass(frozen=True)
class ObjectRef:
    """One uploaded object version, as its notification names it.

    ``key`` is decoded (notifications URL-encode it). ``etag`` carries no quotes.
    ``uploaded_at`` is the notification's event time (ISO-8601 UTC), when the version was
    created: the rows embedded from it carry it (``source_at``), so an erasure after the
    upload drops them whenever they are built. None when the sender gave none.
    ``version_id`` is None in an unversioned bucket; the ``"null"`` version of a bucket whose
    versioning is suspended is None too, since it is overwritten in place like an
    unversioned object and only its ``etag`` tells two uploads apart.
    """

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int
    uploaded_at: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    """What S3 says about one object version, without its bytes.

    ``etag`` is as S3 sends it (quoted), ready to pass back as ``if_none_match``;
    ``version_id`` is None in an unversioned bucket and for the ``"null"`` version, as in
    :class:`ObjectRef`. ``metadata`` is the version's user metadata (``x-amz-meta-*``, names
    in lower case as S3 returns them), so a reader can tell our own rewrites from uploads.
    """

    key: str
    size: int
    etag: str
    version_id: str | None
    content_type: str | None
    #: Keyword-only so that :class:`StoredObject` keeps its positional ``body``; out of the
    #: hash, which a dict cannot take part in.
    metadata: Mapping[str, str] = field(default_factory=dict, kw_only=True, hash=False)


@dataclass(frozen=True)
class ObjectVersion:
    """One entry of a version listing: an object version or a delete marker.

    ``version_id`` is as listings spell it (``"null"`` for the unversioned version), ready for
    :meth:`ObjectStore.delete_versions`. ``last_modified`` is S3's (timezone-aware): when the
    version or marker was written, which is what tells a finished write from one whose writer
    may still be running.
    """

    key: str
    version_id: str
    last_modified: datetime
    delete_marker: bool


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

    def get_json(self, key: str, what: str) -> dict[str, Any] | None:
        """The JSON object at ``key`` (a job's or an erasure's state, a lineage); None when
        there is none. :class:`ValidationError` naming ``what`` for anything but an object:
        state that cannot be read must stop its job, not restart it from nothing."""
        try:
            doc = json.loads(self.get(key).body)
        except ObjectNotFoundError:
            return None
        except ValueError as exc:
            raise ValidationError(f"{what} cannot be read") from exc
        if not isinstance(doc, dict):
            raise ValidationError(f"{what} cannot be read")
        return doc

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
        a range running past the end stops at it). A range starting past the end is a
        :class:`ValidationError`. To read an object in many parts, :meth:`open` it."""
        check_index(start, "start")
        check_index(end, "end")
        if end < start:
            raise ValidationError(f"range end {end} is before its start {start}")
        return self._get_bytes(key, f"bytes={start}-{end}", version_id, None)[0]

    def open(
        self,
        key: str,
        *,
        version_id: str | None = None,
        etag: str | None = None,
        max_read: int | None = None,
    ) -> ObjectReader:
        """The version as a seekable file (:class:`ObjectReader`), its end fetched now. Pinned
        to ``version_id``, else ``etag``, else the first answer's ETag: a version deleted or
        replaced since is an :class:`ObjectNotFoundError`, never another upload's bytes."""
        return ObjectReader(self, key, version_id=version_id, etag=etag, max_read=max_read)

    def _get_bytes(
        self, key: str, byte_range: str, version_id: str | None, if_match: str | None
    ) -> tuple[bytes, Mapping[str, Any]]:
        """A ranged GET: the bytes S3 sent and its answer (``ContentRange``, ``ETag``)."""
        args = {**self._args(key, version_id), "Range": byte_range}
        if if_match:
            args["IfMatch"] = if_match
        with aws_errors(f"reading {self.uri(key)}"):
            try:
                answer = self._s3.get_object(**args)
            except ClientError as exc:
                code = error_code(exc)
                if code in ("InvalidRange", "416") and byte_range.startswith("bytes=-"):
                    return b"", {}  # a suffix range is unsatisfiable only for an empty object
                if code in ("InvalidRange", "416"):
                    raise ValidationError(f"{byte_range} is outside {self.uri(key)}") from exc
                if if_match and code in _REPLACED:
                    raise ObjectNotFoundError(
                        f"{self.uri(key)} was replaced since it was opened", detail=code
                    ) from exc
                self._raise_if_missing(exc, key, version_id)
                raise
            body = answer["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
        return data, answer

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

    def list_etags(self, prefix: str) -> dict[str, str]:
        """``key -> ETag`` of every object under ``prefix`` (one listing: S3 returns the
        ETags with the keys, so telling new or rewritten objects from known ones costs no
        request per object)."""
        with aws_errors(f"listing {self.uri(prefix)}"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}

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

    def iter_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        """Every version and delete marker under ``prefix``, one page at a time, in key order
        (a key's entries newest first): a sweep of a large prefix holds one page, not the
        whole listing.

        Unlike :meth:`versions`, the caller may delete while iterating, but only entries of
        keys it has already passed: S3 continues each page after the last entry of the page
        before, so destroying earlier keys never moves what is still to come.
        """
        pages = iter(
            self._s3.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
        )
        while True:
            # Only the request is S3's: the caller's own errors, raised at the yield, stay theirs.
            with aws_errors(f"listing versions under {self.uri(prefix)}"):
                page = next(pages, None)
            if page is None:
                return
            entries = [
                ObjectVersion(v["Key"], v["VersionId"], v["LastModified"], False)
                for v in page.get("Versions", [])
            ] + [
                ObjectVersion(m["Key"], m["VersionId"], m["LastModified"], True)
                for m in page.get("DeleteMarkers", [])
            ]
            # A page lists versions and markers apart: merged back into key order (stable, so
            # each key's entries keep S3's newest-first order within their kind).
            yield from sorted(entries, key=lambda e: e.key)

    # -- writes ------------------------------------------------------------------------

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> ObjectInfo:
        """Write ``body`` at ``key``, encrypted, with ``content_type`` (and user ``metadata``,
        string names and values); S3 replaces an object atomically, so a reader sees the
        previous bytes or the new ones, never a mix.

        Conditional (S3's conditional writes): ``if_match`` an ETag read before, only while
        the object still has it; ``if_none_match="*"`` only if there is no object yet.
        Otherwise :class:`WriteConflictError`, and nothing is written."""
        if not isinstance(content_type, str) or not content_type:
            raise ValidationError("every object is written with a content type")
        extra = dict(metadata or {})
        if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in extra.items()):
            raise ValidationError("object metadata names and values must be strings")
        conditions = {
            name: value
            for name, value in (("IfMatch", if_match), ("IfNoneMatch", if_none_match))
            if value is not None
        }
        with aws_errors(f"writing {self.uri(key)}"):
            try:
                answer = self._s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType=content_type,
                    ServerSideEncryption=SERVER_SIDE_ENCRYPTION,
                    Metadata=extra,
                    **conditions,  # type: ignore[arg-type]
                )
            except ClientError as exc:
                if conditions and error_code(exc) in _REPLACED | {"ConditionalRequestConflict"}:
                    raise WriteConflictError(
                        f"{self.uri(key)} changed while it was being rewritten"
                    ) from exc
                raise
        sent = {**answer, "ContentType": content_type, "Metadata": extra}
        return ObjectInfo(**self._info(key, sent, size=len(body)))

    def put_json(self, key: str, doc: Mapping[str, Any]) -> ObjectInfo:
        """Write ``doc`` at ``key`` as JSON (:meth:`get_json` reads it back)."""
        return self.put(key, json.dumps(doc).encode(), content_type=JSON_TYPE)

    def delete(self, key: str) -> None:
        """Delete the current version (a delete marker in a versioned bucket); a missing
        key is no error, as in S3 itself."""
        with aws_errors(f"deleting {self.uri(key)}"):
            self._s3.delete_object(Bucket=self.bucket, Key=key)

    def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete the current version only while it still has ``etag`` (S3's conditional
        delete; a delete marker in a versioned bucket); False, nothing deleted, when it has
        been rewritten or deleted since it was read."""
        with aws_errors(f"deleting {self.uri(key)}"):
            try:
                self._s3.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
            except ClientError as exc:
                if error_code(exc) in _NOT_DELETED:
                    return False
                raise
        return True

    def copy(self, key: str, to: str) -> ObjectInfo:
        """The current version of ``key`` copied, server-side, to ``to`` (content type and
        user metadata kept; encrypted like every object). A missing ``key`` is an
        :class:`ObjectNotFoundError`."""
        source = self._args(key, None)
        with aws_errors(f"copying {self.uri(key)}"):
            try:
                answer = self._s3.copy_object(
                    Bucket=self.bucket,
                    Key=self._args(to, None)["Key"],
                    CopySource={"Bucket": self.bucket, "Key": source["Key"]},
                    MetadataDirective="COPY",
                    ServerSideEncryption=SERVER_SIDE_ENCRYPTION,
                )
            except ClientError as exc:
                self._raise_if_missing(exc, key, None)
                raise
        return self.head(to, version_id=answer.get("VersionId"))

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
            "metadata": dict(answer.get("Metadata") or {}),
        }


class ObjectReader(io.RawIOBase):
    """One object version as a read-only seekable binary file, each fetch a ranged GET.

    What :mod:`zipfile` needs to plan an archive from its end and read single members: a
    function holds what it reads, never the whole object. A read the buffer misses fetches at
    least :data:`READ_AHEAD` bytes and keeps them (a zip's end record, directory and local
    headers are small reads close together); a bigger read is fetched as asked, not kept.
    ``max_read`` bounds one read (:class:`ObjectTooLargeError`, nothing fetched); ``fetched``
    and ``requests`` count what S3 sent. Made by :meth:`ObjectStore.open`.
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        *,
        version_id: str | None = None,
        etag: str | None = None,
        max_read: int | None = None,
    ) -> None:
        super().__init__()
        if max_read is not None:
            check_positive(max_read, "max_read")
        self._store, self.key, self.version_id, self._max_read = store, key, version_id, max_read
        self._if_match = None if version_id or not etag else f'"{etag.strip(chr(34))}"'
        self.fetched = self.requests = self._pos = 0
        tail, answer = self._fetch(f"bytes=-{READ_AHEAD}")
        total = str(answer.get("ContentRange") or "").rpartition("/")[2]
        self.size = int(total) if total.isdigit() else len(tail)
        self._start, self._buffer = self.size - len(tail), tail
        if not version_id and not self._if_match and answer.get("ETag"):
            self._if_match = str(answer["ETag"])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1, /) -> bytes:
        self._check_open()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        start, self._pos = self._pos, end
        held = self._start + len(self._buffer)
        if self._start <= start and end <= held:
            return self._buffer[start - self._start : end - self._start]
        if end - start >= READ_AHEAD:
            return self._fetch_span(start, end)
        self._buffer = self._fetch_span(start, min(self.size, start + READ_AHEAD))
        self._start = start
        return self._buffer[: end - start]

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed {self._store.uri(self.key)}")

    def _fetch_span(self, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (excluded) of the version, in one GET."""
        if self._max_read is not None and end - start > self._max_read:
            raise ObjectTooLargeError(
                f"a read of {end - start} bytes of {self._store.uri(self.key)}, "
                f"the limit is {self._max_read}"
            )
        data = self._fetch(f"bytes={start}-{end - 1}")[0]
        if len(data) != end - start:
            raise StorageError(f"{self._store.uri(self.key)} sent {len(data)} of {end - start}")
        return data

    def _fetch(self, byte_range: str) -> tuple[bytes, Mapping[str, Any]]:
        data, answer = self._store._get_bytes(self.key, byte_range, self.version_id, self._if_match)
        self.requests += 1
        self.fetched += len(data)
        return data, answer
