"""Tombstones: deleted subjects, applied to galleries at compaction, and the fence that keeps
a DELETE and an enrolment of the same subject from interleaving. Torch-free.

The fence, on the subject's tombstone item, is two attributes written only with atomic
DynamoDB updates and read by conditions, never a lock anyone waits for:

- ``generation``, a counter every DELETE increments before it touches anything. An enrolment
  reads it before storing its first photo and commits its items on the condition that it has
  not moved (:meth:`EnrolmentFence.condition_check`): a DELETE that began in between cancels
  the enrolment's transaction.
- ``deleting``, a string set holding one mark per DELETE still running (its lease end and a
  random token), added in the same update and taken out when the DELETE ends, done or failed.
  An enrolment that finds a live mark is refused before it writes anything: that DELETE may
  be about to sweep the subject's photo prefix, and would take the enrolment's photos with it.
  A DELETE killed before it could take its mark out (a function timeout) leaves it to expire:
  no invocation outlives :data:`DELETION_LEASE`, so an expired mark belongs to a DELETE that
  can no longer act; the next DELETE of the subject removes it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from facegate.common import iso_micros, parse_instant, validate_id
from facegate.errors import SubjectDeletedError, ValidationError
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import TTL_ATTRIBUTE, expires_at, from_attributes, to_attributes

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

TOMBSTONE_PK = "TOMBSTONE"
_TOMBSTONE_SK = "SUBJECT#"
#: Lambda's hard limit on one invocation (every function's ``Timeout`` is at most this): a
#: DELETE's mark older than this cannot belong to a DELETE still running.
DELETION_LEASE = timedelta(minutes=15)


def _tombstone_key(subject_id: str) -> dict[str, Any]:
    return to_attributes({"pk": TOMBSTONE_PK, "sk": _TOMBSTONE_SK + subject_id})


def _mark_is_live(mark: str, now: datetime) -> bool:
    """``mark`` is ``"<lease end> <token>"``; one that cannot be read is treated as live (it
    only delays an enrolment until the next DELETE of the subject removes it)."""
    try:
        return parse_instant(mark.split(" ", 1)[0], "deletion lease") > now
    except ValidationError:
        return True


@dataclass(frozen=True)
class Deletion:
    """A running DELETE's mark on the tombstone, and the expired marks it found there."""

    subject_id: str
    mark: str
    expired: frozenset[str]


@dataclass(frozen=True)
class EnrolmentFence:
    """The subject's deletion generation as an enrolment found it before its first write."""

    table: str
    subject_id: str
    generation: int

    def condition_check(self) -> TransactWriteItemTypeDef:
        """The enrolment transaction's item that cancels it if any DELETE began since."""
        check: TransactWriteItemTypeDef = {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": _tombstone_key(self.subject_id),
                "ConditionExpression": "attribute_not_exists(#generation)",
                "ExpressionAttributeNames": {"#generation": "generation"},
            }
        }
        if self.generation:
            check["ConditionCheck"]["ConditionExpression"] = "#generation = :generation"
            check["ConditionCheck"]["ExpressionAttributeValues"] = to_attributes(
                {":generation": self.generation}
            )
        return check

    def refused(self) -> SubjectDeletedError:
        """What the enrolment raises when :meth:`condition_check` cancelled it."""
        return SubjectDeletedError(
            f"subject {self.subject_id!r} was deleted while it was being enrolled: "
            "nothing was stored"
        )


# --------------------------------------------------------------------------------------
# DynamoDB: tombstones
# --------------------------------------------------------------------------------------


