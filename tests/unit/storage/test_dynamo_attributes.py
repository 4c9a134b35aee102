"""DynamoDB values through boto3's serializer: the wire format the tables already hold, floats
without rounding, binary as bytes; and the stores' items on moto keep their layout."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from tests_support import erasure_key_for_tests

from facegate.errors import ValidationError
from facegate.storage.dynamo import from_attributes, to_attributes
from facegate.storage.jobs import JobStore
from facegate.storage.ledger import IngestLedger
from facegate.storage.objects import ObjectRef
from facegate.storage.tombstones import Tombstones


def test_values_get_the_wire_types_the_tables_hold():
    embedding = np.arange(4, dtype="<f4").tobytes()
    assert to_attributes(
        {
            "pk": "SUBJECT#default#alice",
            "dim": 128,
            "det_score": 0.998,
            "embedding": embedding,
            "bbox": [10.5, 20.25, 110.0, 140.75],
            "metadata": {"name": "A"},
            "done_chunks": {"3"},
            "outputs": ["a", "b"],
            "absent": None,
        }
    ) == {
        "pk": {"S": "SUBJECT#default#alice"},
        "dim": {"N": "128"},
        "det_score": {"N": "0.998"},
        "embedding": {"B": embedding},
        "bbox": {"L": [{"N": "10.5"}, {"N": "20.25"}, {"N": "110.0"}, {"N": "140.75"}]},
        "metadata": {"M": {"name": {"S": "A"}}},
        "done_chunks": {"SS": ["3"]},
        "outputs": {"L": [{"S": "a"}, {"S": "b"}]},
    }


def test_floats_cross_the_wire_without_rounding():
    rng = np.random.default_rng(3)
    values = [float(v) for v in rng.standard_normal(200) * 10.0 ** rng.integers(-12, 12, 200)]
    values += [0.1, 1e-07, 1700000000.123456, 1e-130, 9.99e125]
    encoded = to_attributes({f"v{i}": v for i, v in enumerate(values)})
    assert encoded["v200"] == {"N": "0.1"}
    decoded = from_attributes(encoded)
    assert [float(decoded[f"v{i}"]) for i in range(len(values))] == values


def test_items_decode_to_plain_values():
    item = {
        "pk": {"S": "JOB#j1"},
        "rows": {"N": "3"},
        "embedding": {"B": b"\x00\x01"},
        "bbox": {"L": [{"N": "1.5"}, {"B": b"\x02"}]},
        "counts": {"M": {"match": {"N": "2"}}},
        "done_chunks": {"SS": ["0", "1"]},
    }
    assert from_attributes(item) == {
        "pk": "JOB#j1",
        "rows": Decimal(3),
        "embedding": b"\x00\x01",
        "bbox": [Decimal("1.5"), b"\x02"],
        "counts": {"match": Decimal(2)},
        "done_chunks": {"0", "1"},
    }
    assert type(from_attributes(item)["embedding"]) is bytes


@pytest.mark.parametrize("value", [float("nan"), float("inf"), set(), 10**40, 1e-200, [2.0**-1074]])
def test_values_dynamodb_cannot_hold_are_refused(value):
    with pytest.raises(ValidationError, match="not storable in DynamoDB"):
        to_attributes({"x": value})


# --------------------------------------------------------------------------------------
# The stores' items on moto: same names and types as the hand-written items had
# --------------------------------------------------------------------------------------


def test_job_items_keep_their_layout(fresh_aws):
    jobs = JobStore(fresh_aws.dynamodb, fresh_aws.table)
    assert jobs.create("j1", rows=5, chunks=2, failed_rows=1)
    assert jobs.chunk_done("j1", 1) == (1, 2)
    jobs.finish("j1", "results/j1/summary.json", "results/j1/results.parquet", {"match": 3})

    key = {"pk": {"S": "JOB#j1"}, "sk": {"S": "META"}}
    item = fresh_aws.dynamodb.get_item(TableName=fresh_aws.table, Key=key)["Item"]
    assert {name: next(iter(value)) for name, value in item.items()} == {
        "pk": "S",
        "sk": "S",
        "job_id": "S",
        "status": "S",
        "rows": "N",
        "chunks": "N",
        "failed_rows": "N",
        "created_at": "S",
        "updated_at": "S",
        "done_chunks": "SS",
        "summary_key": "S",
        "results_key": "S",
        "counts": "M",
    }
    assert item["counts"] == {"M": {"match": {"N": "3"}}}
    status = jobs.get("j1")
    assert (status.rows, status.chunks_done, status.counts) == (5, 1, {"match": 3})


def test_finish_with_no_counts_reads_back_empty_not_missing(fresh_aws):
    jobs = JobStore(fresh_aws.dynamodb, fresh_aws.table)
    jobs.create("j0", rows=0, chunks=0, failed_rows=0)
    jobs.finish("j0", "results/j0/summary.json", "results/j0/results.parquet", {})
    assert jobs.get("j0").counts == {}


def test_ledger_items_keep_their_layout(fresh_aws):
    ledger = IngestLedger(fresh_aws.dynamodb, fresh_aws.table)
    source = ledger.source_id(ObjectRef("b", "uploads/g/s/p.jpg", "v1", None, 3))
    assert ledger.claim(source, now=1700000000.25, lease_seconds=60)
    ledger.complete(source, ["galleries/g/parts/p.parquet"], now=1700000001.5)

    key = {"pk": {"S": f"INGEST#{source}"}, "sk": {"S": "META"}}
    item = fresh_aws.dynamodb.get_item(TableName=fresh_aws.table, Key=key)["Item"]
    assert item["attempts"] == {"N": "1"}
    assert item["outputs"] == {"L": [{"S": "galleries/g/parts/p.parquet"}]}
    assert item["status"] == {"S": "completed"} and "lease_until" not in item
    entry = ledger.get(source)
    assert entry is not None
    assert (entry.status, entry.attempts, entry.lease_until) == ("completed", 1, None)


def test_a_lease_is_stored_exactly(fresh_aws):
    ledger = IngestLedger(fresh_aws.dynamodb, fresh_aws.table)
    source = ledger.source_id(ObjectRef("b", "uploads/g/s/p.jpg", None, "etag", 3))
    ledger.claim(source, now=1700000000.123456, lease_seconds=900)
    key = {"pk": {"S": f"INGEST#{source}"}, "sk": {"S": "META"}}
    item = fresh_aws.dynamodb.get_item(TableName=fresh_aws.table, Key=key)["Item"]
    assert item["lease_until"] == {"N": repr(1700000000.123456 + 900)}
    entry = ledger.get(source)
    assert entry is not None and entry.lease_until == 1700000000.123456 + 900


def test_tombstone_items_keep_their_layout(fresh_aws):
    tombstones = Tombstones(fresh_aws.dynamodb, fresh_aws.table, erasure_key_for_tests())
    stamp = tombstones.record("api", "bob", when="2024-03-02T10:00:00Z")
    digest = erasure_key_for_tests().digest("api", "bob")
    key = {"pk": {"S": "TOMBSTONE"}, "sk": {"S": f"ERASED#{digest}"}}
    item = fresh_aws.dynamodb.get_item(TableName=fresh_aws.table, Key=key)["Item"]
    assert item == {**key, "deleted_at": {"S": stamp}, "scope": {"S": "api"}}
    assert tombstones.record("api", "bob", when="2024-03-01T10:00:00Z") == stamp
    assert tombstones.all().in_scope("api", ["bob"]) == {"bob": stamp}
