"""Results written while a person is erased: rows answered as the gallery without them, only
for erasures since the job began and in the gallery's own scope; the write checked again
after it, replacing the version written. On moto, with real results tables and tombstones."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from tests_support import erasure_key_for_tests

from facegate.batch.results import build_results_table
from facegate.batch.results_guard import ERASED, guard, write_checked
from facegate.common import iso_seconds
from facegate.storage.objects import ObjectStore
from facegate.storage.tombstones import Tombstones, gallery_scope

RECORDS = [
    {"row": 0, "probe": "jobs/j/ann.jpg", "mode": "verify", "gallery": "g",
     "claimed_subject": "ann", "decision": "match", "similarity": 0.8, "threshold": 0.5},
    {"row": 1, "probe": "jobs/j/1.jpg", "mode": "identify", "gallery": "g",
     "decision": "identified", "similarity": 0.9, "threshold": 0.5, "best_subject": "ann",
     "ranks": [{"subject_id": "ann", "similarity": 0.9}, {"subject_id": "bob", "similarity": 0.6}]},
    {"row": 2, "probe": "jobs/j/2.jpg", "mode": "identify", "gallery": "g",
     "decision": "not_identified", "similarity": 0.4, "threshold": 0.5,
     "ranks": [{"subject_id": "bob", "similarity": 0.4}, {"subject_id": "ann", "similarity": 0.3}]},
    {"row": 3, "probe": "jobs/j/3.jpg", "mode": "verify", "gallery": "h",
     "claimed_subject": "ann", "decision": "no_match", "similarity": 0.1, "threshold": 0.5},
]  # fmt: skip


@pytest.fixture
def tombstones(fresh_aws) -> Tombstones:
    return Tombstones(fresh_aws.dynamodb, fresh_aws.settings.table, erasure_key_for_tests())


def _own(gallery: str) -> str:
    return gallery_scope(gallery)


def _since(seconds: int) -> str:
    return iso_seconds(datetime.now(UTC) + timedelta(seconds=seconds))


def test_rows_naming_a_person_erased_during_the_job_are_answered_without_them(tombstones):
    tombstones.record(gallery_scope("g"), "ann")
    table, changed = guard(build_results_table(RECORDS), tombstones, _since(-60), _own)
    rows = table.to_pylist()
    assert changed == 3
    assert rows[0]["decision"] == "failed" and rows[0]["reason"] == ERASED
    assert (rows[0]["claimed_subject"], rows[0]["probe"]) == (None, "")
    # Identified as ann: the next one up, bob, clears the threshold in a gallery without her.
    assert (rows[1]["decision"], rows[1]["best_subject"]) == ("identified", "bob")
    assert rows[1]["similarity"] == pytest.approx(0.6)
    assert [r["subject_id"] for r in rows[2]["ranks"]] == ["bob"]
    assert rows[2]["decision"] == "not_identified"
    assert rows[3]["claimed_subject"] == "ann"  # gallery h's ann is someone else


def test_an_erasure_before_the_job_or_in_another_scope_changes_nothing(tombstones):
    tombstones.record(gallery_scope("g"), "ann")
    table = build_results_table(RECORDS)
    assert guard(table, tombstones, _since(60), _own) == (table, 0)  # the job began after
    tombstones.record(gallery_scope("other"), "bob")
    assert guard(table, tombstones, _since(60), _own)[1] == 0


def test_a_re_embedded_gallery_is_checked_in_its_source_scope(tombstones):
    tombstones.record(gallery_scope("src"), "ann")
    table = build_results_table(RECORDS)
    assert guard(table, tombstones, _since(-60), _own)[1] == 0
    changed = guard(table, tombstones, _since(-60), lambda g: gallery_scope("src"))[1]
    assert changed == 4


def test_an_erasure_between_the_write_and_its_check_replaces_the_version_written(
    fresh_aws, tombstones
):
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    objects = ObjectStore(fresh_aws.s3, fresh_aws.bucket)
    since, calls = _since(-60), []

    def check(table):
        calls.append(1)
        if len(calls) == 2:  # the erasure lands after the first check, before the second
            tombstones.record(gallery_scope("g"), "ann")
        return guard(table, tombstones, since, _own)

    key = "results/j/chunks/00000.parquet"
    written = write_checked(objects, key, build_results_table(RECORDS), check)
    assert len(calls) == 2 and written["claimed_subject"].to_pylist()[0] is None
    (version,) = objects.versions(key)
    stored = pq.read_table(io.BytesIO(objects.get(key).body))
    assert stored.to_pylist() == written.to_pylist()
    assert "ann" not in str(stored.to_pylist()[:3])
    assert version[0] == key
