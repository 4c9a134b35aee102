"""A DELETE that overlaps an enrolment of the same subject ends with the whole subject or
nothing of it: never photos that no record names, never a record of a deleted subject.

Each interleaving is forced without threads: one operation runs inside a store call of the
other (a PhotoStore whose put, or a SubjectStore whose item deletion, runs the other first).
The two services have their own store objects, as two Lambda invocations would. The bucket is
versioned, as the deployed one is, so "nothing" means no object version and no delete marker
under the subject's prefix, and no item in the subject's partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from service_fakes import ANN_1, ANN_2, ANN_PROBE, FakeProcessor, photo_versions, subject_items
from tests_support import run_first

import facegate.storage.tombstones as tombstones_module
from facegate.errors import StorageError, SubjectDeletedError, UnknownSubjectError
from facegate.http_errors import status_for
from facegate.service import FaceService
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import MAX_FACES_PER_PUT, SubjectStore
from facegate.storage.tombstones import ErasureKey, Tombstones


def _service(fresh_aws: Any, processor: FakeProcessor) -> FaceService:
    settings = fresh_aws.settings
    return FaceService(
        processor,
        SubjectStore.from_settings(settings),
        PhotoStore.from_settings(settings),
        Tombstones.from_settings(settings),
    )


@dataclass
class Two:
    """The enrolling and the deleting side, over one versioned bucket and one table."""

    enrolling: FaceService
    deleting: FaceService


@pytest.fixture
def two(fresh_aws, processor) -> Two:
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    return Two(_service(fresh_aws, processor), _service(fresh_aws, processor))


def _assert_gone(fresh_aws: Any, subject_id: str) -> None:
    assert photo_versions(fresh_aws, subject_id) == []
    assert subject_items(fresh_aws, subject_id) == []


def test_a_delete_after_the_first_photo_is_stored_wins(fresh_aws, two):
    """Fence read, first photo stored, then the whole DELETE, then the rest of the enrolment:
    the transaction finds the generation moved, and the enrolment erases its photos."""
    two.enrolling.enrol("ann", [ANN_1])
    answers: list[dict[str, Any]] = []
    run_first(
        two.enrolling.photos,
        "put",
        lambda: answers.append(two.deleting.delete_subject("ann")),
        after=1,
    )
    with pytest.raises(SubjectDeletedError, match="'ann' was deleted while") as raised:
        two.enrolling.enrol("ann", [ANN_2, ANN_PROBE])
    assert raised.value.code == "subject_deleted" and status_for(raised.value) == 409
    assert answers[0]["deleted_faces"] == 1 and answers[0]["deleted_photos"] == 2
    _assert_gone(fresh_aws, "ann")


def test_a_delete_between_the_last_photo_and_the_record_wins(fresh_aws, two):
    """Every photo stored, the DELETE runs whole, then the transaction: refused, erased."""
    two.enrolling.enrol("ann", [ANN_1])
    run_first(two.enrolling.subjects, "write_faces", lambda: two.deleting.delete_subject("ann"))
    with pytest.raises(SubjectDeletedError):
        two.enrolling.enrol("ann", [ANN_2, ANN_PROBE])
    _assert_gone(fresh_aws, "ann")


def test_an_enrolment_that_starts_while_a_delete_runs_stores_nothing(fresh_aws, two):
    """The other order: the DELETE has swept the photos and is about to delete the items
    when a whole enrolment runs. Its photos would escape the sweep and its items go with the
    subject's; the DELETE's mark refuses it before it stores anything."""
    two.enrolling.enrol("ann", [ANN_1])
    refused: list[SubjectDeletedError] = []

    def enrol() -> None:
        with pytest.raises(SubjectDeletedError, match="'ann' is being deleted") as raised:
            two.enrolling.enrol("ann", [ANN_2, ANN_PROBE])
        refused.append(raised.value)

    run_first(two.deleting.subjects, "delete_subject", enrol)
    assert two.deleting.delete_subject("ann")["deleted_faces"] == 1
    assert len(refused) == 1
    _assert_gone(fresh_aws, "ann")


def test_an_enrolment_that_starts_during_the_photo_sweep_stores_nothing(fresh_aws, two):
    """Just before the sweep: today's sweep would take its photos, but its answer (201, with
    a face count) would describe a subject the DELETE then erases. Refused instead."""
    two.enrolling.enrol("ann", [ANN_1])
    outcome: list[BaseException] = []

    def enrol() -> None:
        try:
            two.enrolling.enrol("ann", [ANN_2])
        except SubjectDeletedError as exc:
            outcome.append(exc)

    run_first(two.deleting.photos, "delete_subject", enrol)
    two.deleting.delete_subject("ann")
    assert [type(e) for e in outcome] == [SubjectDeletedError]
    _assert_gone(fresh_aws, "ann")


def test_a_slow_delete_still_refuses_enrolments_after_a_quicker_one_ended(
    fresh_aws, two, processor
):
    """A client retries its DELETE while the first still runs: the retry ends first, but the
    first one's sweep is still to come, so an enrolment must still be refused."""
    two.enrolling.enrol("ann", [ANN_1])
    retry = _service(fresh_aws, processor)
    refused: list[SubjectDeletedError] = []

    def retry_then_enrol() -> None:
        retry.delete_subject("ann")
        try:
            two.enrolling.enrol("ann", [ANN_2])
        except SubjectDeletedError as exc:
            refused.append(exc)

    run_first(two.deleting.photos, "delete_subject", retry_then_enrol)
    with pytest.raises(UnknownSubjectError):
        two.deleting.delete_subject("ann")  # the retry took the items first
    assert len(refused) == 1
    _assert_gone(fresh_aws, "ann")


