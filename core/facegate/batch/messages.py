"""Queue messages of the batch jobs: one typed JSON envelope, one size-bounded packer. Torch-free.

Every message FaceGate itself sends is compact ASCII JSON ``{"type", "version", ...}``:
archive chunks (:class:`ArchiveChunk`, ingest queue), backfill chunks
(:class:`facegate.batch.backfill.BackfillChunk`, ingest queue), job chunks (:class:`JobChunk`) and
re-embedding requests (:class:`facegate.batch.reembed.ReembedRequest`, jobs queue), erasure
requests and their chunks (:mod:`facegate.batch.erasure_job`, jobs queue), and
aggregation requests (:class:`AggregateRequest`, aggregate queue). A body without ``type`` is
not ours (an S3 notification: :mod:`facegate.batch.events`). A type or version this code does
not know, or a message that does not validate, is a :class:`ValidationError`: a poison
message that no retry will fix. A format change bumps the version and decodes both.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

from facegate.batch.archives import ArchivePlan
from facegate.batch.manifest import JobRow
from facegate.common import check_index, check_positive, compact_json, parse_instant, validate_id
from facegate.errors import ValidationError
from facegate.storage.jobs import MAX_JOB_CHUNKS
from facegate.storage.objects import ObjectRef

#: SQS refuses bodies over 256 KiB; keep room for message attributes.
MAX_MESSAGE_BYTES = 240_000
#: Room in a packed message for the digits of any index and count.
_ENVELOPE_SLACK = 64

ARCHIVE_CHUNK = "facegate.archive_chunk"
JOB_CHUNK = "facegate.job_chunk"
JOB_AGGREGATE = "facegate.job_aggregate"
REEMBED = "facegate.reembed"
ERASURE = "facegate.erasure"
ERASURE_CHUNK = "facegate.erasure_chunk"
COLLECTION_DELETION = "facegate.collection_deletion"
BACKFILL_CHUNK = "facegate.backfill_chunk"
BACKFILL_PAGE = "facegate.backfill_page"

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# The envelope
# --------------------------------------------------------------------------------------


def parse_body(body: Any, what: str = "the message body") -> dict[str, Any]:
    """A queue message's body as a JSON object; :class:`ValidationError` for anything else."""
    if not isinstance(body, str):
        raise ValidationError(f"{what} must be a string")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ValidationError(f"{what} is not JSON", detail=body[:200]) from exc
    if not isinstance(doc, dict):
        raise ValidationError(f"{what} is not a JSON object", detail=body[:200])
    return doc


def message_type(doc: Mapping[str, Any]) -> str | None:
    """The envelope's ``type``; None when the document has none (it is not one of ours)."""
    kind = doc.get("type")
    if kind is None:
        return None
    if not isinstance(kind, str):
        raise ValidationError("a message's type must be a string")
    return kind


def encode(kind: str, version: int, fields: Mapping[str, Any]) -> str:
    """The SQS body: compact ASCII JSON (SQS refuses some control characters), type first."""
    return compact_json({"type": kind, "version": version, **fields})


def decode(body: str | Mapping[str, Any], kind: str, versions: Sequence[int]) -> dict[str, Any]:
    """The fields of a ``kind`` message of one of ``versions``; :class:`ValidationError` else."""
    doc = dict(body) if isinstance(body, Mapping) else parse_body(body)
    if message_type(doc) != kind or doc.get("version") not in versions:
        raise ValidationError(f"not a {kind} message of a known version")
    return doc


