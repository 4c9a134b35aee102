"""Verification job queue messages: chunks of manifest rows and the aggregation request. Torch-free."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from facegate.batch.manifest import JobRow
from facegate.common import check_index, check_positive, compact_json, validate_id
from facegate.errors import ValidationError
from facegate.storage.jobs import MAX_JOB_CHUNKS

#: SQS refuses bodies over 256 KiB; keep room for the envelope and message attributes.
MAX_CHUNK_MESSAGE_BYTES = 240_000
CHUNK_MESSAGE_TYPE = "facegate.job_chunk"
AGGREGATE_MESSAGE_TYPE = "facegate.job_aggregate"
MESSAGE_VERSION = 1


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobChunk:
    """A slice of a job's valid rows, sent to the queue for one worker invocation.

    ``index`` counts from 0 to ``count - 1``; :meth:`JobStore.chunk_done` counts them.
    """

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

    def to_message(self) -> str:
        """The SQS body: compact ASCII JSON, rows as ``[row, key, gallery, mode, subject]``."""
        return compact_json(
            {
                "type": CHUNK_MESSAGE_TYPE,
                "version": MESSAGE_VERSION,
                "job_id": self.job_id,
                "index": self.index,
                "count": self.count,
                "rows": [_row_wire(r) for r in self.rows],
            }
        )

    @classmethod
    def from_message(cls, body: str) -> JobChunk:
        """Inverse of :meth:`to_message`, every row re-validated; :class:`ValidationError`
        for anything else (a poison message no retry will fix)."""
        doc = _message_doc(body, CHUNK_MESSAGE_TYPE)
        rows = doc.get("rows")
        if not isinstance(rows, list):
            raise ValidationError("job chunk message rows must be a list")
        try:
            return cls(
                job_id=doc["job_id"],
                index=doc["index"],
                count=doc["count"],
                rows=tuple(_row_from_wire(r) for r in rows),
            )
        except KeyError as exc:
            raise ValidationError("job chunk message is missing a field", detail=str(exc)) from exc


@dataclass(frozen=True)
class AggregateRequest:
    """Asks for the one aggregation of a job whose chunks are all done; safe to deliver twice."""

    job_id: str

    def __post_init__(self) -> None:
        validate_id(self.job_id, "job_id")

    def to_message(self) -> str:
        return compact_json(
            {"type": AGGREGATE_MESSAGE_TYPE, "version": MESSAGE_VERSION, "job_id": self.job_id}
        )

    @classmethod
    def from_message(cls, body: str) -> AggregateRequest:
        doc = _message_doc(body, AGGREGATE_MESSAGE_TYPE)
        if "job_id" not in doc:
            raise ValidationError("aggregate message is missing job_id")
        return cls(doc["job_id"])


def is_job_chunk_message(body: Any) -> bool:
    """Whether an SQS body is one of our job chunk messages (rather than an S3 notification)."""
    return _typed_doc(body, CHUNK_MESSAGE_TYPE) is not None


def is_aggregate_message(body: Any) -> bool:
    return _typed_doc(body, AGGREGATE_MESSAGE_TYPE) is not None


def plan_job_chunks(job_id: str, rows: Sequence[JobRow], chunk_size: int) -> list[JobChunk]:
    """Split the rows, in order, into chunks of at most ``chunk_size`` rows.

    A chunk is closed early when its message would pass :data:`MAX_CHUNK_MESSAGE_BYTES`. The
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
    groups = _pack(rows, chunk_size, _envelope_bytes(job_id))
    if len(groups) > MAX_JOB_CHUNKS:
        raise ValidationError(
            f"{len(groups)} chunks, more than the limit of {MAX_JOB_CHUNKS}: raise chunk_size"
        )
    return [
        JobChunk(job_id, index, len(groups), tuple(group)) for index, group in enumerate(groups)
    ]


def _pack(rows: Sequence[JobRow], chunk_size: int, envelope: int) -> list[list[JobRow]]:
    groups: list[list[JobRow]] = []
    current: list[JobRow] = []
    used = envelope
    for row in rows:
        cost = len(compact_json(_row_wire(row))) + 1
        if current and (len(current) >= chunk_size or used + cost > MAX_CHUNK_MESSAGE_BYTES):
            groups.append(current)
            current, used = [], envelope
        current.append(row)
        used += cost
    if current:
        groups.append(current)
    return groups


def _envelope_bytes(job_id: str) -> int:
    """A message's size without rows, for the largest index and count it can carry."""
    doc = {
        "type": CHUNK_MESSAGE_TYPE,
        "version": MESSAGE_VERSION,
        "job_id": job_id,
        "index": MAX_JOB_CHUNKS,
        "count": MAX_JOB_CHUNKS,
        "rows": [],
    }
    return len(compact_json(doc))


def _row_wire(row: JobRow) -> list[Any]:
    return [row.row, row.probe_key, row.gallery, row.mode, row.claimed_subject]


def _row_from_wire(value: Any) -> JobRow:
    if not isinstance(value, list) or len(value) != 5:
        raise ValidationError("job chunk rows must be [row, key, gallery, mode, subject] lists")
    row, key, gallery, mode, claimed = value
    return JobRow(row=row, probe_key=key, claimed_subject=claimed, gallery=gallery, mode=mode)


def _typed_doc(body: Any, message_type: str) -> dict[str, Any] | None:
    if not isinstance(body, str) or message_type not in body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("type") == message_type else None


def _message_doc(body: Any, message_type: str) -> dict[str, Any]:
    doc = _typed_doc(body, message_type)
    if doc is None or doc.get("version") != MESSAGE_VERSION:
        raise ValidationError(f"not a {message_type} message of a known version")
    return doc
