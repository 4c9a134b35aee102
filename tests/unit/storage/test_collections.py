"""The collection store on moto: each test checks the answer and the item behind it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from facegate.errors import (
    CollectionExistsError,
    DefaultCollectionError,
    UnknownCollectionError,
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage.collections import (
    DEFAULT_COLLECTION,
    Collection,
    CollectionStore,
    collection_item,
)
from facegate.storage.dynamo import from_attributes, to_attributes
from facegate.storage.subject_items import encode_cursor
from facegate.storage.subjects import SubjectStore

REGION = "eu-west-1"
TABLE = "facegate-test-collections"
MODEL = "sface+dlib"


@pytest.fixture
def settings() -> Settings:
    """The names ``fresh_aws`` (conftest.py) gives moto's table."""
    return Settings(bucket="facegate-test", table=TABLE, aws_region=REGION, aws_endpoint_url=None)


@pytest.fixture
def store(ddb) -> CollectionStore:
    return CollectionStore(ddb, TABLE, default_model_id=MODEL)


def raw_item(ddb, name: str) -> dict | None:
    item = ddb.get_item(
        TableName=TABLE,
        Key=to_attributes({"pk": "COLLECTIONS", "sk": f"COLLECTION#{name}"}),
        ConsistentRead=True,
    ).get("Item")
    return None if item is None else from_attributes(item)


def every_item(ddb) -> list[dict]:
    return [from_attributes(i) for i in ddb.scan(TableName=TABLE)["Items"]]


def test_create_stores_one_item_and_get_reads_it_back(store, ddb):
    created = store.create(
        Collection("lobby", "sface", description="lobby kiosks", far=0.001, multi_face="reject")
    )
    assert created.created_at is not None and created.created_at.endswith("Z")
    assert store.get("lobby") == created
    assert raw_item(ddb, "lobby") == {
        "pk": "COLLECTIONS",
        "sk": "COLLECTION#lobby",
        "name": "lobby",
        "model_id": "sface",
        "description": "lobby kiosks",
        "far": Decimal("0.001"),
        "multi_face": "reject",
        "created_at": created.created_at,
    }  # no threshold attribute: absent, not NULL
    assert store.get("lobby").far == 0.001  # the float crosses the wire exactly


def test_items_stay_out_of_the_subjects_index(store, ddb):
    store.create(Collection("lobby", MODEL, threshold=0.5))
    assert SubjectStore(ddb, TABLE).list_subjects() == ([], None)
    assert all("kind" not in item and "subject_id" not in item for item in every_item(ddb))


def test_a_second_create_of_a_name_is_a_conflict_and_changes_nothing(store, ddb):
    first = store.create(Collection("lobby", MODEL, description="first"))
    with pytest.raises(CollectionExistsError, match="already exists") as refused:
        store.create(Collection("lobby", "sface", description="second", threshold=0.3))
    assert refused.value.code == "collection_exists"
    assert store.get("lobby") == first
    assert raw_item(ddb, "lobby")["description"] == "first"


def test_default_always_exists_and_is_never_stored(store, ddb):
    implicit = store.get(DEFAULT_COLLECTION)
    assert implicit == Collection(DEFAULT_COLLECTION, MODEL)
    assert implicit.created_at is None and implicit.threshold is implicit.far is None
    with pytest.raises(CollectionExistsError, match="always exists"):
        store.create(Collection(DEFAULT_COLLECTION, MODEL, threshold=0.9))
    assert every_item(ddb) == []


def test_unknown_collections_are_404_errors(store):
    with pytest.raises(UnknownCollectionError, match="unknown collection 'nothing'") as unknown:
        store.get("nothing")
    assert unknown.value.code == "unknown_collection"
    with pytest.raises(UnknownCollectionError):
        store.delete("nothing")
    with pytest.raises(ValidationError, match="collection must be"):
        store.get("../x")


def test_delete_removes_the_item_once_and_never_default(store, ddb):
    store.create(Collection("lobby", MODEL))
    store.create(Collection("garage", MODEL))
    store.delete("lobby")
    assert raw_item(ddb, "lobby") is None and raw_item(ddb, "garage") is not None
    with pytest.raises(UnknownCollectionError):
        store.delete("lobby")  # the condition: a second delete is told apart
    with pytest.raises(DefaultCollectionError, match="cannot be deleted") as refused:
        store.delete(DEFAULT_COLLECTION)
    assert refused.value.code == "default_collection"
    assert store.get(DEFAULT_COLLECTION).model_id == MODEL