class Message(ABC):
    """A typed message: ``to_message`` and ``from_message`` written once, for every kind."""

    MESSAGE_TYPE: ClassVar[str]
    MESSAGE_VERSION: ClassVar[int] = 1

    @abstractmethod
    def fields(self) -> dict[str, Any]:
        """The message's fields on the wire, without type and version."""

    @classmethod
    @abstractmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`fields`; may raise ``KeyError``/``TypeError`` on missing fields."""

    def to_message(self) -> str:
        return encode(self.MESSAGE_TYPE, self.MESSAGE_VERSION, self.fields())

    @classmethod
    def from_message(cls, body: str | Mapping[str, Any]) -> Self:
        """The message a body (or its parsed document) carries, validated again."""
        doc = decode(body, cls.MESSAGE_TYPE, (cls.MESSAGE_VERSION,))
        try:
            return cls.from_fields(doc)
        except (KeyError, TypeError) as exc:
            raise ValidationError(
                f"{cls.MESSAGE_TYPE} message is missing a field", detail=str(exc)
            ) from exc


def pack(
    items: Sequence[T],
    chunk_size: int,
    *,
    envelope: int,
    cost: Callable[[T], int],
    limit: int | None = None,
) -> list[list[T]]:
    """Split ``items``, in order, into groups of at most ``chunk_size`` whose message stays
    within ``limit`` bytes (default :data:`MAX_MESSAGE_BYTES`): ``envelope`` is the message
    without items, ``cost`` an item's bytes. Depends only on its arguments, so planning twice
    gives the same groups. An item that cannot fit even alone is a :class:`ValidationError`.
    """
    check_positive(chunk_size, "chunk_size")
    limit = MAX_MESSAGE_BYTES if limit is None else limit
    groups: list[list[T]] = []
    current: list[T] = []
    used = envelope
    for item in items:
        size = cost(item)
        if current and (len(current) >= chunk_size or used + size > limit):
            groups.append(current)
            current, used = [], envelope
        if used + size > limit:
            raise ValidationError("an item is too long for a queue message", detail=repr(item))
        current.append(item)
        used += size
    if current:
        groups.append(current)
    return groups


def envelope_bytes(kind: str, version: int, fields: Mapping[str, Any]) -> int:
    """The bytes of a message of ``kind`` with ``fields`` and no items, plus room for the
    digits of any index and count (:func:`pack`'s ``envelope``)."""
    return len(encode(kind, version, fields)) + _ENVELOPE_SLACK


def optional_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValidationError(f"{what} must be a string or null")


# --------------------------------------------------------------------------------------
# Archive chunks (ingest queue)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveChunk(Message):
    """A slice of an archive's members, sent to the queue for one embedding invocation.

    ``index`` counts from 0 to ``count - 1``. The object version is pinned (``version_id``,
    else ``etag``), so a chunk never reads members of an archive replaced meanwhile.
    """

    MESSAGE_TYPE: ClassVar[str] = ARCHIVE_CHUNK

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    gallery: str
    members: tuple[tuple[str, str], ...]
    index: int
    count: int
    size: int = 0
    #: The archive's upload time (its notification's event time), which its rows carry.
    uploaded_at: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.gallery, "gallery")
        if self.uploaded_at is not None:
            parse_instant(self.uploaded_at, "a chunk's uploaded_at")
        if not isinstance(self.bucket, str) or not self.bucket or not isinstance(self.key, str):
            raise ValidationError("a chunk needs a bucket and a key")
        numbers = (self.index, self.count, self.size)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers):
            raise ValidationError("chunk index, count and size must be ints")
        if not 0 <= self.index < self.count or self.size < 0:
            raise ValidationError(f"chunk index {self.index} out of range for {self.count}")
        if not self.members:
            raise ValidationError("a chunk needs at least one member")
        for member in self.members:
            if (
                not isinstance(member, tuple)
                or len(member) != 2
                or not isinstance(member[0], str)
                or not member[0]
            ):
                raise ValidationError("chunk members must be (path, subject_id) pairs")
            validate_id(member[1])

    @property
    def ref(self) -> ObjectRef:
        """The archive version this chunk reads, for :meth:`IngestLedger.source_id`."""
        return ObjectRef(
            self.bucket, self.key, self.version_id, self.etag, self.size, self.uploaded_at
        )

    @property
    def member_range(self) -> str:
        """Names this chunk's members for idempotency: its position and a digest of them,
        so that re-planning with another chunk size can never match an old claim."""
        digest = hashlib.sha256(compact_json(self.members).encode("ascii")).hexdigest()
        return f"{self.index + 1}/{self.count}:{digest[:32]}"

    def fields(self) -> dict[str, Any]:
        return {
            **_archive_head(self.ref, self.gallery),
            "index": self.index,
            "count": self.count,
            "members": [list(m) for m in self.members],
        }

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        members = doc.get("members")
        if not isinstance(members, list) or not all(
            isinstance(m, list) and len(m) == 2 for m in members
        ):
            raise ValidationError("chunk message members must be [path, subject_id] pairs")
        return cls(
            bucket=doc["bucket"],
            key=doc["key"],
            version_id=optional_str(doc.get("version_id"), "a chunk's version_id"),
            etag=optional_str(doc.get("etag"), "a chunk's etag"),
            gallery=doc["gallery"],
            members=tuple((m[0], m[1]) for m in members),
            index=doc["index"],
            count=doc["count"],
            size=doc.get("size", 0),
            uploaded_at=optional_str(doc.get("uploaded_at"), "a chunk's uploaded_at"),
        )


def _archive_head(ref: ObjectRef, gallery: str) -> dict[str, Any]:
    """The chunk's archive fields; ``uploaded_at`` only when known, so that a chunk of version 1
    (which had none) encodes as it did."""
    head: dict[str, Any] = {
        "bucket": ref.bucket,
        "key": ref.key,
        "version_id": ref.version_id,
        "etag": ref.etag,
        "size": ref.size,
        "gallery": gallery,
    }
    if ref.uploaded_at is not None:
        head["uploaded_at"] = ref.uploaded_at
    return head


