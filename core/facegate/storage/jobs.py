"""Verification job state on DynamoDB: one item per job, updated per chunk. Torch-free."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from facegate.common import check_index, parse_instant, utc_now, validate_id
from facegate.errors import UnknownJobError, ValidationError
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import TTL_ATTRIBUTE, expires_at, from_attributes, to_attributes

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: ``done_chunks`` is one DynamoDB string set in a 400 KB item: 10 000 indexes take ~60 KB.
MAX_JOB_CHUNKS = 10_000
MAX_REASON_CHARS = 1024

#: Job states: ``running`` from creation until aggregation finishes or the job fails.
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED_STATUS = "failed"
_JOB_PK = "JOB#"
_META_SK = "META"


# --------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobStatus:
    """What ``GET /jobs/{job_id}`` and ``facegate jobs watch`` show.

    ``status`` is ``running``, ``succeeded`` or ``failed`` (with ``reason``); ``rows``
    counts every manifest row and ``failed_rows`` those refused before any work. The result
    keys and ``counts`` (by decision) are set once the job succeeded.
    """

    job_id: str
    status: str
    rows: int
    chunks: int
    chunks_done: int
    failed_rows: int
    created_at: str
    updated_at: str
    results_key: str | None = None
    summary_key: str | None = None
    counts: dict[str, int] | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobStore:
    """Job status in the single table: one item per job, ``pk=JOB#<job_id>``, ``sk=META``.

    The items carry neither ``kind`` nor ``subject_id``, so they stay out of the ``subjects``
    index and out of every subject query. Every write is one conditional ``UpdateItem`` or
    ``PutItem``, so concurrent chunk workers never need a lock.

    With ``retention_days`` a job's item gets a TTL that many days after its creation, as its
    manifest, probes and results in the bucket expire that many days after they were written
    (``JobsRetentionDays``): a status must not outlive the results it points to by long, nor
    keep the job's existence for ever.
    """

    def __init__(
        self, client: DynamoDBClient, table: str, retention_days: int | None = None
    ) -> None:
        self._db = client
        self.table = table
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        return cls(
            aws_client("dynamodb", settings), settings.table, settings.jobs_retention_days or None
        )

    @staticmethod
    def _key(job_id: str) -> dict[str, Any]:
        return to_attributes({"pk": _JOB_PK + validate_id(job_id, "job_id"), "sk": _META_SK})

    def create(
        self,
        job_id: str,
        rows: int,
        chunks: int,
        failed_rows: int,
        galleries: Iterable[str] = (),
    ) -> bool:
        """Register a running job; False if it already exists (a duplicate notification).

        ``rows`` is every manifest row, ``failed_rows`` those refused by the manifest, and
        ``chunks`` the chunk messages the valid rows went out in (0 only when none is valid).
        ``galleries`` are those its rows verify against (:meth:`running_on` reads them).
        """
        names = {validate_id(g, "gallery") for g in galleries}
        _check_counts(rows, chunks, failed_rows)
        now = utc_now()
        item = {
            **self._key(job_id),
            **to_attributes(
                {
                    "job_id": job_id,
                    "status": RUNNING,
                    "rows": rows,
                    "chunks": chunks,
                    "failed_rows": failed_rows,
                    "created_at": now,
                    "updated_at": now,
                    "galleries": names or None,
                    TTL_ATTRIBUTE: expires_at(self.retention_days, time.time()),
                }
            ),
        }
        with aws_errors(f"creating job {job_id}"):
            try:
                self._db.put_item(
                    TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                return False
        return True

    def chunk_done(self, job_id: str, index: int) -> tuple[int, int]:
        """Record that chunk ``index`` finished; return ``(chunks done, chunks in all)``.

        The index is added to a string set, so a retried chunk is counted once, and the
        update is atomic, so of two chunks finishing together exactly one sees the last
        count. A redelivered chunk after the last one sees ``done == total`` again: the
        aggregation it then requests rewrites the same results, so it costs time, not
        correctness. :class:`UnknownJobError`, or :class:`ValidationError` for an index
        outside the job's chunks.
        """
        check_index(index, "chunk index")
        with aws_errors(f"recording chunk {index} of job {job_id}"):
            try:
                done = self._db.update_item(
                    TableName=self.table,
                    Key=self._key(job_id),
                    UpdateExpression="ADD #done :index SET #updated = :now",
                    ConditionExpression="attribute_exists(pk) AND #chunks > :index_n",
                    ExpressionAttributeNames={
                        "#done": "done_chunks",
                        "#updated": "updated_at",
                        "#chunks": "chunks",
                    },
                    ExpressionAttributeValues=to_attributes(
                        {":index": {str(index)}, ":index_n": index, ":now": utc_now()}
                    ),
                    ReturnValues="ALL_NEW",
                )["Attributes"]
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                total = self.get(job_id).chunks
                raise ValidationError(
                    f"chunk index {index} out of range: job {job_id!r} has {total} chunks"
                ) from exc
        attributes = from_attributes(done)
        return len(attributes["done_chunks"]), int(attributes["chunks"])

    def finish(
        self, job_id: str, summary_key: str, results_key: str, counts: Mapping[str, int]
    ) -> None:
        """Mark the job succeeded with where its results are and its counts by decision.

        Unconditional but for existence: a rerun of the aggregation wrote the same keys, and
        a success after an earlier failed attempt is the job's real outcome (its reason goes).
        """
        for value, what in ((summary_key, "summary_key"), (results_key, "results_key")):
            if not isinstance(value, str) or not value:
                raise ValidationError(f"{what} must be a non-empty key")
        self._update(
            job_id,
            "SET #status = :status, #summary = :summary, #results = :results, "
            "#counts = :counts, #updated = :now REMOVE #reason",
            {
                "#summary": "summary_key",
                "#results": "results_key",
                "#counts": "counts",
                "#reason": "reason",
            },
            {
                ":status": SUCCEEDED,
                ":summary": summary_key,
                ":results": results_key,
                ":counts": _checked_counts(counts),
            },
        )

    def fail(self, job_id: str, reason: str) -> bool:
        """Mark the job failed; False, changing nothing, if it already succeeded.

        A late, failing duplicate (a redelivered aggregation) must not erase a success.
        ``reason`` is for people; it is cut to :data:`MAX_REASON_CHARS` characters.
        """
        if not isinstance(reason, str) or not reason:
            raise ValidationError("reason must be a non-empty string")
        try:
            self._update(
                job_id,
                "SET #status = :status, #reason = :reason, #updated = :now",
                {"#reason": "reason"},
                {
                    ":status": FAILED_STATUS,
                    ":reason": reason[:MAX_REASON_CHARS],
                    ":succeeded": SUCCEEDED,
                },
                condition="#status <> :succeeded",
            )
        except _Refused:
            self.get(job_id)
            return False
        return True

    def _update(
        self,
        job_id: str,
        expression: str,
        names: dict[str, str],
        values: dict[str, Any],
        condition: str | None = None,
    ) -> None:
        """One update of an existing job (``values`` plain, encoded here):
        :class:`UnknownJobError` if there is none, :class:`_Refused` when the extra
        ``condition`` fails."""
        exists = "attribute_exists(pk)"
        with aws_errors(f"updating job {job_id}"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=self._key(job_id),
                    UpdateExpression=expression,
                    ConditionExpression=f"{exists} AND ({condition})" if condition else exists,
                    ExpressionAttributeNames={
                        **names,
                        "#status": "status",
                        "#updated": "updated_at",
                    },
                    ExpressionAttributeValues=to_attributes({**values, ":now": utc_now()}),
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                if condition is None:
                    raise UnknownJobError(f"unknown job {job_id!r}") from exc
                raise _Refused from exc

    def running_on(self, galleries: Iterable[str], stalled_after_s: float = 3600.0) -> list[str]:
        """Ids of the running jobs that verify against any of ``galleries``, read by a
        strongly consistent scan of the job items. A job that has not moved for
        ``stalled_after_s`` (a chunk finished, a status change) is not counted: its worker is
        gone, and it must not block what waits for running jobs for ever."""
        wanted = set(galleries)
        if not wanted:
            return []
        cutoff = time.time() - stalled_after_s
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :job) AND #status = :running",
            "ProjectionExpression": "job_id, galleries, updated_at",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": to_attributes({":job": _JOB_PK, ":running": RUNNING}),
            "ConsistentRead": True,
        }
        with aws_errors("listing running jobs"):
            pages = self._db.get_paginator("scan").paginate(**kwargs)
            items = [from_attributes(i) for page in pages for i in page.get("Items", [])]
        return sorted(
            str(i["job_id"])
            for i in items
            if wanted & set(i.get("galleries") or ())
            and parse_instant(str(i.get("updated_at")), "updated_at").timestamp() >= cutoff
        )

    def get(self, job_id: str) -> JobStatus:
        """The job's status, strongly consistent; :class:`UnknownJobError` if there is none."""
        with aws_errors(f"reading job {job_id}"):
            item = self._db.get_item(
                TableName=self.table, Key=self._key(job_id), ConsistentRead=True
            ).get("Item")
        if item is None:
            raise UnknownJobError(f"unknown job {job_id!r}")
        return _status_from_item(from_attributes(item))


