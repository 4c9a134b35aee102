"""Backfill: photos already in the photo bucket, which no notification announced, embedded
into a gallery by the same fan-out as uploads. Torch-free.

``facegate backfill s3://<bucket>/<prefix> --gallery G`` (:func:`backfill`) lists the prefix
a page at a time (the current version of each object: ``ListObjectVersions``, so that a
photo's ledger claim is the one its notification would have made) and sends each page to
the ingest queue as :class:`BackfillChunk` messages of at most ``chunk_size`` photos. The
embedding function takes them as it takes notifications (``EmbedJob``): each photo is
claimed in the ingest ledger first, so running a backfill twice, or over photos whose
uploads were embedded already, adds no rows; every photo becomes a row or a reject with its
reason. SQS and Lambda's concurrency do the scaling; nothing here waits for the embedding.

The layout under the prefix is the upload layout's: ``<prefix><subject_id>/<photo>``. Any
other object (loose beside the subject folders, nested deeper, a bad subject id) is a reject
row of the gallery, so that nothing the user meant as a photo vanishes silently; hidden and
system files and folder markers are skipped, as uploads skip them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from facegate.batch.messages import (
    BACKFILL_CHUNK,
    BACKFILL_PAGE,
    Message,
    envelope_bytes,
    optional_str,
    pack,
)
from facegate.common import check_positive, compact_json, iso_micros, parse_instant, validate_id
from facegate.errors import ValidationError
from facegate.storage.aws_errors import aws_errors
from facegate.storage.keys import InvalidUpload, PhotoUpload, Upload, is_system_name
from facegate.storage.objects import ObjectRef
from facegate.storage.queues import send_messages

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListObjectVersionsRequestTypeDef
    from mypy_boto3_sqs import SQSClient

#: One listed object: key, version id (None when unversioned), etag (unquoted), size, and
#: its last-modified time (ISO-8601 UTC), which its rows carry as ``source_at``.
Listed = tuple[str, str | None, str | None, int, str | None]


@dataclass(frozen=True)
class BackfillChunk(Message):
    """Photos of one listing page, for one embedding invocation."""

    MESSAGE_TYPE: ClassVar[str] = BACKFILL_CHUNK

    bucket: str
    prefix: str
    gallery: str
    objects: tuple[Listed, ...]

    def __post_init__(self) -> None:
        validate_id(self.gallery, "gallery")
        if not isinstance(self.bucket, str) or not self.bucket:
            raise ValidationError("a backfill chunk needs a bucket")
        check_prefix(self.prefix)
        if not self.objects:
            raise ValidationError("a backfill chunk needs at least one object")
        for key, version_id, etag, size, modified in self.objects:
            if not isinstance(key, str) or not key.startswith(self.prefix):
                raise ValidationError("a backfill chunk's keys must be under its prefix")
            optional_str(version_id, "a backfilled object's version_id")
            optional_str(etag, "a backfilled object's etag")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValidationError("a backfilled object's size must be an int >= 0")
            if modified is not None:
                parse_instant(modified, "a backfilled object's last_modified")

    def refs(self) -> list[ObjectRef]:
        """Each object version, as its notification would have named it."""
        return [ObjectRef(self.bucket, k, v, e, s, m) for k, v, e, s, m in self.objects]

    def upload(self, key: str) -> Upload:
        """What ``key`` is under the prefix: a photo of a subject, or an invalid upload."""
        return backfill_upload(self.prefix, self.gallery, key)

    def fields(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "gallery": self.gallery,
            "objects": [list(o) for o in self.objects],
        }

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        objects = doc.get("objects")
        if not isinstance(objects, list) or not all(
            isinstance(o, list) and len(o) == 5 for o in objects
        ):
            raise ValidationError("backfill objects must be [key, version, etag, size, time]")
        return cls(
            bucket=doc["bucket"],
            prefix=doc["prefix"],
            gallery=doc["gallery"],
            objects=tuple((o[0], o[1], o[2], o[3], o[4]) for o in objects),
        )


def check_prefix(prefix: Any) -> str:
    """A prefix is empty (the whole bucket) or a folder: it ends with ``/``."""
    if not isinstance(prefix, str) or (prefix and not prefix.endswith("/")):
        raise ValidationError("a backfill prefix is a folder: it ends with '/'")
    return prefix


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> ``(bucket, "prefix/")``; a prefix without its trailing
    slash gets one (a backfill reads folders)."""
    if not url.startswith("s3://"):
        raise ValidationError("backfill reads an s3://bucket/prefix/ URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValidationError("backfill reads an s3://bucket/prefix/ URL")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def backfill_upload(prefix: str, gallery: str, key: str) -> Upload:
    """``<prefix><subject_id>/<photo>`` is a photo of that subject; anything else under the
    prefix is an :class:`InvalidUpload` of the gallery, with its reason."""
    parts = key[len(prefix) :].split("/")
    if len(parts) != 2 or not all(parts):
        return InvalidUpload(
            key,
            ValidationError(f"backfilled photos go in {prefix}<subject_id>/<photo>"),
            gallery,
        )
    try:
        subject_id = validate_id(parts[0])
    except ValidationError as exc:
        return InvalidUpload(key, exc, gallery)
    return PhotoUpload(gallery, subject_id, parts[1])


def _skipped(prefix: str, key: str) -> bool:
    """Folder markers and hidden or system files: never photos, never rejects."""
    return key.endswith("/") or any(is_system_name(p) for p in key[len(prefix) :].split("/"))


def _current(prefix: str, versions: list[Any]) -> list[Listed]:
    """The current versions of a listing page's photos (delete markers, older versions,
    folder markers and system files left out)."""
    listed: list[Listed] = []
    for v in versions:
        key = v["Key"]
        if not v.get("IsLatest") or _skipped(prefix, key):
            continue
        version = v.get("VersionId")
        listed.append(
            (
                key,
                None if version in (None, "null") else version,
                str(v.get("ETag", "")).strip('"') or None,
                int(v.get("Size", 0)),
                iso_micros(v["LastModified"]) if "LastModified" in v else None,
            )
        )
    return listed


def list_pages(s3: S3Client, bucket: str, prefix: str) -> Iterator[list[Listed]]:
    """The prefix's current object versions, a listing page at a time."""
    with aws_errors(f"listing s3://{bucket}/{prefix}"):
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            yield _current(prefix, page.get("Versions", []))


@dataclass(frozen=True)
class BackfillPage(Message):
    """One listing page still to read, for a backfill the embedding function drives itself
    (``POST /galleries/{g}/backfill``): taking it lists that page, queues its chunks and then
    the page after it, so no invocation lists more than one page and the API answers at once.
    A retry of the message lists the same page again: its chunks are claimed in the ledger,
    so nothing is embedded twice."""

    MESSAGE_TYPE: ClassVar[str] = BACKFILL_PAGE

    bucket: str
    prefix: str
    gallery: str
    chunk_size: int
    key_marker: str | None = None
    version_marker: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.gallery, "gallery")
        if not isinstance(self.bucket, str) or not self.bucket:
            raise ValidationError("a backfill page needs a bucket")
        check_prefix(self.prefix)
        check_positive(self.chunk_size, "a backfill page's chunk_size")
        optional_str(self.key_marker, "a backfill page's key_marker")
        optional_str(self.version_marker, "a backfill page's version_marker")

    def fields(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "gallery": self.gallery,
            "chunk_size": self.chunk_size,
            "key_marker": self.key_marker,
            "version_marker": self.version_marker,
        }

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(
            bucket=doc["bucket"],
            prefix=doc["prefix"],
            gallery=doc["gallery"],
            chunk_size=doc["chunk_size"],
            key_marker=doc.get("key_marker"),
            version_marker=doc.get("version_marker"),
        )


