"""The S3 object store on moto: every answer is checked against the raw S3 state behind it."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from facegate.errors import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    ValidationError,
)
from facegate.storage.clients import aws_client
from facegate.storage.objects import JSON_TYPE, PARQUET_TYPE, ObjectStore

BODY = bytes(range(256)) * 8


class ReadSpy:
    """A response body that records what was read from it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.read_sizes, self.closed = data, [], False

    def read(self, amount: int | None = None) -> bytes:
        self.read_sizes.append(amount)
        return self.data if amount is None else self.data[:amount]

    def close(self) -> None:
        self.closed = True


def spy_on_bodies(monkeypatch, s3, content_length: int | None = None) -> list[ReadSpy]:
    """Wrap every GetObject answer's body in a :class:`ReadSpy` (optionally lying about
    ``ContentLength``, as when the object is replaced between the answer and the read)."""
    spies: list[ReadSpy] = []
    real = s3.get_object

    def get_object(**kwargs: Any) -> dict[str, Any]:
        answer = real(**kwargs)
        spies.append(ReadSpy(answer["Body"].read()))
        answer["Body"] = spies[-1]
        if content_length is not None:
            answer["ContentLength"] = content_length
        return answer

    monkeypatch.setattr(s3, "get_object", get_object)
    return spies


# --------------------------------------------------------------------------------------
# put and get
# --------------------------------------------------------------------------------------


def test_put_encrypts_and_types_every_object(store, fresh_aws):
    written = store.put("galleries/g/parts/p.parquet", BODY, content_type=PARQUET_TYPE)

    head = fresh_aws.s3.head_object(Bucket=fresh_aws.bucket, Key="galleries/g/parts/p.parquet")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == PARQUET_TYPE
    assert head["ContentLength"] == len(BODY)
    assert written.etag == head["ETag"] and written.size == len(BODY)
    assert written.version_id is None  # an unversioned bucket

    found = store.get("galleries/g/parts/p.parquet")
    assert found.body == BODY
    assert (found.etag, found.size, found.content_type) == (head["ETag"], len(BODY), PARQUET_TYPE)
    assert found.version_id is None
    assert "body" not in repr(found) and repr(BODY[:8]) not in repr(found)


def test_put_refuses_an_object_without_content_type(store, fresh_aws):
    with pytest.raises(ValidationError, match="content type"):
        store.put("reembed/g.json", b"{}", content_type="")
    assert "Contents" not in fresh_aws.s3.list_objects_v2(Bucket=fresh_aws.bucket)


def test_versions_are_read_by_id(versioned, fresh_aws):
    first = versioned.put("uploads/g/a/p.jpg", b"one", content_type="image/jpeg")
    second = versioned.put("uploads/g/a/p.jpg", b"two", content_type="image/jpeg")
    assert first.version_id and second.version_id and first.version_id != second.version_id

    assert versioned.get("uploads/g/a/p.jpg").body == b"two"
    old = versioned.get("uploads/g/a/p.jpg", version_id=first.version_id)
    assert (old.body, old.version_id) == (b"one", first.version_id)
    assert versioned.head("uploads/g/a/p.jpg", version_id=first.version_id).size == 3


# --------------------------------------------------------------------------------------
# What "missing" means
# --------------------------------------------------------------------------------------


def test_a_missing_key_is_object_not_found_everywhere(store):
    for read in (
        lambda: store.get("uploads/none.jpg"),
        lambda: store.head("uploads/none.jpg"),
        lambda: store.get_range("uploads/none.jpg", 0, 10),
        lambda: store.get_if_changed("uploads/none.jpg", None),
    ):
        with pytest.raises(ObjectNotFoundError, match=r"no such object: s3://.*/uploads/none\.jpg"):
            read()
    assert store.exists("uploads/none.jpg") is False