@pytest.mark.parametrize("limit", [1, 2, 3, 100])
def test_list_pages_through_every_collection_once_default_first(store, limit):
    names = ["zeta", "alpha", "mid_1", "Upper", "0first", "default-2"]
    for name in names:
        store.create(Collection(name, MODEL))
    listed, cursor = [], None
    while True:
        page, cursor = store.list(limit=limit, cursor=cursor)
        assert len(page) <= limit
        listed += [c.name for c in page]
        if cursor is None:
            break
    assert listed == [DEFAULT_COLLECTION, *sorted(names)]


def test_list_of_an_empty_table_is_default_alone(store):
    assert store.list() == ([Collection(DEFAULT_COLLECTION, MODEL)], None)
    page, cursor = store.list(limit=1)
    assert [c.name for c in page] == [DEFAULT_COLLECTION] and cursor is not None
    assert store.list(limit=1, cursor=cursor) == ([], None)  # short pages end with None


def test_a_stored_default_is_read_and_listed_once_first(store, ddb):
    """``create`` never stores ``default``; an item written for it (a later increment's
    settings of it) replaces the implicit one in ``get`` and ``list``."""
    stored = Collection(
        DEFAULT_COLLECTION, MODEL, threshold=0.45, created_at="2024-01-01T00:00:00Z"
    )
    ddb.put_item(TableName=TABLE, Item=collection_item(stored))
    store.create(Collection("aaa", MODEL))
    assert store.get(DEFAULT_COLLECTION) == stored
    assert [c.name for c in store.list()[0]] == [DEFAULT_COLLECTION, "aaa"]
    assert store.list()[0][0] == stored


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64!",
        "e30",
        encode_cursor({"pk": {"S": "COLLECTIONS"}}),
        encode_cursor({"pk": {"S": "SUBJECT#default#alice"}, "sk": {"S": "META"}}),
        encode_cursor({"pk": {"S": "COLLECTIONS"}, "sk": {"S": "FACE#1"}}),
        encode_cursor({"pk": {"N": "1"}, "sk": {"S": "COLLECTION#a"}}),
        encode_cursor({"pk": {"S": "COLLECTIONS"}, "sk": {"S": "COLLECTION#" + "a" * 2000}}),
        encode_cursor({"pk": {"S": "COLLECTIONS"}, "sk": {"S": "COLLECTION#a/b"}}),
        # a cursor of the subjects' listing is not one of this listing
        encode_cursor(
            {
                "pk": {"S": "SUBJECT#default#a"},
                "sk": {"S": "META"},
                "kind": {"S": "SUBJECT"},
                "subject_id": {"S": "a"},
            }
        ),
    ],
)
def test_list_refuses_forged_cursors(store, cursor):
    with pytest.raises(ValidationError, match="invalid cursor"):
        store.list(cursor=cursor)


@pytest.mark.parametrize("limit", [0, 1001, True, 2.0])
def test_list_validates_limit(store, limit):
    with pytest.raises(ValidationError, match="limit"):
        store.list(limit=limit)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "-lobby"}, "collection must be"),
        ({"name": "a/b"}, "collection must be"),
        ({"model_id": ""}, "model_id must be"),
        ({"threshold": 1.5}, "threshold must be between -1 and 1"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"threshold": True}, "threshold must be a finite number"),
        ({"far": 0.0}, "far must be between 0 and 1"),
        ({"far": 1.0}, "far must be between 0 and 1"),
        ({"far": 0.01, "threshold": 0.4}, "not both"),
        ({"description": "x" * 257}, "at most 256"),
        ({"description": "two\nlines"}, "printable"),
        ({"multi_face": "biggest"}, "multi_face must be one of largest, center, all, reject"),
    ],
)
def test_invalid_collections_are_refused_before_any_write(store, ddb, fields, message):
    with pytest.raises(ValidationError, match=message):
        store.create(Collection(**{"name": "lobby", "model_id": MODEL, **fields}))
    assert every_item(ddb) == []


def test_limits_that_are_allowed(store):
    edge = store.create(
        Collection("e", MODEL, description="x" * 256, threshold=-1, multi_face="all")
    )
    assert edge.threshold == -1.0 and isinstance(edge.threshold, float)
    assert store.get("e") == edge
