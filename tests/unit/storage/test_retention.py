"""Retention on DynamoDB: the TTL (``expires_at``) the stores write, on moto.

Ingest ledger entries, jobs and tombstones expire with what they describe; subjects and faces
never do. The figures come from the settings the template sets (``FACEGATE_*_DAYS``), and a
tombstone's is derived from them so that it outlives every source that could bring its
subject back.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from tests_support import erasure_key_for_tests, unit_rows

from facegate.settings import DEAD_LETTER_RETENTION_DAYS, TOMBSTONE_MARGIN_DAYS, Settings
from facegate.storage.jobs import JobStore
from facegate.storage.ledger import IngestLedger
from facegate.storage.objects import ObjectRef
from facegate.storage.subjects import StoredFace, SubjectStore
from facegate.storage.tombstones import Tombstones

DAY = 86_400
KEY = erasure_key_for_tests()
TOMBSTONE_KEY = {"pk": {"S": "TOMBSTONE"}, "sk": {"S": f"ERASED#{KEY.digest('api', 'bob')}"}}


def _settings(fresh_aws: Any, **retention: int) -> Settings:
    """The test's moto settings with other retention figures."""
    return Settings(**{**fresh_aws.settings.model_dump(), **retention})


def _item(fresh_aws: Any, key: dict[str, Any]) -> dict[str, Any]:
    return fresh_aws.dynamodb.get_item(TableName=fresh_aws.table, Key=key, ConsistentRead=True)[
        "Item"
    ]


def _expires(item: dict[str, Any]) -> int:
    return int(item["expires_at"]["N"])


# --------------------------------------------------------------------------------------
# How long a tombstone lives
# --------------------------------------------------------------------------------------


def test_tombstones_expire_once_no_source_can_bring_the_person_back() -> None:
    """An erasure rewrites every part that held the person: the tombstone only has to outlive
    the sources that predate it (uploads, old versions, dead letters)."""
    assert Settings().tombstone_retention == Settings().tombstone_lifetime_days == 38
    short = Settings(uploads_retention_days=1, jobs_retention_days=1)
    assert short.tombstone_retention == DEAD_LETTER_RETENTION_DAYS + TOMBSTONE_MARGIN_DAYS
    assert Settings(uploads_retention_days=0).tombstone_retention is None


def test_a_tombstone_outlives_every_source_that_could_bring_its_subject_back() -> None:
    defaults = Settings()
    # An upload's current version (30 days), then its old version (1 day), then S3's slack.
    assert defaults.tombstone_lifetime_days == 30 + 1 + TOMBSTONE_MARGIN_DAYS
    longer = Settings(uploads_retention_days=60, jobs_retention_days=10, noncurrent_version_days=5)
    assert longer.tombstone_lifetime_days == 60 + 5 + TOMBSTONE_MARGIN_DAYS
    jobs = Settings(uploads_retention_days=3, jobs_retention_days=45)
    assert jobs.tombstone_lifetime_days == 45 + 1 + TOMBSTONE_MARGIN_DAYS
    # A dead-lettered notification can be redriven for 14 days, whatever the uploads' days.
    short = Settings(uploads_retention_days=1, jobs_retention_days=1)
    assert short.tombstone_lifetime_days == DEAD_LETTER_RETENTION_DAYS + TOMBSTONE_MARGIN_DAYS


@pytest.mark.parametrize("kept", ["uploads_retention_days", "jobs_retention_days"])
def test_a_tombstone_is_kept_for_ever_while_its_sources_are(kept: str) -> None:
    assert Settings(**{kept: 0}).tombstone_lifetime_days is None


def test_the_ledger_outlives_every_delivery_of_a_notification() -> None:
    assert Settings().ledger_retention_days > DEAD_LETTER_RETENTION_DAYS
    with pytest.raises(ValueError, match="ledger_retention_days"):
        Settings(ledger_retention_days=DEAD_LETTER_RETENTION_DAYS)


# --------------------------------------------------------------------------------------
# The items
# --------------------------------------------------------------------------------------


