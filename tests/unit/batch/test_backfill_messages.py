"""Backfill chunk messages: what the lister sends is what the embedding function reads back,
and a message that could make it read outside its prefix or bucket layout is refused."""

from __future__ import annotations

import pytest

from facegate.batch.backfill import BackfillChunk, BackfillPage, backfill_upload
from facegate.errors import ValidationError
from facegate.storage.keys import InvalidUpload, PhotoUpload

OBJECT = ("old/ann/1.jpg", "v1", "e1", 10, "2026-12-01T10:00:00.000000Z")


def test_a_chunk_round_trips_through_its_message():
    chunk = BackfillChunk("bucket", "old/", "g", (OBJECT, ("old/bob/2.jpg", None, "e2", 3, None)))
    again = BackfillChunk.from_message(chunk.to_message())
    assert again == chunk
    assert [r.version_id for r in again.refs()] == ["v1", None]
    assert again.refs()[0].uploaded_at == OBJECT[4]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prefix": "old"}, "ends with '/'"),
        ({"objects": (("elsewhere/ann/1.jpg", None, "e", 1, None),)}, "under its prefix"),
        ({"objects": ()}, "at least one"),
        ({"objects": (("old/a/1.jpg", None, "e", -1, None),)}, "size"),
        ({"objects": (("old/a/1.jpg", None, "e", 1, "yesterday"),)}, "last_modified"),
        ({"gallery": "bad id"}, "gallery"),
    ],
)
def test_a_bad_chunk_is_refused(changes, message):
    fields = {"bucket": "bucket", "prefix": "old/", "gallery": "g", "objects": (OBJECT,)}
    with pytest.raises(ValidationError, match=message):
        BackfillChunk(**(fields | changes))


def test_a_page_round_trips_with_its_markers():
    first = BackfillPage("bucket", "old/", "g", 50)
    later = BackfillPage("bucket", "old/", "g", 50, key_marker="old/ann/1.jpg", version_marker="v1")
    for page in (first, later):
        assert BackfillPage.from_message(page.to_message()) == page
    assert first.key_marker is None and first.version_marker is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prefix": "old"}, "ends with '/'"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": True}, "chunk_size"),
        ({"key_marker": 7}, "key_marker"),
        ({"bucket": ""}, "bucket"),
        ({"gallery": "../g"}, "gallery"),
    ],
)
def test_a_bad_page_is_refused(changes, message):
    fields = {"bucket": "bucket", "prefix": "old/", "gallery": "g", "chunk_size": 10}
    with pytest.raises(ValidationError, match=message):
        BackfillPage(**(fields | changes))


def test_keys_under_the_prefix_follow_the_upload_layout():
    assert backfill_upload("old/", "g", "old/ann/1.jpg") == PhotoUpload("g", "ann", "1.jpg")
    for key in ("old/1.jpg", "old/ann/deeper/1.jpg", "old/bad id/1.jpg", "old/ann/"):
        found = backfill_upload("old/", "g", key)
        assert isinstance(found, InvalidUpload) and found.gallery == "g", key
