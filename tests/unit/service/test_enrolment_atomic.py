"""Enrolment is all or nothing: a failure at any photo or at the record leaves no photo
version and no item behind, and the caller sees the error that stopped it.

The bucket is versioned, as the deployed one is, so "nothing left" means no object version
and no delete marker under the subject's prefix, not merely no current object.
"""

from __future__ import annotations

from typing import Any

import pytest
from service_fakes import (
    ANN_1,
    ANN_2,
    ANN_PROBE,
    BOB,
    FakeProcessor,
    make_card,
    photo_versions,
    subject_items,
)

from facegate.errors import ModelMismatchError, StorageError, ValidationError
from facegate.service import FaceService
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import MAX_FACES_PER_PUT, SubjectStore


@pytest.fixture
def service(fresh_aws, processor: FakeProcessor) -> FaceService:
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    settings = fresh_aws.settings
    return FaceService(
        processor, SubjectStore.from_settings(settings), PhotoStore.from_settings(settings)
    )


def _failing_put(monkeypatch, error: BaseException, *, at: int, after_write: bool) -> list[str]:
    """Make the ``at``-th :meth:`PhotoStore.put` (1-based) raise ``error``, before its write or
    after it (a timeout once S3 has stored the object); return the keys of every call."""
    real = PhotoStore.put
    calls: list[str] = []

    def put(self: PhotoStore, *args: Any, **kwargs: Any) -> str:
        calls.append(args[0] if args else kwargs["subject_id"])
        if len(calls) == at and not after_write:
            raise error
        key = real(self, *args, **kwargs)
        if len(calls) == at:
            raise error
        return key

    monkeypatch.setattr(PhotoStore, "put", put)
    return calls


@pytest.mark.parametrize("after_write", [False, True], ids=["before-write", "after-write"])
@pytest.mark.parametrize(
    "error", [StorageError("S3 said no"), RuntimeError("bug")], ids=["storage", "other"]
)
def test_a_photo_put_failing_midway_leaves_nothing(
    fresh_aws, service, monkeypatch, error, after_write
):
    calls = _failing_put(monkeypatch, error, at=2, after_write=after_write)
    with pytest.raises(type(error)) as raised:
        service.enrol("ann", [ANN_1, ANN_2, ANN_PROBE])
    assert raised.value is error and len(calls) == 2
    assert photo_versions(fresh_aws, "ann") == [] and subject_items(fresh_aws, "ann") == []


def test_a_failed_enrolment_of_an_enrolled_subject_keeps_only_what_was_there(
    fresh_aws, service, monkeypatch
):
    first = service.enrol("ann", [ANN_1])
    before_items, before_versions = (
        subject_items(fresh_aws, "ann"),
        photo_versions(fresh_aws, "ann"),
    )
    assert len(before_items) == 2 and len(before_versions) == 1
    _failing_put(monkeypatch, StorageError("S3 said no"), at=2, after_write=True)
    with pytest.raises(StorageError):
        service.enrol("ann", [ANN_2, ANN_PROBE])
    assert subject_items(fresh_aws, "ann") == before_items
    assert photo_versions(fresh_aws, "ann") == before_versions
    described = service.describe_subject("ann")
    assert described["face_count"] == 1
    assert [f["face_id"] for f in described["faces"]] == [first["photos"][0]["face_id"]]


def test_a_refused_record_removes_every_photo_version(fresh_aws, service, processor):
    """The transaction is refused (the subject is enrolled with another model): the photos
    stored for it go, every version."""
    other = FaceService(
        FakeProcessor(processor.faces, card=make_card("other")), service.subjects, service.photos
    )
    other.enrol("ann", [BOB])
    kept = photo_versions(fresh_aws, "ann")
    with pytest.raises(ModelMismatchError, match="enrolled with 'other'"):
        service.enrol("ann", [ANN_1, ANN_2])
    assert photo_versions(fresh_aws, "ann") == kept


def test_a_failed_clean_up_still_raises_the_original_error(fresh_aws, service, monkeypatch):
    error = StorageError("S3 said no")
    _failing_put(monkeypatch, error, at=2, after_write=False)

    def refuse(self: PhotoStore, keys: object) -> None:
        raise StorageError("cleanup refused too")

    monkeypatch.setattr(PhotoStore, "delete_keys", refuse)
    with pytest.raises(StorageError) as raised:
        service.enrol("ann", [ANN_1, ANN_2])
    assert raised.value is error


def test_more_faces_than_one_record_holds_are_refused_before_any_write(
    fresh_aws, service, monkeypatch
):
    calls = _failing_put(monkeypatch, AssertionError("no put expected"), at=1, after_write=False)
    with pytest.raises(ValidationError, match=f"at most {MAX_FACES_PER_PUT}"):
        service.enrol("ann", [ANN_1] * (MAX_FACES_PER_PUT + 1))
    assert calls == [] and photo_versions(fresh_aws, "ann") == []


def test_a_read_back_failing_after_the_commit_keeps_the_photos_the_records_name(
    fresh_aws, service, monkeypatch
):
    """Once the transaction committed, the photos are the records' own: erasing them would
    leave faces whose photos are gone (no re-embedding could read them)."""

    def unreadable(self: SubjectStore, subject_id: str) -> object:
        raise StorageError("read failed")

    monkeypatch.setattr(SubjectStore, "get_subject", unreadable)
    with pytest.raises(StorageError, match="read failed"):
        service.enrol("ann", [ANN_1, ANN_2])
    faces = [sk for sk in subject_items(fresh_aws, "ann") if sk.startswith("FACE#")]
    assert len(faces) == 2 and len(photo_versions(fresh_aws, "ann")) == 2
