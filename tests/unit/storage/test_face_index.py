"""1:N search over enrolled subjects reads the ``faces`` index, never the table: the ingest
ledger, jobs and tombstones beside the faces cost it nothing. A warm function's cache answers
while the version item says nothing changed, queries only what is new after enrolments, and
reads the index whole after a deletion. On moto, each call counted as botocore sends it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tests_support import unit_rows

from facegate.storage import face_index
from facegate.storage.face_index import FaceIndexCache
from facegate.storage.migrate import index_faces
from facegate.storage.subject_items import FACES_PK, FACES_SK
from facegate.storage.subjects import StoredFace, SubjectStore

TABLE = "facegate-test"  # the table conftest.py's fresh_aws creates
MODEL = "sface"
SHA = "ab" * 32
DIM = 16


class Calls:
    """The DynamoDB operations a client sends, and the key conditions of its queries."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        self.ops: Counter[str] = Counter()
        self.conditions: list[str] = []
        client.meta.events.register("provide-client-params.dynamodb.*", self._seen)

    def _seen(self, params, model, **_):  # type: ignore[no-untyped-def]
        self.ops[model.name] += 1
        if model.name == "Query":
            self.conditions.append(params.get("KeyConditionExpression", ""))

    def reset(self) -> None:
        self.ops.clear()
        self.conditions.clear()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


@pytest.fixture
def store(ddb) -> SubjectStore:
    return SubjectStore(ddb, TABLE)


@pytest.fixture
def calls(ddb) -> Calls:
    return Calls(ddb)


def faces(rng: np.random.Generator, subject: str, n: int = 1) -> list[StoredFace]:
    return [
        StoredFace(face_id=f"f{i}", embedding=v, image_key=f"enrolments/default/{subject}/f{i}.jpg")
        for i, v in enumerate(unit_rows(rng, n, DIM))
    ]


def enrol(store: SubjectStore, rng: np.random.Generator, subject: str, n: int = 1) -> None:
    store.put_faces(subject, faces(rng, subject, n), MODEL, weights_sha256=SHA)


def ledger(ddb, n: int) -> None:  # type: ignore[no-untyped-def]
    """``n`` items of the kinds the table holds beside faces (ingest ledger, jobs)."""
    requests = [
        {"PutRequest": {"Item": {"pk": {"S": f"INGEST#g#{i}"}, "sk": {"S": "PHOTO"}}}}
        for i in range(n)
    ]
    for start in range(0, n, 25):
        ddb.batch_write_item(RequestItems={TABLE: requests[start : start + 25]})


def test_search_never_scans_and_reads_only_faces_of_its_collection_and_model(
    store, ddb, calls, rng
):
    enrol(store, rng, "ann", 2)
    enrol(store, rng, "bob")
    store.in_collection("lobby").put_faces("cat", faces(rng, "cat"), MODEL, weights_sha256=SHA)
    store.put_faces("dan", faces(rng, "dan"), "arcface", weights_sha256=SHA)
    ledger(ddb, 300)
    calls.reset()
    ids, matrix = store.all_embeddings(MODEL)
    assert sorted(ids) == ["ann", "ann", "bob"] and matrix.shape == (3, DIM)
    assert calls.ops == Counter({"GetItem": 1, "Query": 1})  # the version item, the index
    lobby_ids, _ = store.in_collection("lobby").all_embeddings(MODEL)
    assert lobby_ids == ["cat"]


def test_the_cache_answers_until_something_changes(store, calls, rng):
    enrol(store, rng, "ann")
    first = store.all_embeddings(MODEL)
    calls.reset()
    again = store.all_embeddings(MODEL)
    assert calls.ops == Counter({"GetItem": 1})  # the version item only
    assert again[0] == first[0] and np.array_equal(again[1], first[1])


