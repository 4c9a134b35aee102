"""API keys: only their sha256 is stored, in the subjects table. Torch-free.

A key is shown once, when it is created (the local stack prints it; on AWS an operator runs
``facegate keys create``). Requests present it in ``x-api-key``; the API hashes it and looks
the hash up, so a leaked table never leaks a usable key.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from facegate.common import utc_now
from facegate.storage.aws_errors import aws_errors
from facegate.storage.dynamo import to_attributes

KEY_PREFIX = "fg_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _item_key(digest: str) -> dict[str, Any]:
    return to_attributes({"pk": f"APIKEY#{digest}", "sk": "META"})


class ApiKeyStore:
    """Create, check and revoke API keys in a DynamoDB table (pk/sk string keys).

    Every DynamoDB failure is a :class:`~facegate.errors.StorageError`: an outage must never
    read as "no such key".
    """

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def create(self, name: str) -> str:
        """A new random key (returned once, never stored in clear)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        item = {
            **_item_key(hash_key(key)),
            **to_attributes({"name": name, "created_at": utc_now()}),
        }
        with aws_errors("storing an API key"):
            self._db.put_item(
                TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        return key

    def is_valid(self, key: str | None) -> bool:
        if not key:
            return False
        with aws_errors("checking an API key"):
            found = self._db.get_item(
                TableName=self._table, Key=_item_key(hash_key(key)), ConsistentRead=True
            )
        return "Item" in found

    def revoke(self, key: str) -> None:
        with aws_errors("revoking an API key"):
            self._db.delete_item(TableName=self._table, Key=_item_key(hash_key(key)))
