"""API keys: only their sha256 is stored, in the subjects table. Torch-free.

A key is shown once, when it is created (the local stack prints it; on AWS an operator runs
``facegate keys create``). Requests present it in ``x-api-key``; the API hashes it and looks
the hash up, so a leaked table never leaks a usable key.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from facegate.errors import StorageError

KEY_PREFIX = "fg_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _item_key(digest: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"APIKEY#{digest}"}, "sk": {"S": "META"}}


class ApiKeyStore:
    """Create, check and revoke API keys in a DynamoDB table (pk/sk string keys)."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def create(self, name: str) -> str:
        """A new random key (returned once, never stored in clear)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        item = {
            **_item_key(hash_key(key)),
            "name": {"S": name},
            "created_at": {"S": datetime.now(UTC).isoformat(timespec="seconds")},
        }
        try:
            self._db.put_item(
                TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot store API key: {exc}") from exc
        return key

    def is_valid(self, key: str | None) -> bool:
        if not key:
            return False
        try:
            found = self._db.get_item(
                TableName=self._table, Key=_item_key(hash_key(key)), ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot check API key: {exc}") from exc
        return "Item" in found

    def revoke(self, key: str) -> None:
        try:
            self._db.delete_item(TableName=self._table, Key=_item_key(hash_key(key)))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot revoke API key: {exc}") from exc