def _send_chunks(
    sqs: SQSClient,
    queue_url: str | None,
    bucket: str,
    prefix: str,
    gallery: str,
    page: list[Listed],
    chunk_size: int,
) -> int:
    """Queue one page's photos as chunk messages; returns how many were sent."""
    head = {"bucket": bucket, "prefix": prefix, "gallery": gallery, "objects": []}
    envelope = envelope_bytes(BACKFILL_CHUNK, BackfillChunk.MESSAGE_VERSION, head)
    groups = pack(page, chunk_size, envelope=envelope, cost=lambda o: len(compact_json(o)) + 1)
    bodies = [BackfillChunk(bucket, prefix, gallery, tuple(group)).to_message() for group in groups]
    send_messages(sqs, queue_url, bodies, "backfill chunks")
    return len(bodies)


@dataclass(frozen=True)
class BackfillReport:
    """What one backfill queued: objects (photos or would-be photos) and messages."""

    objects: int
    chunks: int
    pages: int

    def to_dict(self) -> dict[str, int]:
        return {"objects": self.objects, "chunks": self.chunks, "pages": self.pages}


def _check_bucket(request: BackfillPage, photo_bucket: str) -> None:
    if request.bucket != photo_bucket:
        raise ValidationError(
            f"backfill reads the deployment's photo bucket ({photo_bucket}); "
            "copy the photos there first (e.g. 'aws s3 sync')"
        )


