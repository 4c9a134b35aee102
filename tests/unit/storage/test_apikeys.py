"""API keys: only hashes are stored, in their own table; each key has an id, a name, scopes,
a creation time and an optional expiry; it is checked against the scope a route needs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from facegate.errors import (
    InsufficientScopeError,
    StorageError,
    UnauthorizedError,
    ValidationError,
)
from facegate.storage.apikeys import (
    ROUTE_SCOPES,
    SCOPES,
    ApiKeyStore,
    create_keys_table,
    hash_key,
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