class _Refused(Exception):
    """A job update's own condition failed (as opposed to the job being unknown)."""


def _check_counts(rows: int, chunks: int, failed_rows: int) -> None:
    for value, what in ((rows, "rows"), (chunks, "chunks"), (failed_rows, "failed_rows")):
        check_index(value, what)
    valid = rows - failed_rows
    if valid < 0:
        raise ValidationError(f"failed_rows {failed_rows} exceeds rows {rows}")
    if chunks > min(valid, MAX_JOB_CHUNKS) or (valid > 0) != (chunks > 0):
        raise ValidationError(
            f"{chunks} chunks cannot carry {valid} valid rows (1 to {MAX_JOB_CHUNKS} chunks "
            "when there are valid rows, else 0)"
        )


def _checked_counts(counts: Any) -> dict[str, int]:
    if not isinstance(counts, Mapping):
        raise ValidationError("counts must map decisions to numbers")
    for key, value in counts.items():
        if not isinstance(key, str) or not key:
            raise ValidationError("counts keys must be non-empty strings")
        check_index(value, f"counts[{key!r}]")
    return dict(counts)


def _status_from_item(item: Mapping[str, Any]) -> JobStatus:
    """A decoded (:func:`~facegate.storage.dynamo.from_attributes`) job item."""
    counts = item.get("counts")
    return JobStatus(
        job_id=item["job_id"],
        status=item["status"],
        rows=int(item["rows"]),
        chunks=int(item["chunks"]),
        chunks_done=len(item.get("done_chunks", ())),
        failed_rows=int(item["failed_rows"]),
        created_at=item["created_at"],
        updated_at=item["updated_at"],
        results_key=item.get("results_key"),
        summary_key=item.get("summary_key"),
        counts={k: int(v) for k, v in counts.items()} if counts is not None else None,
        reason=item.get("reason"),
    )
