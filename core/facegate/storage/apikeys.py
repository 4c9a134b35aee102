"""API keys with scopes, in their own table; only their sha256 is stored. Torch-free.

A key is shown once, when an operator creates it (``facegate keys create``; the local stack
prints its own). Requests present it in ``x-api-key``; the API hashes it and looks the hash
up, so a leaked table never leaks a usable key. The functions that check keys may only read
the table (the template grants them ``DynamoDBReadPolicy``): no request can mint a key.

Each key has a public id (for listing and revoking), a name, one or more scopes, a creation
time, an optional expiry and, optionally, the collections it is bound to. The id is 12
random hex digits, drawn apart from the key, so it can be shown, logged or pasted in a ticket
without saying anything about the key or its hash (a prefix of the hash would be a partial
hash of the secret). The expiry is also the table's TTL attribute (epoch seconds); DynamoDB
removes an expired item only some time later, so a key past its expiry is refused here,
not by the TTL.

:data:`ROUTE_SCOPES` is the one place that says which scope each route needs; the API and
the job-status function both check keys against it.

A key bound to collections (a tenant's key) holds its scopes in those collections only.
:func:`route_reach` says what a request acts on: the route's ``{collection}``, ``default``
for the routes that name none (:data:`DEFAULT_COLLECTION_ROUTES`), every collection for a
listing that answers only the key's own (:data:`LISTING_ROUTES`), or the whole deployment
(everything else). :meth:`ApiKeyStore.authorize` refuses a bound key a collection not its own
as ``404 unknown_collection``, word for word what a collection that does not exist gets, so
that a tenant cannot tell another tenant's collection from no collection; and it refuses a
bound key every route of the deployment as ``403 insufficient_scope``: galleries, jobs,
erasures, re-embedding, a subject's export (it searches every gallery and dead-letter queue),
the schema and creating a collection are the operator's, whoever the tenant. A 403 there
says nothing a tenant could not know (the routes are public, their paths name no
collection), and it tells the caller why, where a 404 would read as a missing route.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal, get_args

from facegate.common import ID_PATTERN, iso_seconds, utc_now, validate_id
from facegate.errors import (
    InsufficientScopeError,
    UnauthorizedError,
    UnknownCollectionError,
    ValidationError,
)
from facegate.storage.aws_errors import aws_errors
from facegate.storage.dynamo import from_attributes, to_attributes
from facegate.storage.keys import DEFAULT_COLLECTION

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
    "POST /liveness/challenges": "verify",
    "POST /liveness/verify": "verify",
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
    "POST /collections/{collection}/subjects/{subject_id}/faces": "enrol",
    "GET /collections/{collection}/subjects": "admin",
    "GET /collections/{collection}/subjects/{subject_id}": "admin",
    "DELETE /collections/{collection}/subjects/{subject_id}": "admin",
    "POST /collections/{collection}/compare": "verify",
    "POST /collections/{collection}/identify": "verify",
    "POST /collections/{collection}/export": "admin",
    "PUT /collections/{collection}/galleries/{gallery}": "admin",
    "DELETE /collections/{collection}/galleries/{gallery}": "admin",
    "GET /galleries/{gallery}": "admin",
    "DELETE /galleries/{gallery}/subjects/{subject_id}": "admin",
    "POST /galleries/{gallery}/compact": "admin",
    "POST /galleries/{gallery}/backfill": "admin",
    "POST /reembed": "admin",
    "GET /galleries/{gallery}/reembed": "admin",
    "GET /jobs/{job_id}": "admin",
    "GET /erasures/{erasure_id}": "admin",
    "GET /openapi.json": "admin",
    "GET /docs": "admin",
    "GET /redoc": "admin",
}

#: The routes that name no collection and act on ``default``: a key bound to collections
#: opens them only when ``default`` is one of its collections.
DEFAULT_COLLECTION_ROUTES: frozenset[str] = frozenset(
    {
        "POST /compare",
        "POST /identify",
        "POST /embedding",
        "POST /liveness/challenges",
        "POST /liveness/verify",
        "POST /subjects/{subject_id}/faces",
        "POST /enroll",
        "POST /register",
        "GET /subjects",
        "GET /subjects/{subject_id}",
        "DELETE /subjects/{subject_id}",
    }
)
#: The routes that name a collection but also write or attach a gallery, which is the
#: deployment's (gallery names are one namespace, read by batch jobs of every tenant): they
#: are the deployment's, closed to keys bound to collections.
GALLERY_COLLECTION_ROUTES: frozenset[str] = frozenset(
    {
        "POST /collections/{collection}/export",
        "PUT /collections/{collection}/galleries/{gallery}",
        "DELETE /collections/{collection}/galleries/{gallery}",
    }
)
#: The routes that span collections but answer a bound key with its own collections only
#: (the route filters; :class:`Reach.LISTING`).
LISTING_ROUTES: frozenset[str] = frozenset({"GET /collections"})

#: Longest key name: names are for people ("ci", "kiosk-lobby"), not data.
MAX_NAME = 128
#: Most collections one key is bound to: the key's item is read on every request, and
#: listing collections reads each of a bound key's own.
MAX_KEY_COLLECTIONS = 100


class Reach(Enum):
    """What a request acts on when it is not one collection (:func:`route_reach`)."""

    #: The whole deployment: no collection owns it, so no key bound to collections opens it.
    DEPLOYMENT = "deployment"
    #: Every collection, each shown only to a key that may see it (``GET /collections``).
    LISTING = "listing"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _route_key(method: str, path: str) -> str:
    """``METHOD path`` as :data:`ROUTE_SCOPES` spells it (``HEAD`` as ``GET``)."""
    method = method.upper()
    return f"{'GET' if method == 'HEAD' else method} {path}"


def route_scope(method: str, path: str) -> Scope | None:
    """The scope ``METHOD path`` needs (``HEAD`` as ``GET``); None for a route not listed."""
    return ROUTE_SCOPES.get(_route_key(method, path))


def route_reach(method: str, path: str, path_params: Mapping[str, Any]) -> str | Reach:
    """What a request of route ``METHOD path`` (the path as declared) acts on: the name in
    its ``{collection}`` parameter (but :data:`GALLERY_COLLECTION_ROUTES` are the
    deployment's), ``default`` for :data:`DEFAULT_COLLECTION_ROUTES`,
    :attr:`Reach.LISTING` for :data:`LISTING_ROUTES`, else :attr:`Reach.DEPLOYMENT`.

    A route is the deployment's unless it is listed or names its collection, so a new route
    is closed to bound keys until someone says which collection it acts on. A
    ``{collection}`` route whose parameter is missing (never, from a router) is the
    deployment's too: refused, not guessed.
    """
    if _route_key(method, path) in GALLERY_COLLECTION_ROUTES:
        return Reach.DEPLOYMENT
    if "{collection}" in path:
        name = path_params.get("collection")
        return name if isinstance(name, str) else Reach.DEPLOYMENT
    route = _route_key(method, path)
    if route in DEFAULT_COLLECTION_ROUTES:
        return DEFAULT_COLLECTION
    if route in LISTING_ROUTES:
        return Reach.LISTING
    return Reach.DEPLOYMENT


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


def check_collections(collections: Iterable[str] | None) -> frozenset[str] | None:
    """None (an unbound key: every collection) or 1-:data:`MAX_KEY_COLLECTIONS` collection
    ids (``default`` among them if it is meant).

    An empty list is refused rather than read as None: a caller who means "no collections"
    must not get a key that opens all of them. A plain string is refused too (it would be
    read as its letters). The collections need not exist yet: an operator may make a
    tenant's key before the tenant's collection, and a binding only narrows a key.
    """
    if collections is None:
        return None
    if isinstance(collections, str | bytes):
        raise ValidationError("collections must be a list of collection ids, not one string")
    chosen = frozenset(validate_id(c, "collection") for c in collections)
    if not 1 <= len(chosen) <= MAX_KEY_COLLECTIONS:
        raise ValidationError(
            f"a key is bound to 1-{MAX_KEY_COLLECTIONS} collections, or to none (every collection)"
        )
    return chosen


def unknown_collection(name: str) -> UnknownCollectionError:
    """The refusal of a collection a bound key may not see: the same code and message as
    :meth:`~facegate.storage.collections.CollectionStore.get` gives a collection that does
    not exist (a test compares the two answers byte for byte)."""
    return UnknownCollectionError.named(name)


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
    #: The collections the key is bound to; None: unbound, every collection (and the
    #: deployment's routes), as every key made before keys had collections.
    collections: frozenset[str] | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at

    def sees(self, collection: str) -> bool:
        """Whether the key's scopes apply in ``collection``."""
        return self.collections is None or collection in self.collections

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.key_id,
            "name": self.name,
            "scopes": [s for s in SCOPES if s in self.scopes],
            # null: unbound (every collection); sorted, so listings are stable.
            "collections": None if self.collections is None else sorted(self.collections),
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
            collections=_bound_collections(values),
        )


