"""The ingest ledger on DynamoDB: each object version or chunk processed once. Torch-free."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from facegate.common import check_positive, compact_json, iso_seconds
from facegate.errors import (
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.objects import ObjectRef

DEFAULT_LEASE_SECONDS = 900
_INGEST_PK = "INGEST#"
_META_SK = "META"
_SOURCE_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_IN_PROGRESS = "in_progress"
_COMPLETED = "completed"


# --------------------------------------------------------------------------------------
# Idempotency
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger knows of one source: ``status`` is ``in_progress`` or ``completed``."""

    source_id: str
    status: str
    attempts: int
    lease_until: float | None
    outputs: tuple[str, ...]


def safe_part_name(source_id: str) -> str:
    """The deterministic stem of a source's output files: a retried invocation overwrites its
    own part instead of adding a second copy of the same rows.

    Only the stem (``part-<source_id>``): the caller adds the extension, so that a gallery
    part and its rejects file can share it.
    """
    return f"part-{_check_source_id(source_id)}"


def _check_source_id(source_id: Any) -> str:
    if not isinstance(source_id, str) or not _SOURCE_ID_RE.match(source_id):
        raise ValidationError("a source id is 64 lowercase hex characters", detail=repr(source_id))
    return source_id


class IngestLedger:
    """Who is processing which source, and what it wrote: one item per source
    (``pk=INGEST#<source_id>``, ``sk=META``) in the subjects table.

    The items carry neither ``kind`` nor ``subject_id``, so they stay out of the ``subjects``
    index and out of every subject query. A claim is a lease: a worker that dies without
    releasing (Lambda timeout) blocks redeliveries only until the lease expires, so the
    lease must exceed the function's timeout.
    """

    def __init__(self, client: BaseClient, table: str) -> None:
        self._db = client
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLedger:
        return cls(aws_client("dynamodb", settings), settings.table)

    @staticmethod
    def source_id(ref: ObjectRef, member_range: str = "") -> str:
        """sha256 of bucket, key, version (the version id, else the etag) and member range.

        The same object version delivered twice gets the same id; a new version gets a new
        one. In an unversioned bucket, re-uploading identical bytes (same etag) counts as a
        duplicate, which is what it is. Without a version id or an etag nothing tells two
        uploads apart: :class:`ValidationError`.
        """
        if ref.version_id:
            version = f"version:{ref.version_id}"
        elif ref.etag:
            version = f"etag:{ref.etag}"
        else:
            raise ValidationError(f"s3://{ref.bucket}/{ref.key} has neither version id nor etag")
        text = compact_json([ref.bucket, ref.key, version, member_range])
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def _key(self, source_id: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": _INGEST_PK + _check_source_id(source_id)}, "sk": {"S": _META_SK}}

    def claim(
        self,
        source_id: str,
        now: float | None = None,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
    ) -> bool:
        """Take the source for processing; False if it is completed or claimed by a live lease.

        One conditional write: it succeeds if there is no item, or if the item is an
        ``in_progress`` claim whose lease has run out (its worker died). ``now`` is epoch
        seconds (default: the clock). ``attempts`` counts successful claims, to spot a poison
        source that kills every worker.
        """
        check_positive(lease_seconds, "lease_seconds")
        now = time.time() if now is None else float(now)
        with aws_errors(f"claiming ingest source {source_id}"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=self._key(source_id),
                    UpdateExpression=(
                        "SET #source = :source, #status = :in_progress, #claimed = :claimed, "
                        "#lease = :lease ADD #attempts :one"
                    ),
                    ConditionExpression=(
                        "attribute_not_exists(pk) OR (#status = :in_progress AND #lease <= :now)"
                    ),
                    ExpressionAttributeNames={
                        "#source": "source_id",
                        "#status": "status",
                        "#claimed": "claimed_at",
                        "#lease": "lease_until",
                        "#attempts": "attempts",
                    },
                    ExpressionAttributeValues={
                        ":source": {"S": source_id},
                        ":in_progress": {"S": _IN_PROGRESS},
                        ":claimed": {"S": iso_seconds(now)},
                        ":lease": {"N": repr(now + lease_seconds)},
                        ":now": {"N": repr(now)},
                        ":one": {"N": "1"},
                    },
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                return False
        return True

    def complete(self, source_id: str, outputs: Sequence[str], now: float | None = None) -> None:
        """Mark the source done with the keys it wrote; later claims of it return False.

        Unconditional: the outputs exist whoever holds the claim now, and since part names
        are deterministic a second worker of the same source wrote the same keys.
        """
        if isinstance(outputs, str) or not all(isinstance(o, str) and o for o in outputs):
            raise ValidationError("outputs must be a list of non-empty keys")
        now = time.time() if now is None else float(now)
        with aws_errors(f"completing ingest source {source_id}"):
            self._db.update_item(
                TableName=self.table,
                Key=self._key(source_id),
                UpdateExpression=(
                    "SET #source = :source, #status = :completed, #outputs = :outputs, "
                    "#completed = :completed_at REMOVE #lease"
                ),
                ExpressionAttributeNames={
                    "#source": "source_id",
                    "#status": "status",
                    "#outputs": "outputs",
                    "#completed": "completed_at",
                    "#lease": "lease_until",
                },
                ExpressionAttributeValues={
                    ":source": {"S": source_id},
                    ":completed": {"S": _COMPLETED},
                    ":outputs": {"L": [{"S": o} for o in outputs]},
                    ":completed_at": {"S": iso_seconds(now)},
                },
            )

    def release(self, source_id: str) -> bool:
        """Drop an ``in_progress`` claim after a failure, so that the retry can run at once.

        A completed source is never released (a late, failing worker must not erase another's
        success): False then, and when there was no claim.
        """
        with aws_errors(f"releasing ingest source {source_id}"):
            try:
                self._db.delete_item(
                    TableName=self.table,
                    Key=self._key(source_id),
                    ConditionExpression="#status = :in_progress",
                    ExpressionAttributeNames={"#status": "status"},
                    ExpressionAttributeValues={":in_progress": {"S": _IN_PROGRESS}},
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                return False
        return True

    def get(self, source_id: str) -> LedgerEntry | None:
        """The source's entry (strongly consistent), or None if never claimed or released."""
        with aws_errors(f"reading ingest source {source_id}"):
            item = self._db.get_item(
                TableName=self.table, Key=self._key(source_id), ConsistentRead=True
            ).get("Item")
        if item is None:
            return None
        lease = item.get("lease_until")
        return LedgerEntry(
            source_id=source_id,
            status=item["status"]["S"],
            attempts=int(item.get("attempts", {}).get("N", "0")),
            lease_until=float(lease["N"]) if lease else None,
            outputs=tuple(o["S"] for o in item.get("outputs", {}).get("L", [])),
        )
