"""API keys with scopes, in their own table; only their sha256 is stored. Torch-free.

A key is shown once, when an operator creates it (``facegate keys create``; the local stack
prints its own). Requests present it in ``x-api-key``; the API hashes it and looks the hash
up, so a leaked table never leaks a usable key. The functions that check keys may only read
the table (the template grants them ``DynamoDBReadPolicy``): no request can mint a key.

Each key has a public id (for listing and revoking), a name, one or more scopes, a creation
time and an optional expiry. The id is 12 random hex digits, drawn apart from the key, so it
can be shown, logged or pasted in a ticket without saying anything about the key or its
hash (a prefix of the hash would be a partial hash of the secret). The expiry is also the
table's TTL attribute (epoch seconds); DynamoDB removes an expired item only some time
later, so a key past its expiry is refused here, not by the TTL.

:data:`ROUTE_SCOPES` is the one place that says which scope each route needs; the API and
the job-status function both check keys against it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from facegate.common import iso_seconds, utc_now
from facegate.errors import InsufficientScopeError, UnauthorizedError, ValidationError
from facegate.storage.aws_errors import aws_errors
from facegate.storage.dynamo import from_attributes, to_attributes

KEY_PREFIX = "fg_"

Scope = Literal["verify", "enrol", "admin"]
#: ``verify``: decide on photos (compare, identify, embedding); ``enrol``: add subjects and
#: faces; ``admin``: everything that reads or removes what is stored, runs batch work or
#: describes the API. A key holds one or more; none implies another.
SCOPES: tuple[Scope, ...] = get_args(Scope)

#: The scope each route needs, keyed as API Gateway spells route keys (``METHOD /path``,
#: the path as the app declares it). ``GET /health`` needs no key and is not here; a route
#: that is missing is refused to every key (a test checks every route of the app is here).
ROUTE_SCOPES: dict[str, Scope] = {
    "POST /compare": "verify",
    "POST /identify": "verify",
    "POST /embedding": "verify",
    "POST /subjects/{subject_id}/faces": "enrol",
    "POST /enroll": "enrol",
    "POST /register": "enrol",
    "GET /subjects": "admin",
    "GET /subjects/{subject_id}": "admin",
    "DELETE /subjects/{subject_id}": "admin",
    "GET /subjects/{subject_id}/export": "admin",
    "POST /collections": "admin",
    "GET /collections": "admin",
    "GET /collections/{collection}": "admin",
    "DELETE /collections/{collection}": "admin",
    "GET /galleries/{gallery}": "admin",
    "DELETE /galleries/{gallery}/subjects/{subject_id}": "admin",
    "POST /galleries/{gallery}/compact": "admin",
    "POST /reembed": "admin",
    "GET /galleries/{gallery}/reembed": "admin",
    "GET /jobs/{job_id}": "admin",
    "GET /erasures/{erasure_id}": "admin",
    "GET /openapi.json": "admin",
    "GET /docs": "admin",
    "GET /redoc": "admin",
}

#: Longest key name: names are for people ("ci", "kiosk-lobby"), not data.
MAX_NAME = 128


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def route_scope(method: str, path: str) -> Scope | None:
    """The scope ``METHOD path`` needs (``HEAD`` as ``GET``); None for a route not listed."""
    method = method.upper()
    return ROUTE_SCOPES.get(f"{'GET' if method == 'HEAD' else method} {path}")


def check_scopes(scopes: Iterable[str]) -> frozenset[Scope]:
    """At least one scope, each one of :data:`SCOPES`."""
    chosen = frozenset(scopes)
    unknown = sorted(chosen - set(SCOPES))
    if unknown or not chosen:
        raise ValidationError(
            f"scopes must be one or more of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return frozenset(s for s in SCOPES if s in chosen)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise ValidationError(f"a key name is 1-{MAX_NAME} printable characters")
    return name


@dataclass(frozen=True)
class ApiKey:
    """What is known of a key besides its secret: never its hash, never the key."""

    key_id: str
    name: str
    scopes: frozenset[Scope]
    created_at: str
    expires_at: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.key_id,
            "name": self.name,
            "scopes": [s for s in SCOPES if s in self.scopes],
            "created_at": self.created_at,
            "expires_at": None if self.expires_at is None else iso_seconds(self.expires_at),
            "expired": self.expired(),
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ApiKey:
        values = from_attributes(item)
        expires = values.get("expires_at")
        return cls(
            key_id=str(values.get("id", "")),
            name=str(values.get("name", "")),
            # A scope this version does not know (written by a newer one) grants nothing.
            scopes=frozenset(s for s in SCOPES if s in values.get("scopes", set())),
            created_at=str(values.get("created_at", "")),
            expires_at=None if expires is None else datetime.fromtimestamp(int(expires), UTC),
        )


@dataclass(frozen=True)
class IssuedKey:
    """A key just created: ``key`` is its only appearance in clear."""

    key: str
    record: ApiKey


class ApiKeyStore:
    """Create, list, check and revoke API keys in a DynamoDB table (``pk`` string key: the
    key's sha256).

    Every DynamoDB failure is a :class:`~facegate.errors.StorageError`: an outage must never
    read as "no such key".
    """

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def issue(
        self,
        name: str,
        scopes: Iterable[str] = SCOPES,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """A new random key with these scopes, valid until ``expires_at`` (aware, in the
        future) or revoked. The key is returned once and never stored in clear."""
        chosen = check_scopes(scopes)
        if expires_at is not None and (
            expires_at.utcoffset() is None or expires_at <= datetime.now(UTC)
        ):
            raise ValidationError("a key's expiry must be a future time with a time zone")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(secrets.token_hex(6), _check_name(name), chosen, utc_now(), expires_at)
        item = to_attributes(
            {
                "pk": hash_key(key),
                "id": record.key_id,
                "name": record.name,
                "scopes": set(chosen),
                "created_at": record.created_at,
                # Epoch seconds: the table's TTL attribute.
                "expires_at": None if expires_at is None else int(expires_at.timestamp()),
            }
        )
        with aws_errors("storing an API key"):
            self._db.put_item(
                TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        return IssuedKey(key, record)

    def create(
        self,
        name: str,
        scopes: Iterable[str] = SCOPES,
        expires_at: datetime | None = None,
    ) -> str:
        """:meth:`issue`, the key only (by default with every scope, as the local stack's)."""
        return self.issue(name, scopes, expires_at).key

    def lookup(self, key: str | None) -> ApiKey | None:
        """The key's record; None for no key, an unknown one or one past its expiry."""
        if not key:
            return None
        digest = hash_key(key)
        with aws_errors("checking an API key"):
            found = self._db.get_item(
                TableName=self._table, Key=to_attributes({"pk": digest}), ConsistentRead=True
            )
        item = found.get("Item")
        if item is None:
            return None
        record = ApiKey.from_item(item)
        return None if record.expired() else record

    def authorize(self, key: str | None, scope: Scope | None) -> ApiKey:
        """The key's record if it holds ``scope``: 401 without a usable key, 403 with a key
        that lacks the scope (``None``: a route no scope grants, refused to every key)."""
        if not key:
            raise UnauthorizedError("missing x-api-key header")
        record = self.lookup(key)
        if record is None:
            raise UnauthorizedError("unknown or expired API key")
        if scope is None or scope not in record.scopes:
            raise InsufficientScopeError(
                f"this API key lacks the {scope!r} scope" if scope else "no key may call this"
            )
        return record

    def all(self) -> list[ApiKey]:
        """Every key (expired ones too, until the TTL removes them), oldest first."""
        return sorted(
            (ApiKey.from_item(item) for item in self._scan()),
            key=lambda r: (r.created_at, r.key_id),
        )

    def revoke(self, key_id: str) -> bool:
        """Delete the key with this public id; False if there is none."""
        if not isinstance(key_id, str) or not key_id:
            raise ValidationError("a key id is required")
        found = False
        for item in self._scan(key_id):
            with aws_errors("revoking an API key"):
                self._db.delete_item(TableName=self._table, Key={"pk": item["pk"]})
            found = True
        return found

    def _scan(self, key_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item, or those with this id: an operator's command over a table of a few
        keys, never a request's path."""
        kwargs: dict[str, Any] = {"TableName": self._table, "ConsistentRead": True}
        if key_id is not None:
            kwargs["FilterExpression"] = "#id = :id"
            kwargs["ExpressionAttributeNames"] = {"#id": "id"}
            kwargs["ExpressionAttributeValues"] = to_attributes({":id": key_id})
        while True:
            with aws_errors("listing API keys"):
                page = self._db.scan(**kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def create_keys_table(dynamodb: Any, table: str) -> None:
    """The keys table as ``template.yaml`` declares it (``pk`` string hash key), for tests
    and scripts; on AWS CloudFormation creates it, locally the stack does from the template."""
    with aws_errors("creating the API keys table"):
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.get_waiter("table_exists").wait(TableName=table)
