"""The sweep of orphaned enrolment photos on moto's versioned S3 and the subjects table.

Photos are stored and items written by the real stores, in the order an enrolment uses
(photo first, items after). Photos are made "old" by moving the sweep's clock forward, never
by waiting: S3 stamps each version with the real time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError as SettingsError
from tests_support import unit_rows

from facegate.errors import ValidationError
from facegate.settings import Settings
from facegate.storage.orphans import (
    DEFAULT_MIN_AGE,
    MIN_AGE_FLOOR,
    OrphanPhotoSweeper,
    OrphanSweep,
)
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import StoredFace, SubjectStore

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
MODEL = "sface"
SHA = "ab" * 32


@pytest.fixture
def photos(versioned, fresh_aws) -> PhotoStore:
    """Photos in the versioned bucket, as the template's."""
    return PhotoStore(fresh_aws.s3, fresh_aws.bucket)


@pytest.fixture
def subjects(fresh_aws) -> SubjectStore:
    return SubjectStore(fresh_aws.dynamodb, fresh_aws.table)


def later(delta: timedelta) -> Callable[[], datetime]:
    """A clock ``delta`` after the real now: what S3 stamped a moment ago is that old."""
    moment = datetime.now(UTC) + delta
    return lambda: moment


def sweeper(photos: PhotoStore, subjects: SubjectStore, delta: timedelta) -> OrphanPhotoSweeper:
    return OrphanPhotoSweeper(photos, subjects, clock=later(delta))


OLD = DEFAULT_MIN_AGE + timedelta(minutes=1)
YOUNG = DEFAULT_MIN_AGE - timedelta(minutes=1)


def enrol(subjects: SubjectStore, subject_id: str, *keys: str) -> None:
    """Commit the face items of photos already stored (an enrolment's second step)."""
    vectors = unit_rows(np.random.default_rng(len(keys)), len(keys), 8)
    faces = [
        StoredFace(face_id=key.rsplit("/", 1)[1].split(".")[0], embedding=v, image_key=key)
        for key, v in zip(keys, vectors, strict=True)
    ]
    subjects.write_faces(subject_id, faces, MODEL, weights_sha256=SHA)


def remaining(photos: PhotoStore, prefix: str = "enrolments/") -> list[tuple[str, str]]:
    return sorted(photos.objects.versions(prefix))


# --------------------------------------------------------------------------------------
# What is destroyed, what stays
# --------------------------------------------------------------------------------------


def test_an_old_orphan_is_destroyed_every_version_and_delete_marker(photos, subjects):
    """A photo overwritten once (two versions) and one hidden behind a delete marker: no
    item names either, so every version and the marker go."""
    photos.put("alice", "f1", JPEG, "image/jpeg")
    photos.put("alice", "f1", JPEG + b"2", "image/jpeg")
    hidden = photos.put("alice", "f2", JPEG, "image/jpeg")
    photos.objects.delete(hidden)
    assert len(remaining(photos)) == 4

    swept = sweeper(photos, subjects, OLD).sweep()

    assert swept == OrphanSweep(
        subjects=1, subjects_touched=1, objects_deleted=2, versions_deleted=4
    )
    assert remaining(photos) == []


def test_a_referenced_photo_stays_beside_an_orphan_of_the_same_subject(photos, subjects):
    kept = photos.put("alice", "f1", JPEG, "image/jpeg")
    photos.put("alice", "f1", JPEG + b"2", "image/jpeg")  # an older version, referenced too
    enrol(subjects, "alice", kept)
    photos.put("alice", "f2", JPEG, "image/jpeg")  # an enrolment killed before its items
    before = [v for v in remaining(photos) if v[0] == kept]

    swept = sweeper(photos, subjects, OLD).sweep()

    assert (swept.objects_deleted, swept.versions_deleted, swept.subjects_touched) == (1, 1, 1)
    assert remaining(photos) == before and len(before) == 2
    assert subjects.image_keys("alice") == {kept}


def test_an_enrolment_in_flight_keeps_its_photo_until_it_commits(photos, subjects):
    """The photo is stored and the items are not yet written: younger than the minimum age,
    it stays; once the items are committed it stays at any age. Its twin whose enrolment
    was killed goes once it is old enough, and only then."""
    in_flight = photos.put("alice", "f1", JPEG, "image/jpeg")
    killed = photos.put("bob", "f1", JPEG, "image/jpeg")

    swept = sweeper(photos, subjects, YOUNG).sweep()

    assert (swept.subjects, swept.versions_deleted) == (2, 0)
    assert {k for k, _ in remaining(photos)} == {in_flight, killed}

    enrol(subjects, "alice", in_flight)  # the enrolment commits
    swept = sweeper(photos, subjects, OLD).sweep()

    assert (swept.subjects_touched, swept.objects_deleted) == (1, 1)
    assert {k for k, _ in remaining(photos)} == {in_flight}


