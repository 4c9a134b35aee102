"""The embedding function (``functions/embed``) on a batch mixing good and bad records.

Each bad record must fail alone: one a retry can fix (S3 throttling) is the only batch item
failure; the permanent ones (a body that is not JSON, a message type nobody sends here, a
UTF-16 manifest beside a zip, a chunk whose archive version was deleted, a photo over the
byte limit) are reject rows of their gallery, or logged and dropped when they name none,
and never come back. The good records' photos end up in the batch's one gallery part.
"""

from __future__ import annotations

import io
import json
import logging
from urllib.parse import unquote_plus

import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from tests_support import zip_of

from facegate.storage.clients import aws_client

FUNCTION = "EmbedFunction"
OVER_LIMIT = 15 * 1024 * 1024 + 1


@pytest.fixture(scope="module")
def ingest(make_queue):
    queue = make_queue("facegate-ingest")
    queue.notify("uploads/")
    return queue


@pytest.fixture(scope="module")
def embed(load_handler, ingest):
    return load_handler("embed", ingest_queue_url=ingest.url, archive_chunk_size=50)


def _zip(files: dict[str, bytes]) -> bytes:
    return zip_of(files)


def _tables(aws, gallery: str, kind: str) -> list[list[dict]]:
    s3 = aws_client("s3", aws)
    listed = s3.list_objects_v2(Bucket=aws.bucket, Prefix=f"galleries/{gallery}/{kind}/")
    return [
        pq.read_table(
            io.BytesIO(s3.get_object(Bucket=aws.bucket, Key=item["Key"])["Body"].read())
        ).to_pylist()
        for item in listed.get("Contents", [])
    ]


def _about(records: list[dict], key: str) -> str:
    """The message id of the notification about ``key`` (S3 form-encodes keys in it)."""
    (found,) = [r["messageId"] for r in records if key in unquote_plus(r["body"])]
    return found


def _throttled(client, method: str, words: str, monkeypatch) -> None:
    """Make ``client.<method>`` fail as a throttled S3 call for keys containing ``words``."""
    real = getattr(client, method)

    def flaky(**kwargs):
        if words in kwargs["Key"]:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, method)
        return real(**kwargs)

    monkeypatch.setattr(client, method, flaky)


def test_each_bad_record_fails_alone(aws, embed, ingest, invoke, faces_dir, monkeypatch, caplog):
    s3 = aws_client("s3", aws)
    photo = lambda name: (faces_dir / f"{name}.jpg").read_bytes()  # noqa: E731

    def upload(key: str, body: bytes) -> dict:
        return s3.put_object(Bucket=aws.bucket, Key=key, Body=body)

    # A zip whose chunk runs after its version was deleted (its own notification was planned
    # and fanned out before: here it is dropped, and the chunk message written as sent).
    gone = _zip({"p/1.jpg": photo("person_a_1"), "p/2.jpg": photo("person_a_2")})
    version = upload("uploads/mix/gone.zip", gone)
    ingest.drain()
    s3.delete_object(Bucket=aws.bucket, Key="uploads/mix/gone.zip", VersionId=version["VersionId"])
    chunk = {
        "type": "facegate.archive_chunk",
        "version": 1,
        "bucket": aws.bucket,
        "key": "uploads/mix/gone.zip",
        "version_id": version["VersionId"],
        "etag": version["ETag"].strip('"'),
        "size": len(gone),
        "gallery": "mix",
        "index": 0,
        "count": 1,
        "members": [["p/1.jpg", "person_a"], ["p/2.jpg", "person_a"]],
    }

    upload("uploads/mix/person_a/a1.jpg", photo("person_a_1"))
    upload("uploads/mix/person_b/b1.jpg", photo("person_b_1"))  # throttled below
    upload("uploads/mix/person_b/huge.jpg", b"\xff\xd8\xff\xe0" + bytes(OVER_LIMIT))
    upload("uploads/mix/flat.csv", "path,subject_id\n1.jpg,person_a\n".encode("utf-16"))
    upload("uploads/mix/flat.zip", _zip({"1.jpg": photo("person_a_2")}))
    records = ingest.drain()
    assert len(records) == 5  # flat.csv is the zip's manifest, not work of its own
    records += [
        ingest.record(json.dumps(chunk), "chunk-of-deleted-version"),
        ingest.record("{not json", "not-json"),
        ingest.record(json.dumps({"type": "facegate.unheard_of", "version": 1}), "unknown"),
    ]
    throttled = _about(records, "uploads/mix/person_b/b1.jpg")
    _throttled(embed.job.s3, "get_object", "person_b/b1.jpg", monkeypatch)
    caplog.set_level(logging.WARNING, logger="facegate.batch")

    assert invoke(embed, {"Records": records}, FUNCTION) == [throttled]

    (part,) = _tables(aws, "mix", "parts")  # one part for the whole batch
    assert [(r["subject_id"], r["image_key"]) for r in part] == [
        ("person_a", "uploads/mix/person_a/a1.jpg")
    ]
    (rejects,) = _tables(aws, "mix", "rejects")
    reasons = {r["image_key"]: r["reason"] for r in rejects}
    assert reasons == {
        "uploads/mix/gone.zip/p/1.jpg": "invalid_image",
        "uploads/mix/gone.zip/p/2.jpg": "invalid_image",
        "uploads/mix/person_b/huge.jpg": "image_too_large",
        "uploads/mix/flat.zip": "validation_error",
    }
    details = {r["image_key"]: r["detail"] for r in rejects}
    assert "UTF-16" in details["uploads/mix/flat.zip"]
    discarded = {
        r.message_id: r.reason for r in caplog.records if r.getMessage() == "message discarded"
    }
    assert discarded == {"not-json": "validation_error", "unknown": "validation_error"}

    # SQS redelivers only the throttled record; its claim was released, so it runs now.
    monkeypatch.undo()
    retry = [r for r in records if r["messageId"] == throttled]
    assert invoke(embed, {"Records": retry}, FUNCTION) == []
    rows = [r["subject_id"] for t in _tables(aws, "mix", "parts") for r in t]
    assert sorted(rows) == ["person_a", "person_b"]
    # Redelivering the permanent ones changes nothing: they were done, not left to retry.
    assert invoke(embed, {"Records": records[5:]}, FUNCTION) == []
    assert len(_tables(aws, "mix", "rejects")) == 2
    assert sum(len(t) for t in _tables(aws, "mix", "rejects")) == 4


def test_a_failed_part_write_fails_only_the_records_it_holds(
    aws, embed, ingest, invoke, faces_dir, monkeypatch
):
    s3 = aws_client("s3", aws)
    for gallery, subject, name in [
        ("left", "person_a", "person_a_2"),
        ("right", "b", "person_b_2"),
    ]:
        key = f"uploads/{gallery}/{subject}/{name}.jpg"
        s3.put_object(Bucket=aws.bucket, Key=key, Body=(faces_dir / f"{name}.jpg").read_bytes())
    records = ingest.drain()
    right = _about(records, "uploads/right/b/person_b_2.jpg")
    _throttled(embed.job.s3, "put_object", "galleries/right/", monkeypatch)

    assert invoke(embed, {"Records": records}, FUNCTION) == [right]
    assert [len(t) for t in _tables(aws, "left", "parts")] == [1]
    assert _tables(aws, "right", "parts") == []

    monkeypatch.undo()
    assert (
        invoke(embed, {"Records": [r for r in records if r["messageId"] == right]}, FUNCTION) == []
    )
    assert [len(t) for t in _tables(aws, "right", "parts")] == [1]