def test_ledger_entries_expire_after_the_ledger_retention(fresh_aws) -> None:
    ledger = IngestLedger.from_settings(_settings(fresh_aws, ledger_retention_days=20))
    source = ledger.source_id(ObjectRef("b", "uploads/g/s/p.jpg", "v1", None, 3))
    key = {"pk": {"S": f"INGEST#{source}"}, "sk": {"S": "META"}}

    assert ledger.claim(source, now=1_700_000_000.75, lease_seconds=60)
    assert _expires(_item(fresh_aws, key)) == 1_700_000_000 + 20 * DAY
    # Completing counts the retention from the completion: redeliveries come after it.
    ledger.complete(source, ["galleries/g/parts/p.parquet"], now=1_700_003_600.5)
    assert _expires(_item(fresh_aws, key)) == 1_700_003_600 + 20 * DAY
    entry = ledger.get(source)
    assert entry is not None and entry.status == "completed"


def test_job_items_expire_with_their_objects(fresh_aws) -> None:
    jobs = JobStore.from_settings(_settings(fresh_aws, jobs_retention_days=9))
    before = int(time.time())
    assert jobs.create("j1", rows=3, chunks=1, failed_rows=0)
    after = int(time.time())
    expires = _expires(_item(fresh_aws, {"pk": {"S": "JOB#j1"}, "sk": {"S": "META"}}))
    assert before + 9 * DAY <= expires <= after + 9 * DAY
    assert jobs.get("j1").status == "running"


def test_jobs_kept_for_ever_get_no_ttl(fresh_aws) -> None:
    jobs = JobStore.from_settings(_settings(fresh_aws, jobs_retention_days=0))
    assert jobs.create("j2", rows=3, chunks=1, failed_rows=0)
    assert "expires_at" not in _item(fresh_aws, {"pk": {"S": "JOB#j2"}, "sk": {"S": "META"}})


def test_every_delete_pushes_the_tombstone_expiry_out(fresh_aws) -> None:
    days = 28  # once tombstones expire (Settings.tombstone_lifetime_days)
    tombstones = Tombstones(fresh_aws.dynamodb, fresh_aws.settings.table, KEY, days)

    before = int(time.time())
    stamp = tombstones.record("api", "bob", when="2024-03-02T10:00:00Z")
    first = _expires(_item(fresh_aws, TOMBSTONE_KEY))
    # From the time of the DELETE, not from the deletion time it records.
    assert before + days * DAY <= first <= int(time.time()) + days * DAY

    deletion = tombstones.begin_deletion("bob")
    item = _item(fresh_aws, TOMBSTONE_KEY)
    assert _expires(item) >= first and item["generation"] == {"N": "1"}
    tombstones.end_deletion(deletion)
    assert tombstones.all().in_scope("api", ["bob"]) == {"bob": stamp}


def test_a_tombstone_kept_for_ever_loses_an_earlier_ttl(fresh_aws) -> None:
    """A deployment that starts keeping uploads keeps its tombstones too, from the next
    DELETE of each subject on."""
    Tombstones(fresh_aws.dynamodb, fresh_aws.settings.table, KEY, 38).record("api", "bob")
    assert "expires_at" in _item(fresh_aws, TOMBSTONE_KEY)
    kept = Tombstones.from_settings(_settings(fresh_aws, uploads_retention_days=0), KEY)
    kept.end_deletion(kept.begin_deletion("bob"))
    assert "expires_at" not in _item(fresh_aws, TOMBSTONE_KEY)
    kept.record("api", "bob")
    assert "expires_at" not in _item(fresh_aws, TOMBSTONE_KEY)


def test_subjects_enrolled_again_after_a_delete_never_expire(fresh_aws) -> None:
    """The tombstone expires; the same id enrolled after the DELETE is a subject like any
    other, with no TTL on its items."""
    settings = _settings(fresh_aws)
    tombstones = Tombstones(fresh_aws.dynamodb, settings.table, KEY, 38)
    tombstones.end_deletion(tombstones.begin_deletion("bob"))
    (vector,) = unit_rows(np.random.default_rng(3), 1, 128)
    face = StoredFace(
        face_id="f1",
        embedding=vector,
        image_key="enrolments/default/bob/f1.jpg",
        bbox=(1.0, 2.0, 30.0, 40.0),
        det_score=0.99,
    )
    SubjectStore.from_settings(settings).write_faces(
        "bob", [face], "sface", weights_sha256="ab" * 32, fence=tombstones.fence("bob")
    )
    items = fresh_aws.dynamodb.scan(TableName=fresh_aws.table, ConsistentRead=True)["Items"]
    subject_items = [i for i in items if i["pk"]["S"] != "TOMBSTONE"]
    assert subject_items and not any("expires_at" in i for i in subject_items)
    assert "expires_at" in _item(fresh_aws, TOMBSTONE_KEY)