class Tombstones:
    """Deletion times of subjects, in the single table (``pk=TOMBSTONE``, ``sk=SUBJECT#<id>``).

    One partition, so that compaction reads every tombstone with one (paginated) query.
    Items carry no ``kind`` attribute and so stay out of the sparse ``subjects`` index that
    lists enrolled subjects. A tombstone only ever moves forward in time: a late or replayed
    ``record`` with an older time must not resurrect rows deleted by a newer one. The same
    item carries the subject's deletion fence (:meth:`begin_deletion`, :meth:`fence`).

    ``retention_days`` (:attr:`Settings.tombstone_retention`, longer than any source that
    could bring the subject back) sets the item's TTL that many days after the subject's
    latest DELETE; None keeps it for ever, and takes out a TTL an earlier DELETE set.
    """

    def __init__(
        self, dynamodb: DynamoDBClient, table: str, retention_days: int | None = None
    ) -> None:
        self._db = dynamodb
        self.table = table
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings: Settings) -> Tombstones:
        return cls(aws_client("dynamodb", settings), settings.table, settings.tombstone_retention)

    def _ttl(self) -> tuple[str, str, int | None]:
        """The TTL's ``SET`` and ``REMOVE`` clauses (``:expires``), and its value, for a write
        now: every DELETE pushes the expiry out, from its own time."""
        if self.retention_days is None:
            return "", f" REMOVE {TTL_ATTRIBUTE}", None
        return f", {TTL_ATTRIBUTE} = :expires", "", expires_at(self.retention_days, time.time())

    def record(self, subject_id: str, when: str | datetime | None = None) -> str:
        """Record that ``subject_id`` was deleted at ``when`` (default now); return the stored time.

        The returned time is the later of ``when`` and any earlier record for the subject.
        """
        validate_id(subject_id)
        stamp = iso_micros(parse_instant(when, "when") if when is not None else datetime.now(UTC))
        key = _tombstone_key(subject_id)
        set_ttl, remove_ttl, expires = self._ttl()
        with aws_errors(f"recording deletion of {subject_id}"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression=(
                        f"SET deleted_at = :when, subject_id = :subject{set_ttl}{remove_ttl}"
                    ),
                    ConditionExpression="attribute_not_exists(deleted_at) OR deleted_at < :when",
                    ExpressionAttributeValues=to_attributes(
                        {":when": stamp, ":subject": subject_id, ":expires": expires}
                    ),
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                item = self._db.get_item(TableName=self.table, Key=key, ConsistentRead=True)
                return str(from_attributes(item["Item"])["deleted_at"])
        return stamp

    def begin_deletion(self, subject_id: str) -> Deletion:
        """Move the subject's fence before a DELETE touches its photos or items: one update
        increments ``generation`` (cancelling every enrolment that read the old one) and adds
        this DELETE's mark (refusing every enrolment that starts before :meth:`end_deletion`).
        The item is a whole tombstone even without :meth:`record` (``deleted_at`` set if absent).
        """
        validate_id(subject_id)
        now = datetime.now(UTC)
        mark = f"{iso_micros(now + DELETION_LEASE)} {uuid.uuid4().hex}"
        set_ttl, remove_ttl, expires = self._ttl()
        with aws_errors(f"recording deletion of {subject_id}"):
            answer = self._db.update_item(
                TableName=self.table,
                Key=_tombstone_key(subject_id),
                UpdateExpression=(
                    f"SET #deleted = if_not_exists(#deleted, :now), #subject = :subject{set_ttl} "
                    f"ADD #generation :one, #deleting :mark{remove_ttl}"
                ),
                ExpressionAttributeNames={
                    "#deleted": "deleted_at",
                    "#subject": "subject_id",
                    "#generation": "generation",
                    "#deleting": "deleting",
                },
                ExpressionAttributeValues=to_attributes(
                    {
                        ":now": iso_micros(now),
                        ":subject": subject_id,
                        ":one": 1,
                        ":mark": {mark},
                        ":expires": expires,
                    }
                ),
                ReturnValues="ALL_NEW",
            )
        marks = from_attributes(answer.get("Attributes", {})).get("deleting", set())
        expired = frozenset(m for m in marks if m != mark and not _mark_is_live(m, now))
        return Deletion(subject_id, mark, expired)

    def end_deletion(self, deletion: Deletion) -> None:
        """Take the DELETE's mark out (and the expired ones it found), once it will write
        nothing more, whether it finished or failed."""
        self._remove_marks(deletion.subject_id, {deletion.mark, *deletion.expired})

    def _remove_marks(self, subject_id: str, marks: Iterable[str]) -> None:
        """On the condition that the tombstone exists: an update must never create one
        without a ``deleted_at``."""
        with aws_errors(f"recording deletion of {subject_id}"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=_tombstone_key(subject_id),
                    UpdateExpression="DELETE #deleting :marks",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeNames={"#deleting": "deleting"},
                    ExpressionAttributeValues=to_attributes({":marks": set(marks)}),
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise

    def fence(self, subject_id: str) -> EnrolmentFence:
        """The fence an enrolment of ``subject_id`` commits under; :class:`SubjectDeletedError`
        while a DELETE of the subject is running (read consistently: a DELETE that has moved
        the fence is seen)."""
        found = self._read(subject_id, "generation", "deleting")
        now = datetime.now(UTC)
        if any(_mark_is_live(m, now) for m in found.get("deleting", set())):
            raise SubjectDeletedError(
                f"subject {subject_id!r} is being deleted: enrol it again once the DELETE "
                "has answered"
            )
        return EnrolmentFence(self.table, subject_id, int(found.get("generation", 0)))

    def deleted_at(self, subject_id: str) -> str | None:
        """The subject's tombstone time, None when it has none (a data-subject export)."""
        stamp = self._read(subject_id, "deleted_at").get("deleted_at")
        return None if stamp is None else str(stamp)

    def _read(self, subject_id: str, *attributes: str) -> dict[str, Any]:
        """These attributes of the subject's tombstone item (consistently: a DELETE that has
        just moved the fence is seen); ``{}`` when it has none."""
        validate_id(subject_id)
        names = {f"#a{i}": name for i, name in enumerate(attributes)}
        with aws_errors(f"reading deletions of {subject_id}"):
            item = self._db.get_item(
                TableName=self.table,
                Key=_tombstone_key(subject_id),
                ProjectionExpression=", ".join(names),
                ExpressionAttributeNames=names,
                ConsistentRead=True,
            ).get("Item", {})
        return from_attributes(item)

    def all(self, page_size: int | None = None) -> dict[str, str]:
        """Every tombstone as ``subject_id -> deleted_at``, read consistently so that a
        deletion acknowledged just before a compaction is honoured by it."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": to_attributes({":pk": TOMBSTONE_PK}),
            "ProjectionExpression": "sk, deleted_at",
            "ConsistentRead": True,
        }
        if page_size is not None:
            kwargs["PaginationConfig"] = {"PageSize": page_size}
        with aws_errors("reading tombstones"):
            pages = self._db.get_paginator("query").paginate(**kwargs)
            items = [from_attributes(i) for page in pages for i in page.get("Items", [])]
        return {i["sk"].removeprefix(_TOMBSTONE_SK): i["deleted_at"] for i in items}