def test_a_deleted_version_is_object_not_found(versioned, fresh_aws):
    """The chunk of an archive whose version was deleted since: permanent, never retried."""
    gone = versioned.put("uploads/g/set.zip", b"old", content_type="application/zip")
    versioned.put("uploads/g/set.zip", b"new", content_type="application/zip")
    fresh_aws.s3.delete_object(
        Bucket=fresh_aws.bucket, Key="uploads/g/set.zip", VersionId=gone.version_id
    )

    with pytest.raises(ObjectNotFoundError, match=f"version {gone.version_id}") as caught:
        versioned.get("uploads/g/set.zip", version_id=gone.version_id)
    assert caught.value.detail == "NoSuchVersion"
    with pytest.raises(ObjectNotFoundError):
        versioned.head("uploads/g/set.zip", version_id=gone.version_id)
    assert versioned.get("uploads/g/set.zip").body == b"new"


def test_a_key_behind_a_delete_marker_is_object_not_found(versioned, fresh_aws):
    versioned.put("uploads/g/a/p.jpg", b"one", content_type="image/jpeg")
    fresh_aws.s3.delete_object(Bucket=fresh_aws.bucket, Key="uploads/g/a/p.jpg")
    with pytest.raises(ObjectNotFoundError):
        versioned.get("uploads/g/a/p.jpg")
    assert not versioned.exists("uploads/g/a/p.jpg")


def test_a_missing_bucket_is_a_storage_error_not_a_missing_object(fresh_aws):
    store = ObjectStore(fresh_aws.s3, "no-such-bucket")
    with pytest.raises(StorageError, match="NoSuchBucket") as caught:
        store.get("uploads/p.jpg")
    assert not isinstance(caught.value, ObjectNotFoundError)
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.put("uploads/p.jpg", b"x", content_type="image/jpeg")


@pytest.mark.parametrize(
    ("code", "version_id", "missing"),
    [
        ("InvalidArgument", "not-a-version", True),  # S3's answer to a malformed version id
        ("InvalidArgument", None, False),
        ("SlowDown", "v1", False),
        ("AccessDenied", None, False),
    ],
)
def test_which_s3_errors_mean_missing(fresh_aws, code, version_id, missing):
    """moto answers every unknown version id with NoSuchVersion; S3 itself answers a malformed
    one with InvalidArgument, which only a version-naming request may take as missing."""
    s3 = aws_client("s3", fresh_aws.settings)
    store = ObjectStore(s3, fresh_aws.bucket)
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=400)
        with pytest.raises(ObjectNotFoundError if missing else StorageError) as caught:
            store.get("uploads/p.jpg", version_id=version_id)
    assert isinstance(caught.value, ObjectNotFoundError) is missing
    assert code in (caught.value.detail or "") + caught.value.message


# --------------------------------------------------------------------------------------
# Size limits
# --------------------------------------------------------------------------------------


def test_max_bytes_refuses_before_reading_the_body(store, fresh_aws, monkeypatch):
    store.put("jobs/j/probe.jpg", BODY, content_type="image/jpeg")
    spies = spy_on_bodies(monkeypatch, fresh_aws.s3)

    with pytest.raises(ObjectTooLargeError, match=f"{len(BODY)} bytes, the limit is 100"):
        store.get("jobs/j/probe.jpg", max_bytes=100)
    assert spies[-1].read_sizes == [] and spies[-1].closed

    assert store.get("jobs/j/probe.jpg", max_bytes=len(BODY)).body == BODY
    assert spies[-1].read_sizes == [len(BODY) + 1]  # a bounded read, even within the limit


def test_max_bytes_holds_when_the_length_header_is_out_of_date(store, fresh_aws, monkeypatch):
    """An object replaced by a bigger one between the answer and the read: the bounded read
    still stops one byte past the limit."""
    store.put("jobs/j/probe.jpg", BODY, content_type="image/jpeg")
    spies = spy_on_bodies(monkeypatch, fresh_aws.s3, content_length=10)
    with pytest.raises(ObjectTooLargeError, match="more than 100 bytes"):
        store.get("jobs/j/probe.jpg", max_bytes=100)
    assert spies[-1].read_sizes == [101]


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_max_bytes_must_be_a_positive_int(store, limit):
    with pytest.raises(ValidationError):
        store.get("jobs/j/probe.jpg", max_bytes=limit)