def test_after_an_enrolment_only_the_new_faces_are_queried(store, ddb, calls, rng):
    enrol(store, rng, "ann")
    store.all_embeddings(MODEL)
    # Another function of the deployment enrols (its own store, its own cache).
    other = SubjectStore(ddb, TABLE)
    other.put_faces("bob", faces(rng, "bob", 2), MODEL, weights_sha256=SHA)
    calls.reset()
    ids, matrix = store.all_embeddings(MODEL)
    assert sorted(ids) == ["ann", "bob", "bob"] and matrix.shape == (3, DIM)
    (condition,) = calls.conditions
    assert ">= :since" in condition  # incremental: from the newest face held, less a margin
    bob = {row.tobytes() for row, s in zip(matrix, ids, strict=True) if s == "bob"}
    assert bob == {f.embedding.tobytes() for f in other.get_embeddings("bob")[1]}


def test_after_a_deletion_the_index_is_read_whole_and_the_person_is_gone(store, ddb, calls, rng):
    enrol(store, rng, "ann")
    enrol(store, rng, "bob")
    assert sorted(store.all_embeddings(MODEL)[0]) == ["ann", "bob"]
    SubjectStore(ddb, TABLE).delete_subject("ann")  # another function's DELETE
    calls.reset()
    ids, matrix = store.all_embeddings(MODEL)
    assert ids == ["bob"] and matrix.shape == (1, DIM)
    (condition,) = calls.conditions
    assert "since" not in condition


def test_an_old_entry_is_refreshed_even_when_no_counter_moved(ddb, calls, rng, monkeypatch):
    """A face the index showed late (after the counters moved) is picked up within
    REFRESH_SECONDS."""
    now = [1000.0]
    store = SubjectStore(ddb, TABLE)
    store.faces._clock = lambda: now[0]
    enrol(store, rng, "ann")
    store.all_embeddings(MODEL)
    calls.reset()
    now[0] += face_index.REFRESH_SECONDS / 2
    store.all_embeddings(MODEL)
    assert calls.ops["Query"] == 0
    now[0] += face_index.REFRESH_SECONDS
    store.all_embeddings(MODEL)
    assert calls.ops["Query"] == 1 and ">= :since" in calls.conditions[0]


def test_stores_of_one_process_share_the_cache_across_collections(ddb, rng):
    cache = FaceIndexCache()
    root = SubjectStore(ddb, TABLE, cache=cache)
    lobby = root.in_collection("lobby")
    lobby.put_faces("cat", faces(rng, "cat"), MODEL, weights_sha256=SHA)
    lobby.all_embeddings(MODEL)
    assert lobby.faces.cache is cache and root.in_collection("lobby").faces.cache is cache
    assert cache.get((TABLE, "lobby", MODEL)) is not None
    assert cache.get((TABLE, "default", MODEL)) is None


def test_existing_confirms_subjects_with_a_consistent_read(store, rng):
    enrol(store, rng, "ann")
    enrol(store, rng, "bob")
    store.delete_subject("bob")
    ids = ["ann", "bob", "nobody"] + [f"x{i}" for i in range(150)]  # past one BatchGetItem
    assert store.existing(ids) == {"ann"}
    assert store.existing([]) == set()


def test_faces_written_before_the_index_are_indexed_by_migrate(store, ddb, rng):
    enrol(store, rng, "ann", 2)
    store.in_collection("lobby").put_faces("cat", faces(rng, "cat"), MODEL, weights_sha256=SHA)
    # As an older deployment wrote them: no index keys.
    for page in ddb.get_paginator("scan").paginate(TableName=TABLE):
        for item in page["Items"]:
            if FACES_PK in item:
                ddb.update_item(
                    TableName=TABLE,
                    Key={"pk": item["pk"], "sk": item["sk"]},
                    UpdateExpression="REMOVE #a, #b",
                    ExpressionAttributeNames={"#a": FACES_PK, "#b": FACES_SK},
                )
    fresh = SubjectStore(ddb, TABLE)
    assert fresh.all_embeddings(MODEL)[0] == []
    assert index_faces(ddb, TABLE) == 3
    assert sorted(store.all_embeddings(MODEL)[0]) == ["ann", "ann"]  # its cache refreshed
    assert fresh.in_collection("lobby").all_embeddings(MODEL)[0] == ["cat"]
    assert index_faces(ddb, TABLE) == 0
