"""Ranged reads of one object version as a file (``ObjectStore.open``), on moto.

Every read is checked against the bytes put, and what it cost against the bytes S3 sent (the
reader's counters, and a botocore hook on the client where the count must not trust them).
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

import pytest
from botocore.exceptions import ClientError

from facegate.batch.archives import open_archive, read_archive, read_member
from facegate.errors import ObjectNotFoundError, ObjectTooLargeError
from facegate.storage.objects import READ_AHEAD, ObjectStore

KEY = "uploads/g/set.zip"
BODY = os.urandom(300_000)


def _put(store: ObjectStore, body: bytes, key: str = KEY) -> Any:
    return store.put(key, body, content_type="application/zip")


def test_opening_fetches_only_the_end(store):
    _put(store, BODY)
    reader = store.open(KEY)
    assert (reader.size, reader.requests, reader.fetched) == (len(BODY), 1, READ_AHEAD)
    reader.seek(-22, io.SEEK_END)
    assert reader.read() == BODY[-22:]
    assert reader.read() == b"" and reader.tell() == len(BODY)
    assert reader.requests == 1  # the end was already held


def test_reads_anywhere_match_the_object(store):
    _put(store, BODY)
    reader = store.open(KEY)
    for start, size in [(0, 10), (5, 100_000), (150_000, 1), (299_990, 50), (12, 0)]:
        assert reader.seek(start) == start
        assert reader.read(size) == BODY[start : start + size]
        assert reader.tell() == min(start + size, len(BODY))
    reader.seek(10)
    reader.seek(5, io.SEEK_CUR)
    assert reader.read(3) == BODY[15:18]
    reader.seek(len(BODY) + 10)
    assert reader.read(5) == b""
    buffer = bytearray(7)
    reader.seek(100)
    assert reader.readinto(buffer) == 7 and bytes(buffer) == BODY[100:107]
    with pytest.raises(ValueError):
        reader.seek(-1)


def test_small_reads_close_together_share_one_fetch(store):
    _put(store, BODY)
    reader = store.open(KEY)
    reader.seek(1000)
    for _ in range(50):
        reader.read(30)  # local headers, names: one read-ahead holds them all
    assert reader.requests == 2 and reader.fetched == 2 * READ_AHEAD
    reader.seek(100_000)
    assert reader.read(150_000) == BODY[100_000:250_000]  # big: fetched as asked, not kept
    assert reader.requests == 3 and reader.fetched == 2 * READ_AHEAD + 150_000


def test_every_fetch_is_counted_as_s3_sent_it(store, fresh_aws):
    sent: list[int] = []
    fresh_aws.s3.meta.events.register(
        "after-call.s3.GetObject", lambda parsed, **_: sent.append(parsed["ContentLength"])
    )
    _put(store, BODY)
    reader = store.open(KEY)
    reader.seek(0)
    reader.read(200_000)
    assert sum(sent) == reader.fetched == READ_AHEAD + 200_000


def test_a_read_over_max_read_fetches_nothing(store):
    _put(store, BODY)
    reader = store.open(KEY, max_read=100_000)
    with pytest.raises(ObjectTooLargeError):
        reader.read()
    assert reader.requests == 1


def test_an_empty_or_small_object_is_read_whole_at_once(store):
    _put(store, b"", "uploads/g/empty.zip")
    empty = store.open("uploads/g/empty.zip")
    assert empty.size == 0 and empty.read() == b""
    _put(store, b"tiny")
    small = store.open(KEY)
    assert (small.size, small.read(), small.requests) == (4, b"tiny", 1)


def test_an_empty_object_answering_invalid_range_is_empty(store, fresh_aws, monkeypatch):
    """S3 may refuse a suffix range of an empty object (416) where moto sends nothing."""

    def refuse(**kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "InvalidRange", "Message": "no"}}, "GetObject")

    monkeypatch.setattr(fresh_aws.s3, "get_object", refuse)
    reader = store.open("uploads/g/empty.zip")
    assert (reader.size, reader.read(), reader.fetched) == (0, b"", 0)


def test_the_version_opened_is_read_after_an_overwrite(versioned):
    first = _put(versioned, BODY)
    reader = versioned.open(KEY, version_id=first.version_id)
    _put(versioned, os.urandom(len(BODY)))
    reader.seek(0)
    assert reader.read(100_000) == BODY[:100_000]


def test_a_deleted_version_is_missing_when_opened_or_read(versioned, fresh_aws):
    first = _put(versioned, BODY)
    reader = versioned.open(KEY, version_id=first.version_id)
    fresh_aws.s3.delete_object(Bucket=fresh_aws.bucket, Key=KEY, VersionId=first.version_id)
    reader.seek(0)
    with pytest.raises(ObjectNotFoundError):
        reader.read(10)
    with pytest.raises(ObjectNotFoundError):
        versioned.open(KEY, version_id=first.version_id)


def test_unversioned_objects_are_pinned_by_etag(store):
    first = _put(store, BODY)
    reader = store.open(KEY)  # pinned to the ETag of its first answer
    _put(store, BODY[::-1])
    reader.seek(0)
    with pytest.raises(ObjectNotFoundError, match="replaced"):
        reader.read(10)
    with pytest.raises(ObjectNotFoundError, match="replaced"):
        store.open(KEY, etag=first.etag.strip('"'))  # the notification's etag, unquoted


def test_zip_members_are_read_without_the_rest_of_the_archive(store, faces_dir):
    photo = (faces_dir / "person_a_1.jpg").read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("alice/1.jpg", photo)
        archive.writestr("alice/noise.jpg", os.urandom(4_000_000))
        archive.writestr("bob/1.jpg", photo)
        archive.writestr("manifest.csv", "path,subject_id\nalice/1.jpg,a\nbob/1.jpg,b\n")
    data = buffer.getvalue()
    _put(store, data)
    reader = store.open(KEY)
    with open_archive(reader) as archive:
        plan, whole = read_archive(archive), read_archive(data)
        assert plan.members == whole.members == [("alice/1.jpg", "a"), ("bob/1.jpg", "b")]
        assert [(p, e.code) for p, e in plan.rejects] == [("alice/noise.jpg", "validation_error")]
        assert reader.fetched <= 2 * READ_AHEAD  # the end and the inner manifest
        assert read_member(archive, "bob/1.jpg") == photo
    assert reader.fetched < 3 * READ_AHEAD + len(photo) < len(data) // 10