# --------------------------------------------------------------------------------------
# Conditional and ranged reads
# --------------------------------------------------------------------------------------


def test_if_none_match_downloads_only_a_changed_object(store, fresh_aws):
    first = store.put("galleries/g/gallery.parquet", b"v1", content_type=PARQUET_TYPE)

    assert store.get("galleries/g/gallery.parquet", if_none_match=first.etag) is None
    assert store.get_if_changed("galleries/g/gallery.parquet", first.etag) == (first.etag, None)
    assert store.get_if_changed("galleries/g/gallery.parquet", None) == (first.etag, b"v1")

    second = store.put("galleries/g/gallery.parquet", b"v2", content_type=PARQUET_TYPE)
    assert second.etag != first.etag
    changed = store.get("galleries/g/gallery.parquet", if_none_match=first.etag)
    assert changed is not None and (changed.body, changed.etag) == (b"v2", second.etag)
    assert store.get_if_changed("galleries/g/gallery.parquet", first.etag) == (second.etag, b"v2")


def test_get_range_reads_inclusive_byte_ranges(store):
    store.put("uploads/g/set.zip", BODY, content_type="application/zip")
    assert store.get_range("uploads/g/set.zip", 2, 5) == BODY[2:6]
    size = store.head("uploads/g/set.zip").size
    assert store.get_range("uploads/g/set.zip", size - 22, size + 100) == BODY[-22:]
    with pytest.raises(ValidationError, match="outside"):
        store.get_range("uploads/g/set.zip", size + 1, size + 5)
    with pytest.raises(ValidationError):
        store.get_range("uploads/g/set.zip", 5, 2)


# --------------------------------------------------------------------------------------
# Listing and deleting
# --------------------------------------------------------------------------------------


def test_list_keys_follows_pagination(store, fresh_aws):
    for i in range(5):
        store.put(f"galleries/g/parts/p{i}.parquet", b"x", content_type=PARQUET_TYPE)
    store.put("galleries/g2/parts/p.parquet", b"x", content_type=PARQUET_TYPE)
    store.list_page_size = 2
    calls: list[int] = []
    fresh_aws.s3.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: calls.append(1))

    assert store.list_keys("galleries/g/") == [f"galleries/g/parts/p{i}.parquet" for i in range(5)]
    assert len(calls) == 3


def test_delete_versions_erases_every_version(versioned, fresh_aws):
    versioned.put("enrolments/default/al/f1.jpg", b"1", content_type="image/jpeg")
    versioned.put("enrolments/default/al/f1.jpg", b"2", content_type="image/jpeg")
    versioned.put("enrolments/default/alice/f1.jpg", b"3", content_type="image/jpeg")
    versioned.delete("enrolments/default/al/f1.jpg")  # a delete marker on top
    targets = versioned.versions("enrolments/default/al/")
    assert len(targets) == 3

    versioned.delete_versions(targets)

    listing = fresh_aws.s3.list_object_versions(Bucket=fresh_aws.bucket)
    left = [v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])]
    assert left == ["enrolments/default/alice/f1.jpg"]


def test_an_error_listing_is_a_storage_error(fresh_aws):
    with pytest.raises(StorageError, match="NoSuchBucket"):
        ObjectStore(fresh_aws.s3, "no-such-bucket").list_keys("galleries/")


def test_json_documents_are_typed_too(store, fresh_aws):
    store.put("reembed/g.json", b'{"status": "queued"}', content_type=JSON_TYPE)
    head = fresh_aws.s3.head_object(Bucket=fresh_aws.bucket, Key="reembed/g.json")
    assert (head["ContentType"], head["ServerSideEncryption"]) == (JSON_TYPE, "AES256")


def test_client_errors_keep_their_code_in_the_storage_error(store, fresh_aws, monkeypatch):
    def throttled(**kwargs: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "GetObject")

    monkeypatch.setattr(fresh_aws.s3, "get_object", throttled)
    with pytest.raises(StorageError, match="SlowDown"):
        store.get("uploads/p.jpg")