def backfill(
    s3: S3Client,
    sqs: SQSClient,
    queue_url: str | None,
    request: BackfillPage,
    *,
    photo_bucket: str,
) -> BackfillReport:
    """Queue every photo under the request's prefix, page by page, here (``facegate
    backfill``: the caller waits for the listing and gets its counts).

    Only the deployment's photo bucket: the embedding function may read nothing else."""
    _check_bucket(request, photo_bucket)
    bucket, prefix, gallery = request.bucket, request.prefix, request.gallery
    objects = chunks = pages = 0
    for page in list_pages(s3, bucket, prefix):
        pages += 1
        chunks += _send_chunks(sqs, queue_url, bucket, prefix, gallery, page, request.chunk_size)
        objects += len(page)
    return BackfillReport(objects=objects, chunks=chunks, pages=pages)


def start_backfill(
    sqs: SQSClient, queue_url: str | None, first: BackfillPage, *, photo_bucket: str
) -> BackfillPage:
    """Queue the first page of a backfill the embedding function lists (``POST
    /galleries/{g}/backfill``); returns it. Checked before anything is sent."""
    _check_bucket(first, photo_bucket)
    send_messages(sqs, queue_url, [first.to_message()], "the backfill's first page")
    return first


def follow_page(
    s3: S3Client, sqs: SQSClient, queue_url: str | None, page: BackfillPage
) -> BackfillReport:
    """List ``page`` (at most 1,000 versions), queue its chunks, then the next page if the
    listing goes on: chunks first, so a failure in between is retried from this page."""
    request: ListObjectVersionsRequestTypeDef = {"Bucket": page.bucket, "Prefix": page.prefix}
    if page.key_marker is not None:
        request["KeyMarker"] = page.key_marker
    if page.version_marker is not None:
        request["VersionIdMarker"] = page.version_marker
    with aws_errors(f"listing s3://{page.bucket}/{page.prefix}"):
        listing = s3.list_object_versions(**request)
    listed = _current(page.prefix, listing.get("Versions", []))
    chunks = _send_chunks(
        sqs, queue_url, page.bucket, page.prefix, page.gallery, listed, page.chunk_size
    )
    if listing.get("IsTruncated"):
        after = BackfillPage(
            page.bucket,
            page.prefix,
            page.gallery,
            page.chunk_size,
            key_marker=listing.get("NextKeyMarker"),
            version_marker=listing.get("NextVersionIdMarker"),
        )
        send_messages(sqs, queue_url, [after.to_message()], "the backfill's next page")
    return BackfillReport(objects=len(listed), chunks=chunks, pages=1)


__all__ = [
    "BackfillChunk",
    "BackfillPage",
    "BackfillReport",
    "backfill",
    "backfill_upload",
    "check_prefix",
    "follow_page",
    "list_pages",
    "parse_s3_url",
    "start_backfill",
]