def test_other_subjects_are_untouched(photos, subjects):
    photos.put("alice", "f1", JPEG, "image/jpeg")  # orphan
    bob = photos.put("bob", "f1", JPEG, "image/jpeg")
    enrol(subjects, "bob", bob)
    # A subject whose id is another's prefix, and one that sorts between them.
    alice2 = photos.put("alice2", "f1", JPEG, "image/jpeg")
    enrol(subjects, "alice2", alice2)
    dotted = photos.put("alice.b", "f1", JPEG, "image/jpeg")
    enrol(subjects, "alice.b", dotted)

    swept = sweeper(photos, subjects, OLD).sweep()

    assert (swept.subjects, swept.subjects_touched, swept.objects_deleted) == (4, 1, 1)
    assert {k for k, _ in remaining(photos)} == {bob, alice2, dotted}


def test_a_subject_spread_over_several_pages(photos, subjects, monkeypatch):
    """Two entries a page: a subject's versions and markers straddle pages, and deleting a
    subject's orphans mid-listing does not disturb the pages still to come."""
    monkeypatch.setattr(photos.objects, "list_page_size", 2)
    for subject in ("ann", "ben", "cat"):
        keep = photos.put(subject, "keep", JPEG, "image/jpeg")
        enrol(subjects, subject, keep)
        for face in ("a", "b"):
            gone = photos.put(subject, face, JPEG, "image/jpeg")
            photos.put(subject, face, JPEG + b"2", "image/jpeg")
        photos.objects.delete(gone)

    swept = sweeper(photos, subjects, OLD).sweep()

    assert swept == OrphanSweep(
        subjects=3, subjects_touched=3, objects_deleted=6, versions_deleted=15
    )
    assert {k for k, _ in remaining(photos)} == {
        f"enrolments/default/{s}/keep.jpg" for s in ("ann", "ben", "cat")
    }


def test_keys_outside_the_enrolment_layout_are_left_alone(photos, subjects, fresh_aws):
    for key in (
        "enrolments/default/loose.jpg",
        "enrolments/default/not an id!/x.jpg",
        "uploads/g/a/1.jpg",
    ):
        fresh_aws.s3.put_object(Bucket=fresh_aws.bucket, Key=key, Body=JPEG)
    photos.put("alice", "f1", JPEG, "image/jpeg")

    swept = sweeper(photos, subjects, OLD).sweep()

    assert (swept.keys_skipped, swept.subjects, swept.objects_deleted) == (2, 1, 1)
    assert {k for k, _ in remaining(photos, "")} == {
        "enrolments/default/loose.jpg",
        "enrolments/default/not an id!/x.jpg",
        "uploads/g/a/1.jpg",
    }


def test_an_empty_prefix_sweeps_nothing(photos, subjects):
    assert sweeper(photos, subjects, OLD).sweep() == OrphanSweep()


def test_a_sweep_told_to_stop_leaves_the_rest_for_the_next_run(photos, subjects):
    for subject in ("ann", "ben"):
        photos.put(subject, "f1", JPEG, "image/jpeg")
    asked: list[int] = []

    def stop_after_one() -> bool:
        asked.append(1)
        return len(asked) > 1

    swept = sweeper(photos, subjects, OLD).sweep(should_stop=stop_after_one)

    assert (swept.subjects, swept.objects_deleted, swept.complete) == (1, 1, False)
    assert [k for k, _ in remaining(photos)] == ["enrolments/default/ben/f1.jpg"]
    assert sweeper(photos, subjects, OLD).sweep().complete is True
    assert remaining(photos) == []


# --------------------------------------------------------------------------------------
# The minimum age and the subjects' image keys
# --------------------------------------------------------------------------------------


def test_the_minimum_age_cannot_undercut_an_invocation(photos, subjects):
    """A minimum age under Lambda's invocation limit (plus skew) could sweep the photo of an
    enrolment still running: refused, here and in the settings."""
    with pytest.raises(ValidationError, match="minimum age"):
        OrphanPhotoSweeper(photos, subjects, min_age=MIN_AGE_FLOOR - timedelta(seconds=1))
    OrphanPhotoSweeper(photos, subjects, min_age=MIN_AGE_FLOOR)
    floor = int(MIN_AGE_FLOOR.total_seconds()) // 60  # the settings' bound is the same
    assert timedelta(minutes=floor) == MIN_AGE_FLOOR >= timedelta(minutes=20)
    assert Settings(orphan_photo_min_age_minutes=floor).orphan_photo_min_age_minutes == floor
    with pytest.raises(SettingsError):
        Settings(orphan_photo_min_age_minutes=floor - 1)
    assert timedelta(minutes=Settings().orphan_photo_min_age_minutes) == DEFAULT_MIN_AGE
    naive = OrphanPhotoSweeper(photos, subjects, clock=lambda: datetime(2030, 1, 1))
    with pytest.raises(ValidationError, match="timezone-aware"):
        naive.sweep()


def test_image_keys_of_a_subject(subjects):
    assert subjects.image_keys("nobody") == set()
    enrol(subjects, "alice", "enrolments/default/alice/f1.jpg", "enrolments/default/alice/f2.png")
    assert subjects.image_keys("alice") == {
        "enrolments/default/alice/f1.jpg",
        "enrolments/default/alice/f2.png",
    }
    assert subjects.image_keys("alic") == set()
