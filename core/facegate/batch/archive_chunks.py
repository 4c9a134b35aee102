"""Archive chunk messages: a large zip split into member ranges that invocations process in parallel. Torch-free."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from facegate.batch.archives import ArchivePlan
from facegate.common import check_positive, compact_json, validate_id
from facegate.errors import (
    ValidationError,
)
from facegate.storage.objects import ObjectRef

#: The ``type`` of our own chunk messages on the queue.
CHUNK_MESSAGE_TYPE = "facegate.archive_chunk"
CHUNK_MESSAGE_VERSION = 1
#: SQS refuses bodies over 256 KiB; keep room for the envelope and message attributes.
MAX_CHUNK_MESSAGE_BYTES = 240_000


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"{what} is not JSON", detail=text[:200]) from exc
    if not isinstance(doc, dict):
        raise ValidationError(f"{what} is not a JSON object", detail=text[:200])
    return doc


# --------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A slice of an archive's members, sent to the queue for one embedding invocation.

    ``index`` counts from 0 to ``count - 1``. The object version is pinned (``version_id``,
    else ``etag``), so a chunk never reads members of an archive replaced meanwhile.
    """

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    gallery: str
    members: tuple[tuple[str, str], ...]
    index: int
    count: int
    size: int = 0

    def __post_init__(self) -> None:
        validate_id(self.gallery, "gallery")
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
        return ObjectRef(self.bucket, self.key, self.version_id, self.etag, self.size)

    @property
    def member_range(self) -> str:
        """Names this chunk's members for idempotency: its position and a digest of them,
        so that re-planning with another chunk size can never match an old claim."""
        digest = hashlib.sha256(compact_json(self.members).encode("ascii")).hexdigest()
        return f"{self.index + 1}/{self.count}:{digest[:32]}"

    def to_message(self) -> str:
        """The SQS body: compact ASCII JSON (SQS refuses some control characters)."""
        return compact_json(
            {
                "type": CHUNK_MESSAGE_TYPE,
                "version": CHUNK_MESSAGE_VERSION,
                "bucket": self.bucket,
                "key": self.key,
                "version_id": self.version_id,
                "etag": self.etag,
                "size": self.size,
                "gallery": self.gallery,
                "index": self.index,
                "count": self.count,
                "members": [list(m) for m in self.members],
            }
        )

    @classmethod
    def from_message(cls, body: str) -> Chunk:
        """Inverse of :meth:`to_message`; :class:`ValidationError` for anything else."""
        doc = _json_object(body, "chunk message")
        if doc.get("type") != CHUNK_MESSAGE_TYPE or doc.get("version") != CHUNK_MESSAGE_VERSION:
            raise ValidationError("not a facegate chunk message of a known version")
        members = doc.get("members")
        if not isinstance(members, list) or not all(
            isinstance(m, list) and len(m) == 2 for m in members
        ):
            raise ValidationError("chunk message members must be [path, subject_id] pairs")
        try:
            return cls(
                bucket=doc["bucket"],
                key=doc["key"],
                version_id=_optional_str(doc.get("version_id")),
                etag=_optional_str(doc.get("etag")),
                gallery=doc["gallery"],
                members=tuple((m[0], m[1]) for m in members),
                index=doc["index"],
                count=doc["count"],
                size=doc.get("size", 0),
            )
        except (KeyError, TypeError) as exc:
            raise ValidationError("chunk message is missing a field", detail=str(exc)) from exc


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValidationError("chunk message version_id and etag must be strings or null")


def is_chunk_message(body: str) -> bool:
    """Whether an SQS body is one of our chunk messages rather than an S3 notification."""
    if not isinstance(body, str) or CHUNK_MESSAGE_TYPE not in body:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("type") == CHUNK_MESSAGE_TYPE


def plan_chunks(ref: ObjectRef, gallery: str, plan: ArchivePlan, chunk_size: int) -> list[Chunk]:
    """Split the plan's members, in order, into chunks of at most ``chunk_size`` members.

    A chunk is also closed early when its message would pass
    :data:`MAX_CHUNK_MESSAGE_BYTES` (long unicode paths). The split depends only on the plan
    and ``chunk_size``, so a redelivered archive yields the same chunks. No members, no chunks
    (the caller still records the plan's rejects).
    """
    check_positive(chunk_size, "chunk_size")
    validate_id(gallery, "gallery")
    groups = _pack(plan.members, chunk_size, _envelope_bytes(ref, gallery))
    return [
        Chunk(
            bucket=ref.bucket,
            key=ref.key,
            version_id=ref.version_id,
            etag=ref.etag,
            gallery=gallery,
            members=tuple(group),
            index=index,
            count=len(groups),
            size=ref.size,
        )
        for index, group in enumerate(groups)
    ]


def _envelope_bytes(ref: ObjectRef, gallery: str) -> int:
    """A message's size without members, with room for any index and count."""
    probe = Chunk(ref.bucket, ref.key, ref.version_id, ref.etag, gallery, (("x", "x"),), 0, 1)
    return len(probe.to_message()) + 64


def _pack(
    members: Sequence[tuple[str, str]], chunk_size: int, envelope: int
) -> list[list[tuple[str, str]]]:
    groups: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    used = envelope
    for member in members:
        cost = len(compact_json(list(member))) + 1
        if current and (len(current) >= chunk_size or used + cost > MAX_CHUNK_MESSAGE_BYTES):
            groups.append(current)
            current, used = [], envelope
        if used + cost > MAX_CHUNK_MESSAGE_BYTES:
            raise ValidationError(f"archive member path too long for a queue message: {member[0]}")
        current.append(member)
        used += cost
    if current:
        groups.append(current)
    return groups