def _bound_collections(values: Mapping[str, Any]) -> frozenset[str] | None:
    """The item's collections. Absent: unbound. Present, the valid ids in it and nothing
    else, so an attribute this version cannot read (a newer version's, a hand edit) binds
    the key to fewer collections, never frees it of its binding."""
    if "collections" not in values:
        return None
    stored = values["collections"]
    names = stored if isinstance(stored, set | list | tuple) else ()
    return frozenset(n for n in names if isinstance(n, str) and ID_PATTERN.match(n))


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
        collections: Iterable[str] | None = None,
    ) -> IssuedKey:
        """A new random key with these scopes, valid until ``expires_at`` (aware, in the
        future) or revoked, in ``collections`` only (:func:`check_collections`; None: in
        every collection). The key is returned once and never stored in clear."""
        chosen = check_scopes(scopes)
        bound = check_collections(collections)
        if expires_at is not None and (
            expires_at.utcoffset() is None or expires_at <= datetime.now(UTC)
        ):
            raise ValidationError("a key's expiry must be a future time with a time zone")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            secrets.token_hex(6), _check_name(name), chosen, utc_now(), expires_at, bound
        )
        item = to_attributes(
            {
                "pk": hash_key(key),
                "id": record.key_id,
                "name": record.name,
                "scopes": set(chosen),
                "created_at": record.created_at,
                # Epoch seconds: the table's TTL attribute.
                "expires_at": None if expires_at is None else int(expires_at.timestamp()),
                # A string set; absent (never empty: DynamoDB has no empty sets) if unbound.
                "collections": None if bound is None else set(bound),
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
        collections: Iterable[str] | None = None,
    ) -> str:
        """:meth:`issue`, the key only (by default with every scope in every collection, as
        the local stack's)."""
        return self.issue(name, scopes, expires_at, collections).key

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

    def authorize(
        self, key: str | None, scope: Scope | None, reach: str | Reach = Reach.DEPLOYMENT
    ) -> ApiKey:
        """The key's record (its collections with it, for the route to filter by) if it
        holds ``scope`` where the request acts (``reach``, :func:`route_reach`).

        401 without a usable key; 403 ``insufficient_scope`` with a key that lacks the scope
        (``None``: a route no scope grants, refused to every key), and for a bound key on a
        route of the deployment; 404 ``unknown_collection`` for a bound key in a collection
        not its own (:func:`unknown_collection`). The scope is checked first: it depends on
        the route alone, so its 403 tells nothing about any collection. ``reach`` defaults
        to the deployment, so a caller that does not say what a request acts on (the
        job-status function) admits unbound keys only.
        """
        if not key:
            raise UnauthorizedError("missing x-api-key header")
        record = self.lookup(key)
        if record is None:
            raise UnauthorizedError("unknown or expired API key")
        if scope is None or scope not in record.scopes:
            raise InsufficientScopeError(
                f"this API key lacks the {scope!r} scope" if scope else "no key may call this"
            )
        if record.collections is None or reach is Reach.LISTING:
            return record
        if reach is Reach.DEPLOYMENT:
            raise InsufficientScopeError(
                "this API key is bound to collections; this route belongs to none"
            )
        if not record.sees(reach):
            raise unknown_collection(reach)
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