def test_an_enrolment_that_finished_before_the_delete_is_deleted_with_it(fresh_aws, two):
    two.enrolling.enrol("ann", [ANN_1])
    two.enrolling.enrol("ann", [ANN_2])
    assert two.deleting.delete_subject("ann")["deleted_faces"] == 2
    _assert_gone(fresh_aws, "ann")


def test_a_deleted_id_can_be_enrolled_again_once_the_delete_answered(fresh_aws, two):
    two.enrolling.enrol("ann", [ANN_1])
    two.deleting.delete_subject("ann")
    again = two.enrolling.enrol("ann", [ANN_2])
    assert again["accepted"] == 1 and again["face_count"] == 1
    assert len(photo_versions(fresh_aws, "ann")) == 1
    two.deleting.delete_subject("ann")  # and deleted again: the fence moves on
    _assert_gone(fresh_aws, "ann")
    assert two.enrolling.enrol("ann", [ANN_PROBE])["face_count"] == 1


def test_a_delete_that_fails_midway_takes_its_mark_out(fresh_aws, two, monkeypatch):
    """It will write nothing more: enrolments need not wait for the mark to expire. The
    subject is still there (items untouched) and a retried DELETE finishes the job."""
    two.enrolling.enrol("ann", [ANN_1])

    def refuse(subject_id: str) -> None:
        raise StorageError("S3 said no")

    monkeypatch.setattr(two.deleting.photos, "delete_subject", refuse)
    with pytest.raises(StorageError, match="S3 said no"):
        two.deleting.delete_subject("ann")
    assert two.enrolling.enrol("ann", [ANN_2])["face_count"] == 2
    monkeypatch.undo()
    two.deleting.delete_subject("ann")
    _assert_gone(fresh_aws, "ann")


class _Later(datetime):
    """The clock of :mod:`facegate.storage.tombstones`, one lease later."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + tombstones_module.DELETION_LEASE + timedelta(seconds=1)


def test_a_delete_killed_before_its_end_blocks_enrolment_until_its_mark_expires(
    fresh_aws, two, monkeypatch
):
    """A function timeout: the mark stays. No invocation outlives the lease, so past it the
    mark no longer refuses enrolments, and the next DELETE of the subject removes it."""
    tombstones = two.deleting.tombstones
    assert tombstones is not None
    two.enrolling.enrol("ann", [ANN_1])
    before = subject_items(fresh_aws, "ann")
    killed = tombstones.begin_deletion("ann")  # ... and never ends
    with pytest.raises(SubjectDeletedError, match="being deleted"):
        two.enrolling.enrol("ann", [ANN_2])
    assert subject_items(fresh_aws, "ann") == before and len(photo_versions(fresh_aws, "ann")) == 1

    monkeypatch.setattr(tombstones_module, "datetime", _Later)
    assert two.enrolling.enrol("ann", [ANN_2])["face_count"] == 2
    assert killed.mark in _marks(fresh_aws, "ann")
    two.deleting.delete_subject("ann")
    assert _marks(fresh_aws, "ann") == set()
    _assert_gone(fresh_aws, "ann")


def _marks(fresh_aws: Any, subject_id: str) -> set[str]:
    key = ErasureKey.from_settings(fresh_aws.settings)
    item = fresh_aws.dynamodb.get_item(
        TableName=fresh_aws.settings.table,
        Key={"pk": {"S": "TOMBSTONE"}, "sk": {"S": f"ERASED#{key.digest('api', subject_id)}"}},
        ConsistentRead=True,
    )["Item"]
    return set(item.get("deleting", {}).get("SS", []))


def test_the_tombstone_keeps_its_deletion_time_for_compaction(fresh_aws, two):
    two.enrolling.enrol("ann", [ANN_1])
    before = datetime.now(UTC)
    two.deleting.delete_subject("ann")
    tombstones = two.deleting.tombstones
    assert tombstones is not None
    stamp = tombstones.all().in_scope("api", ["ann"])["ann"]
    deleted_at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert deleted_at >= before.replace(microsecond=0)


def test_a_full_record_and_the_fence_fit_in_one_transaction(fresh_aws, two):
    """DynamoDB takes at most 100 items per transaction: the META item, the fence's check
    and :data:`MAX_FACES_PER_PUT` faces."""
    answer = two.enrolling.enrol("ann", [ANN_1] * MAX_FACES_PER_PUT)
    assert answer["face_count"] == MAX_FACES_PER_PUT
