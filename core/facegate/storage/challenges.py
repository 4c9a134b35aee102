"""Liveness challenges on DynamoDB: single-use nonces with an expiry. Torch-free.

One item per challenge in the single table, ``pk=CHALLENGE#<id>``, ``sk=META``, holding its
steps and its expiry, nothing about a person: a challenge is asked for before anyone is
recognised, and naming no subject it keeps nothing an erasure would have to find. The
expiry is also the item's TTL (``expires_at``), so DynamoDB removes the ones never answered.

A challenge is used by deleting it, conditionally on its existence, in one request that
returns what it held: of two requests answering the same challenge exactly one gets it, the
other finds it unknown, and a replayed challenge is unknown for ever after. The expiry is
checked on what the delete returned, since TTL deletion runs up to days late.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from facegate.common import iso_seconds, validate_id
from facegate.errors import ChallengeExpiredError, UnknownChallengeError
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import TTL_ATTRIBUTE, from_attributes, to_attributes

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_PK = "CHALLENGE#"
_SK = "META"


@dataclass(frozen=True)
class Challenge:
    """An issued challenge: answer ``steps`` before ``expires_at`` (epoch seconds)."""

    challenge_id: str
    steps: list[str]
    expires_at: int

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "challenge_id": self.challenge_id,
            "steps": list(self.steps),
            "expires_at": iso_seconds(self.expires_at),
            "expires_in": max(0, self.expires_at - int(now)),
        }


class ChallengeStore:
    """Issue and use challenges in the single table (the module docstring says how)."""

    def __init__(self, client: DynamoDBClient, table: str, ttl_seconds: int) -> None:
        self._db = client
        self.table = table
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> ChallengeStore:
        return cls(aws_client("dynamodb", settings), settings.table, settings.liveness_ttl_seconds)

    @staticmethod
    def _key(challenge_id: str) -> dict[str, Any]:
        return to_attributes({"pk": _PK + validate_id(challenge_id, "challenge_id"), "sk": _SK})

    def issue(self, steps: Sequence[str], now: float | None = None) -> Challenge:
        """A new challenge of ``steps``, stored; its id is 128 random bits."""
        challenge = Challenge(
            challenge_id=secrets.token_hex(16),
            steps=list(steps),
            expires_at=int(time.time() if now is None else now) + self.ttl_seconds,
        )
        item = self._key(challenge.challenge_id) | to_attributes(
            {"steps": challenge.steps, TTL_ATTRIBUTE: challenge.expires_at}
        )
        with aws_errors("issuing a liveness challenge"):
            self._db.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        return challenge

    def use(self, challenge_id: str, now: float | None = None) -> Challenge:
        """The challenge, deleted so that it answers once: :class:`UnknownChallengeError` if
        there is none (never issued, used, or removed by its TTL), and
        :class:`ChallengeExpiredError` if it was still there but past its expiry."""
        with aws_errors("using a liveness challenge"):
            try:
                answer = self._db.delete_item(
                    TableName=self.table,
                    Key=self._key(challenge_id),
                    ConditionExpression="attribute_exists(pk)",
                    ReturnValues="ALL_OLD",
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                raise UnknownChallengeError(
                    "unknown liveness challenge: never issued, already used, or expired; "
                    "ask for a new one"
                ) from None
        held = from_attributes(answer.get("Attributes", {}))
        challenge = Challenge(challenge_id, list(held["steps"]), int(held[TTL_ATTRIBUTE]))
        if (time.time() if now is None else now) > challenge.expires_at:
            raise ChallengeExpiredError(
                f"the liveness challenge expired at {iso_seconds(challenge.expires_at)}; "
                "ask for a new one"
            )
        return challenge


__all__ = ["Challenge", "ChallengeStore"]
