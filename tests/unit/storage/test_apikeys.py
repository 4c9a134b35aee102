"""API keys: only hashes are stored, in their own table; each key has an id, a name, scopes,
a creation time, an optional expiry and optional collections; it is checked against the
scope a route needs and, when bound, the collection the request acts on."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from facegate.errors import (
    InsufficientScopeError,
    StorageError,
    UnauthorizedError,
    UnknownCollectionError,
    ValidationError,
)
from facegate.storage.apikeys import (
    DEFAULT_COLLECTION_ROUTES,
    LISTING_ROUTES,
    MAX_KEY_COLLECTIONS,
    ROUTE_SCOPES,
    SCOPES,
    ApiKeyStore,
    Reach,
    create_keys_table,
    hash_key,
    route_reach,
    route_scope,
)
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import to_attributes

KEYS_TABLE = "facegate-test-keys"


@pytest.fixture
def keys(fresh_aws) -> ApiKeyStore:
    create_keys_table(fresh_aws.dynamodb, KEYS_TABLE)
    return ApiKeyStore(fresh_aws.dynamodb, KEYS_TABLE)


def _expire(dynamodb, key: str) -> None:
    """As if the key's expiry had passed (DynamoDB's TTL has not removed it yet)."""
    past = int((datetime.now(UTC) - timedelta(minutes=1)).timestamp())
    dynamodb.update_item(
        TableName=KEYS_TABLE,
        Key=to_attributes({"pk": hash_key(key)}),
        UpdateExpression="SET expires_at = :t",
        ExpressionAttributeValues=to_attributes({":t": past}),
    )


def test_a_key_is_stored_as_its_hash_with_a_public_id_name_and_scopes(keys, fresh_aws):
    issued = keys.issue("kiosk", ["verify"])
    assert issued.key.startswith("fg_")
    record = keys.lookup(issued.key)
    assert record == issued.record
    assert record.name == "kiosk" and record.scopes == {"verify"} and record.expires_at is None
    assert re.fullmatch(r"[0-9a-f]{12}", record.key_id)
    # The id is drawn apart from the key: no part of the hash (or of the key) shows in it.
    assert record.key_id not in hash_key(issued.key) and record.key_id not in issued.key
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record.created_at)

    items = fresh_aws.dynamodb.scan(TableName=KEYS_TABLE)["Items"]
    assert [i["pk"]["S"] for i in items] == [hash_key(issued.key)]
    assert issued.key not in str(items)
    assert items[0]["scopes"] == {"SS": ["verify"]}
    # Keys no longer live in the subjects table.
    assert not fresh_aws.dynamodb.scan(TableName=fresh_aws.settings.table)["Items"]


def test_authorize_is_401_without_a_usable_key_and_403_without_the_scope(keys):
    verify = keys.create("verify-only", ["verify"])
    both = keys.create("kiosk", ["verify", "enrol"])
    assert keys.authorize(verify, "verify").name == "verify-only"
    assert keys.authorize(both, "enrol").scopes == {"verify", "enrol"}
    for missing in (None, ""):
        with pytest.raises(UnauthorizedError, match="missing"):
            keys.authorize(missing, "verify")
    with pytest.raises(UnauthorizedError, match="unknown"):
        keys.authorize(verify + "x", "verify")
    for scope in ("enrol", "admin"):
        with pytest.raises(InsufficientScopeError, match=scope):
            keys.authorize(verify, scope)
    with pytest.raises(InsufficientScopeError):
        keys.authorize(both, "admin")
    with pytest.raises(InsufficientScopeError):  # a route no scope grants
        keys.authorize(both, None)


def test_an_expired_key_is_refused_before_the_ttl_removes_it(keys, fresh_aws):
    soon = datetime.now(UTC) + timedelta(days=30)
    key = keys.create("temp", ["verify"], expires_at=soon)
    record = keys.lookup(key)
    assert record is not None and record.expires_at == soon.replace(microsecond=0)
    item = fresh_aws.dynamodb.scan(TableName=KEYS_TABLE)["Items"][0]
    assert item["expires_at"] == {"N": str(int(soon.timestamp()))}  # the TTL attribute

    _expire(fresh_aws.dynamodb, key)
    assert keys.lookup(key) is None
    with pytest.raises(UnauthorizedError):
        keys.authorize(key, "verify")
    listed = keys.all()
    assert [k.name for k in listed] == ["temp"] and listed[0].to_dict()["expired"] is True


def test_expiry_must_be_a_future_aware_time(keys):
    with pytest.raises(ValidationError):
        keys.create("late", ["verify"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(ValidationError):
        keys.create("naive", ["verify"], expires_at=datetime(2999, 1, 1))


@pytest.mark.parametrize("scopes", [[], ["root"], ["verify", "everything"]])
def test_scopes_are_one_or_more_known_ones(keys, scopes):
    with pytest.raises(ValidationError, match="verify, enrol, admin"):
        keys.create("x", scopes)


@pytest.mark.parametrize("name", ["", "x" * 129, "tab\there", 42])
def test_names_are_short_printable_text(keys, name):
    with pytest.raises(ValidationError):
        keys.create(name, ["verify"])


def test_listing_shows_every_key_but_never_a_key_or_its_hash(keys):
    made = [keys.create(f"key-{n}", scopes) for n, scopes in enumerate([["admin"], SCOPES])]
    listed = sorted(keys.all(), key=lambda k: k.name)  # made in the same second, maybe
    assert [k.name for k in listed] == ["key-0", "key-1"]
    assert [k.to_dict()["scopes"] for k in listed] == [["admin"], list(SCOPES)]
    shown = str([k.to_dict() for k in listed]) + repr(listed)
    for key in made:
        assert key not in shown and hash_key(key) not in shown
    assert set(listed[0].to_dict()) == {
        "id",
        "name",
        "scopes",
        "collections",
        "created_at",
        "expires_at",
        "expired",
    }


def test_revoke_by_id(keys):
    first, second = keys.issue("a", ["verify"]), keys.issue("b", ["verify"])
    assert keys.revoke(first.record.key_id) is True
    assert keys.lookup(first.key) is None
    assert keys.lookup(second.key) == second.record
    assert keys.revoke(first.record.key_id) is False
    assert keys.revoke("000000000000") is False
    assert [k.key_id for k in keys.all()] == [second.record.key_id]


def test_listing_pages_through_the_table(keys, fresh_aws, monkeypatch):
    made = {keys.issue(f"k{n}", ["verify"]).record.key_id for n in range(5)}
    scan = fresh_aws.dynamodb.scan
    monkeypatch.setattr(fresh_aws.dynamodb, "scan", lambda **kw: scan(**kw, Limit=2))
    assert {k.key_id for k in keys.all()} == made
    target = sorted(made)[-1]
    assert keys.revoke(target) and {k.key_id for k in keys.all()} == made - {target}


def test_dynamodb_failures_are_storage_errors_not_unknown_keys(fresh_aws):
    keys = ApiKeyStore(aws_client("dynamodb", fresh_aws.settings), "no-such-table")
    with pytest.raises(StorageError):
        keys.lookup("fg_anything")
    with pytest.raises(StorageError):
        keys.create("x", ["verify"])
    with pytest.raises(StorageError):
        keys.all()


def test_route_scopes():
    assert route_scope("POST", "/compare") == "verify"
    assert route_scope("post", "/subjects/{subject_id}/faces") == "enrol"
    assert route_scope("DELETE", "/subjects/{subject_id}") == "admin"
    assert route_scope("HEAD", "/jobs/{job_id}") == "admin"
    assert route_scope("GET", "/health") is None  # needs no key: never checked
    assert route_scope("PUT", "/compare") is None
    assert set(ROUTE_SCOPES.values()) == set(SCOPES)


# -- keys bound to collections ---------------------------------------------------------


def test_a_bound_key_stores_its_collections_and_an_unbound_one_none(keys, fresh_aws):
    bound = keys.issue("kiosk-lobby", ["verify"], collections=["lobby", "default", "lobby"])
    unbound = keys.issue("ops", ["admin"])
    assert keys.lookup(bound.key) == bound.record
    assert bound.record.collections == {"lobby", "default"}
    assert bound.record.to_dict()["collections"] == ["default", "lobby"]
    assert keys.lookup(unbound.key).collections is None
    assert unbound.record.to_dict()["collections"] is None
    items = {i["name"]["S"]: i for i in fresh_aws.dynamodb.scan(TableName=KEYS_TABLE)["Items"]}
    assert sorted(items["kiosk-lobby"]["collections"]["SS"]) == ["default", "lobby"]
    # Unbound is no attribute at all (every key made before bindings reads the same).
    assert "collections" not in items["ops"]
    assert {k.name: k.collections for k in keys.all()} == {
        "kiosk-lobby": {"lobby", "default"},
        "ops": None,
    }


@pytest.mark.parametrize(
    "collections,message",
    [
        ([], "1-100 collections"),  # never read as "unbound"
        ("lobby", "not one string"),  # would be l, o, b, y
        (["lobby", "-rf"], "collection must be"),
        (["a/b"], "collection must be"),
        ([""], "collection must be"),
        ([f"c{n}" for n in range(MAX_KEY_COLLECTIONS + 1)], "1-100 collections"),
    ],
)
def test_collections_are_one_or_more_ids(keys, fresh_aws, collections, message):
    with pytest.raises(ValidationError, match=message):
        keys.create("x", ["verify"], collections=collections)
    assert not fresh_aws.dynamodb.scan(TableName=KEYS_TABLE)["Items"]


def test_up_to_the_limit_of_collections(keys):
    many = [f"c{n}" for n in range(MAX_KEY_COLLECTIONS)]
    assert keys.lookup(keys.create("wide", ["verify"], collections=many)).collections == set(many)


def test_authorize_narrows_a_bound_key_to_its_collections(keys):
    bound = keys.create("tenant", SCOPES, collections=["lobby"])
    unbound = keys.create("ops", SCOPES)
    assert keys.authorize(bound, "verify", "lobby").collections == {"lobby"}
    assert keys.authorize(bound, "admin", Reach.LISTING).collections == {"lobby"}
    for other in ("office", "default", "nowhere"):
        # The store's own refusal of a collection that does not exist, word for word.
        with pytest.raises(UnknownCollectionError) as refused:
            keys.authorize(bound, "enrol", other)
        assert (refused.value.code, refused.value.message) == (
            "unknown_collection",
            f"unknown collection {other!r}",
        )
    with pytest.raises(InsufficientScopeError, match="bound to collections"):
        keys.authorize(bound, "admin", Reach.DEPLOYMENT)
    with pytest.raises(InsufficientScopeError, match="bound to collections"):
        keys.authorize(bound, "admin")  # a caller that names no reach: the deployment
    for reach in ("lobby", "office", Reach.LISTING, Reach.DEPLOYMENT):
        assert keys.authorize(unbound, "admin", reach).collections is None
    assert keys.authorize(unbound, "admin").name == "ops"


def test_the_scope_is_checked_before_the_collection(keys):
    """A 403 for the scope depends on the route only: it says nothing of a collection."""
    verify = keys.create("kiosk", ["verify"], collections=["lobby"])
    with pytest.raises(InsufficientScopeError, match="'admin' scope"):
        keys.authorize(verify, "admin", "office")
    with pytest.raises(UnauthorizedError):
        keys.authorize(verify + "x", "verify", "lobby")


@pytest.mark.parametrize(
    "stored,bound",
    [
        ({"SS": ["lobby", "../x"]}, {"lobby"}),  # an id this version refuses is dropped
        ({"S": "lobby"}, set()),  # not a set: bound to nothing, never unbound
        ({"L": [{"S": "lobby"}, {"N": "1"}]}, {"lobby"}),
    ],
)
def test_a_binding_this_version_cannot_read_narrows_never_widens(keys, fresh_aws, stored, bound):
    key = keys.create("tenant", ["verify"], collections=["lobby"])
    fresh_aws.dynamodb.update_item(
        TableName=KEYS_TABLE,
        Key=to_attributes({"pk": hash_key(key)}),
        UpdateExpression="SET collections = :c",
        ExpressionAttributeValues={":c": stored},
    )
    assert keys.lookup(key).collections == bound
    with pytest.raises(UnknownCollectionError):
        keys.authorize(key, "verify", "office")
    with pytest.raises(InsufficientScopeError):
        keys.authorize(key, "verify", Reach.DEPLOYMENT)


def test_route_reach():
    """What each route acts on, for a bound key: its ``{collection}``, ``default``, every
    collection (a listing that filters) or the deployment (everything else)."""
    params = {"collection": "lobby", "subject_id": "pat"}
    assert route_reach("POST", "/collections/{collection}/compare", params) == "lobby"
    assert route_reach("head", "/collections/{collection}", params) == "lobby"
    assert route_reach("DELETE", "/collections/{collection}/subjects/{subject_id}", params) == (
        "lobby"
    )
    assert route_reach("GET", "/collections/{collection}", {}) is Reach.DEPLOYMENT
    assert route_reach("POST", "/compare", params) == "default"
    assert route_reach("HEAD", "/subjects/{subject_id}", params) == "default"
    assert route_reach("GET", "/collections", {}) is Reach.LISTING
    for route in (
        "POST /collections",
        "GET /subjects/{subject_id}/export",
        "GET /galleries/{gallery}",
        "POST /reembed",
        "GET /jobs/{job_id}",
        "GET /erasures/{erasure_id}",
        "GET /openapi.json",
        "GET /somewhere/new",  # a route nobody placed: the deployment's, closed to tenants
    ):
        method, path = route.split(" ")
        assert route_reach(method, path, params) is Reach.DEPLOYMENT, route
    # Both lists name routes that exist, and no route is in both or names a collection.
    assert (DEFAULT_COLLECTION_ROUTES | LISTING_ROUTES).issubset(ROUTE_SCOPES)
    assert not DEFAULT_COLLECTION_ROUTES & LISTING_ROUTES
    assert not any("{collection}" in r for r in DEFAULT_COLLECTION_ROUTES | LISTING_ROUTES)
