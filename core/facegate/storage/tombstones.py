"""Tombstones: deleted subjects, applied to galleries at compaction. Torch-free."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from facegate.common import iso_micros, parse_instant, validate_id
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import from_attributes, to_attributes

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TOMBSTONE_PK = "TOMBSTONE"
_TOMBSTONE_SK = "SUBJECT#"


# --------------------------------------------------------------------------------------
# DynamoDB: tombstones
# --------------------------------------------------------------------------------------


class Tombstones:
    """Deletion times of subjects, in the single table (``pk=TOMBSTONE``, ``sk=SUBJECT#<id>``).

    One partition, so that compaction reads every tombstone with one (paginated) query.
    Items carry no ``kind`` attribute and so stay out of the sparse ``subjects`` index that
    lists enrolled subjects. A tombstone only ever moves forward in time: a late or replayed
    ``record`` with an older time must not resurrect rows deleted by a newer one.
    """

    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self._db = dynamodb
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> Tombstones:
        return cls(aws_client("dynamodb", settings), settings.table)

    def record(self, subject_id: str, when: str | datetime | None = None) -> str:
        """Record that ``subject_id`` was deleted at ``when`` (default now); return the stored time.

        The returned time is the later of ``when`` and any earlier record for the subject.
        """
        validate_id(subject_id)
        stamp = iso_micros(parse_instant(when, "when") if when is not None else datetime.now(UTC))
        key = to_attributes({"pk": TOMBSTONE_PK, "sk": _TOMBSTONE_SK + subject_id})
        with aws_errors(f"recording deletion of {subject_id}"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression="SET deleted_at = :when, subject_id = :subject",
                    ConditionExpression="attribute_not_exists(deleted_at) OR deleted_at < :when",
                    ExpressionAttributeValues=to_attributes(
                        {":when": stamp, ":subject": subject_id}
                    ),
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                item = self._db.get_item(TableName=self.table, Key=key, ConsistentRead=True)
                return str(from_attributes(item["Item"])["deleted_at"])
        return stamp

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