def plan_archive_chunks(
    ref: ObjectRef, gallery: str, plan: ArchivePlan, chunk_size: int
) -> list[ArchiveChunk]:
    """Split the plan's members, in order, into chunks of at most ``chunk_size`` members.

    A chunk is also closed early when its message would pass :data:`MAX_MESSAGE_BYTES`
    (long unicode paths); a member path too long for any message is a
    :class:`ValidationError`. No members, no chunks (the caller still records the plan's
    rejects).
    """
    check_positive(chunk_size, "chunk_size")
    validate_id(gallery, "gallery")
    head = {**_archive_head(ref, gallery), "index": 0, "count": 1, "members": []}
    groups = pack(
        plan.members,
        chunk_size,
        envelope=envelope_bytes(ARCHIVE_CHUNK, ArchiveChunk.MESSAGE_VERSION, head),
        cost=lambda member: len(compact_json(list(member))) + 1,
    )
    return [
        ArchiveChunk(
            bucket=ref.bucket,
            key=ref.key,
            version_id=ref.version_id,
            etag=ref.etag,
            gallery=gallery,
            members=tuple(group),
            index=index,
            count=len(groups),
            size=ref.size,
            uploaded_at=ref.uploaded_at,
        )
        for index, group in enumerate(groups)
    ]


# --------------------------------------------------------------------------------------
# Verification jobs (jobs and aggregate queues)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobChunk(Message):
    """A slice of a job's valid rows, sent to the queue for one worker invocation.

    ``index`` counts from 0 to ``count - 1``; :meth:`JobStore.chunk_done` counts them. On the
    wire a row is ``[row, key, gallery, mode, subject]``.
    """

    MESSAGE_TYPE: ClassVar[str] = JOB_CHUNK

    job_id: str
    index: int
    count: int
    rows: tuple[JobRow, ...]

    def __post_init__(self) -> None:
        validate_id(self.job_id, "job_id")
        check_index(self.index, "chunk index")
        check_positive(self.count, "chunk count")
        if self.index >= self.count:
            raise ValidationError(f"chunk index {self.index} out of range for {self.count}")
        if not isinstance(self.rows, tuple) or not self.rows:
            raise ValidationError("a job chunk needs a non-empty tuple of rows")
        if not all(isinstance(r, JobRow) for r in self.rows):
            raise ValidationError("job chunk rows must be JobRow values")

    def fields(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "index": self.index,
            "count": self.count,
            "rows": [_row_wire(r) for r in self.rows],
        }

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        rows = doc.get("rows")
        if not isinstance(rows, list):
            raise ValidationError("job chunk message rows must be a list")
        return cls(
            job_id=doc["job_id"],
            index=doc["index"],
            count=doc["count"],
            rows=tuple(_row_from_wire(r) for r in rows),
        )


@dataclass(frozen=True)
class AggregateRequest(Message):
    """Asks for the one aggregation of a job whose chunks are all done; safe to deliver twice."""

    MESSAGE_TYPE: ClassVar[str] = JOB_AGGREGATE

    job_id: str

    def __post_init__(self) -> None:
        validate_id(self.job_id, "job_id")

    def fields(self) -> dict[str, Any]:
        return {"job_id": self.job_id}

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(doc["job_id"])


def plan_job_chunks(job_id: str, rows: Sequence[JobRow], chunk_size: int) -> list[JobChunk]:
    """Split the rows, in order, into chunks of at most ``chunk_size`` rows.

    A chunk is closed early when its message would pass :data:`MAX_MESSAGE_BYTES`. The
    split depends only on the rows and ``chunk_size``, so planning twice gives the same
    chunks. No rows, no chunks: the caller goes straight to aggregation. More than
    :data:`MAX_JOB_CHUNKS` chunks is a :class:`ValidationError` (raise ``chunk_size``).
    """
    validate_id(job_id, "job_id")
    check_positive(chunk_size, "chunk_size")
    if not all(isinstance(r, JobRow) for r in rows):
        raise ValidationError("rows must be JobRow values")
    if len({r.row for r in rows}) != len(rows):
        raise ValidationError("a job's rows must have distinct row numbers")
    head = {"job_id": job_id, "index": 0, "count": 1, "rows": []}
    groups = pack(
        rows,
        chunk_size,
        envelope=envelope_bytes(JOB_CHUNK, JobChunk.MESSAGE_VERSION, head),
        cost=lambda row: len(compact_json(_row_wire(row))) + 1,
    )
    if len(groups) > MAX_JOB_CHUNKS:
        raise ValidationError(
            f"{len(groups)} chunks, more than the limit of {MAX_JOB_CHUNKS}: raise chunk_size"
        )
    return [
        JobChunk(job_id, index, len(groups), tuple(group)) for index, group in enumerate(groups)
    ]


def _row_wire(row: JobRow) -> list[Any]:
    return [row.row, row.probe_key, row.gallery, row.mode, row.claimed_subject]


def _row_from_wire(value: Any) -> JobRow:
    if not isinstance(value, list) or len(value) != 5:
        raise ValidationError("job chunk rows must be [row, key, gallery, mode, subject] lists")
    row, key, gallery, mode, claimed = value
    return JobRow(row=row, probe_key=key, claimed_subject=claimed, gallery=gallery, mode=mode)
