"""Every S3 key layout comes from facegate.storage.keys and refuses path tricks."""

from __future__ import annotations

import pytest

from facegate.errors import ValidationError
from facegate.storage import keys
from facegate.storage.galleries import GalleryStore
from facegate.storage.photos import PhotoStore

SOURCE = "ab" * 32


def test_gallery_layout():
    assert keys.gallery_prefix("staff") == "galleries/staff/"
    assert keys.part_key("staff", "p1") == "galleries/staff/parts/p1.parquet"
    assert keys.rejects_key("staff", "p1") == "galleries/staff/rejects/p1.parquet"
    assert keys.gallery_key("staff") == "galleries/staff/gallery.parquet"
    assert keys.part_key("staff", "p1").startswith(keys.parts_prefix("staff"))
    assert keys.rejects_key("staff", "p1").startswith(keys.rejects_prefix("staff"))
    # The stores' names for the same layouts, which their callers keep using.
    assert GalleryStore.part_key("staff", "p1") == keys.part_key("staff", "p1")
    assert GalleryStore.gallery_key("staff") == keys.gallery_key("staff")
    photos = PhotoStore(None, "bucket")  # type: ignore[arg-type]  # no call is made
    assert photos.subject_prefix("al") == keys.subject_prefix("al") == "enrolments/default/al/"
    lobby = photos.in_collection("lobby")
    assert (
        lobby.subject_prefix("al") == keys.subject_prefix("al", "lobby") == "enrolments/lobby/al/"
    )
    assert lobby.photo_key("al", "f1", "image/png") == "enrolments/lobby/al/f1.png"
    assert keys.legacy_subject_prefix("al") == "enrolments/al/"


def test_ingest_parts_are_named_after_their_source():
    assert keys.safe_part_name(SOURCE) == f"part-{SOURCE}"
    assert (
        keys.part_key("g", keys.safe_part_name(SOURCE))
        == f"galleries/g/parts/part-{SOURCE}.parquet"
    )
    for bad in ("../../evil", SOURCE.upper(), SOURCE[:-1], 7):
        with pytest.raises(ValidationError):
            keys.safe_part_name(bad)


def test_enrolment_and_reembed_layouts():
    assert keys.enrolment_photo_key("alice", "f1", "jpg") == "enrolments/default/alice/f1.jpg"
    assert keys.reembed_status_key("g2") == "reembed/g2.json"
    assert not keys.reembed_status_key("g2").startswith(keys.GALLERY_PREFIX)


def test_upload_keys_classify_as_what_they_name():
    photo = keys.photo_upload_key("team", "alice", "a 1.jpg")
    assert photo == "uploads/team/alice/a 1.jpg"
    assert keys.classify(photo) == keys.PhotoUpload("team", "alice", "a 1.jpg")
    archive = keys.archive_upload_key("team", "set")
    assert keys.classify(archive) == keys.ArchiveUpload("team", "set")
    manifest = keys.manifest_upload_key("team", "set")
    assert keys.classify(manifest) == keys.ManifestUpload("team", "set")
    assert keys.ArchiveUpload("team", "set").manifest_key == manifest


@pytest.mark.parametrize(
    "make",
    [
        lambda: keys.gallery_prefix("a/b"),
        lambda: keys.part_key("staff", "../p"),
        lambda: keys.rejects_key("", "p"),
        lambda: keys.gallery_key("staff/.."),
        lambda: keys.subject_prefix("al/ice"),
        lambda: keys.enrolment_photo_key("alice", "../f", "jpg"),
        lambda: keys.reembed_status_key("../g"),
        lambda: keys.photo_upload_key("team", "a/b", "p.jpg"),
        lambda: keys.archive_upload_key("te/am", "set"),
    ],
)
def test_ids_in_keys_are_checked(make):
    with pytest.raises(ValidationError):
        make()
