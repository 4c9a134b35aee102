"""The ingest ledger on DynamoDB: each object version or chunk processed once. Torch-free."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from facegate.common import check_positive, compact_json, iso_seconds
from facegate.errors import (
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import TTL_ATTRIBUTE, expires_at, from_attributes, to_attributes
from facegate.storage.keys import check_source_id, safe_part_name
from facegate.storage.objects import ObjectRef

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: ``safe_part_name`` lives with the other key layouts in :mod:`facegate.storage.keys`; it is
#: re-exported here for the callers that import it beside the ledger.
__all__ = ["DEFAULT_LEASE_SECONDS", "IngestLedger", "LedgerEntry", "safe_part_name"]

DEFAULT_LEASE_SECONDS = 900
_INGEST_PK = "INGEST#"
_META_SK = "META"
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


class IngestLedger:
    """Who is processing which source, and what it wrote: one item per source
    (``pk=INGEST#<source_id>``, ``sk=META``) in the subjects table.

    The items carry neither ``kind`` nor ``subject_id``, so they stay out of the ``subjects``
    index and out of every subject query. A claim is a lease: a worker that dies without
    releasing (Lambda timeout) blocks redeliveries only until the lease expires, so the
    lease must exceed the function's timeout.

    With ``retention_days`` every claim and completion sets the item's TTL that many days
    ahead: an entry only has to outlive the deliveries of its source's notification, and a
    ledger that grows with every upload for ever is a list of every upload ever made.
    """

    def __init__(
        self, client: DynamoDBClient, table: str, retention_days: int | None = None
    ) -> None:
        self._db = client
        self.table = table
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLedger:
        return cls(aws_client("dynamodb", settings), settings.table, settings.ledger_retention_days)

    def _ttl(self) -> str:
        """The ``SET`` clause of the item's TTL (``:expires``), or nothing without one."""
        return f", {TTL_ATTRIBUTE} = :expires" if self.retention_days is not None else ""

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

    def _key(self, source_id: str) -> dict[str, Any]:
        return to_attributes({"pk": _INGEST_PK + check_source_id(source_id), "sk": _META_SK})

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
                        f"#lease = :lease{self._ttl()} ADD #attempts :one"
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
                    ExpressionAttributeValues=to_attributes(
                        {
                            ":source": source_id,
                            ":in_progress": _IN_PROGRESS,
                            ":claimed": iso_seconds(now),
                            ":lease": now + lease_seconds,
                            ":now": now,
                            ":one": 1,
                            ":expires": expires_at(self.retention_days, now),
                        }
                    ),
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
                    f"#completed = :completed_at{self._ttl()} REMOVE #lease"
                ),
                ExpressionAttributeNames={
                    "#source": "source_id",
                    "#status": "status",
                    "#outputs": "outputs",
                    "#completed": "completed_at",
                    "#lease": "lease_until",
                },
                ExpressionAttributeValues=to_attributes(
                    {
                        ":source": source_id,
                        ":completed": _COMPLETED,
                        ":outputs": list(outputs),
                        ":completed_at": iso_seconds(now),
                        ":expires": expires_at(self.retention_days, now),
                    }
                ),
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
                    ExpressionAttributeValues=to_attributes({":in_progress": _IN_PROGRESS}),
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
        entry = from_attributes(item)
        lease = entry.get("lease_until")
        return LedgerEntry(
            source_id=source_id,
            status=entry["status"],
            attempts=int(entry.get("attempts", 0)),
            lease_until=float(lease) if lease is not None else None,
            outputs=tuple(entry.get("outputs", ())),
        )
