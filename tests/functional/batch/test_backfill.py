"""Backfill (``facegate backfill s3://bucket/prefix --gallery G``): photos already in the
photo bucket, which no notification announced, listed page by page onto the ingest queue
and embedded by the real embedding function. Every object becomes a row or a reject with
its reason; running it twice adds no rows, nor does backfilling photos whose uploads were
embedded already (the same ledger claims)."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from facegate.batch.backfill import (
    BackfillPage,
    backfill,
    list_pages,
    parse_s3_url,
    start_backfill,
)
from facegate.errors import ValidationError
from facegate.storage.clients import aws_client

FUNCTION = "EmbedFunction"


@pytest.fixture(scope="module")
def ingest(make_queue):
    queue = make_queue("facegate-backfill-ingest")
    queue.notify("uploads/")
    return queue


@pytest.fixture(scope="module")
def embed(load_handler, ingest):
    return load_handler("embed", ingest_queue_url=ingest.url)


def _rows(aws, gallery: str, kind: str) -> list[dict]:
    s3 = aws_client("s3", aws)
    listed = s3.list_objects_v2(Bucket=aws.bucket, Prefix=f"galleries/{gallery}/{kind}/")
    return [
        row
        for item in listed.get("Contents", [])
        for row in pq.read_table(
            io.BytesIO(s3.get_object(Bucket=aws.bucket, Key=item["Key"])["Body"].read())
        ).to_pylist()
    ]


def _backfill(aws, ingest, prefix: str, gallery: str, chunk_size: int = 2):
    return backfill(
        aws_client("s3", aws),
        aws_client("sqs", aws),
        ingest.url,
        BackfillPage(aws.bucket, prefix, gallery, chunk_size),
        photo_bucket=aws.bucket,
    )


def test_photos_already_in_s3_become_rows_or_rejects_once(aws, embed, ingest, invoke, faces_dir):
    s3 = aws_client("s3", aws)
    photo = lambda name: (faces_dir / f"{name}.jpg").read_bytes()  # noqa: E731
    objects = {
        "legacy/person_a/a1.jpg": photo("person_a_1"),
        "legacy/person_a/a2.jpg": photo("person_a_2"),
        "legacy/person_b/b1.jpg": photo("person_b_1"),
        "legacy/person_b/notes.txt": b"not a photo",
        "legacy/loose.jpg": photo("impostor_1"),  # beside the subject folders
        "legacy/bad id!/x.jpg": photo("impostor_2"),
        "legacy/person_b/.DS_Store": b"\0",  # skipped, as uploads skip it
    }
    for key, body in objects.items():
        s3.put_object(Bucket=aws.bucket, Key=key, Body=body)
    assert ingest.drain() == []  # not under uploads/: no notification

    report = _backfill(aws, ingest, "legacy/", "old")
    assert report.to_dict() == {"objects": 6, "chunks": 3, "pages": 1}
    records = ingest.drain()
    assert [json.loads(r["body"])["type"] for r in records] == ["facegate.backfill_chunk"] * 3
    assert invoke(embed, {"Records": records}, FUNCTION) == []

    rows = sorted((r["subject_id"], r["image_key"]) for r in _rows(aws, "old", "parts"))
    assert rows == [
        ("person_a", "legacy/person_a/a1.jpg"),
        ("person_a", "legacy/person_a/a2.jpg"),
        ("person_b", "legacy/person_b/b1.jpg"),
    ]
    reasons = {r["image_key"]: r["reason"] for r in _rows(aws, "old", "rejects")}
    assert reasons == {
        "legacy/person_b/notes.txt": "invalid_image",
        "legacy/loose.jpg": "validation_error",
        "legacy/bad id!/x.jpg": "validation_error",
    }
    uploaded = {r["image_key"]: r["source_at"] for r in _rows(aws, "old", "parts")}
    assert all(value is not None for value in uploaded.values())  # the objects' times

    # Twice: the same messages again, and the ledger has every photo done already.
    assert _backfill(aws, ingest, "legacy/", "old", chunk_size=5).chunks == 2
    assert invoke(embed, {"Records": ingest.drain()}, FUNCTION) == []
    assert len(_rows(aws, "old", "parts")) == 3


def _notification(aws, key: str, put: dict) -> str:
    """The S3 notification of a put in a versioned bucket, as S3 sends it: with the
    ``versionId`` (moto's leaves it out, so its own would claim by ETag instead)."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-12-01T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": aws.bucket},
            "object": {
                "key": key,
                "size": 1,
                "eTag": put["ETag"].strip('"'),
                "versionId": put["VersionId"],
            },
        },
    }
    return json.dumps({"Records": [record]})


def test_a_backfill_over_notified_uploads_adds_nothing(aws, embed, ingest, invoke, faces_dir):
    s3 = aws_client("s3", aws)
    key = "uploads/fresh/person_a/a1.jpg"
    body = (faces_dir / "person_a_1.jpg").read_bytes()
    put = s3.put_object(Bucket=aws.bucket, Key=key, Body=body)
    ingest.drain()
    notified = ingest.record(_notification(aws, key, put), "notified")
    assert invoke(embed, {"Records": [notified]}, FUNCTION) == []
    assert len(_rows(aws, "fresh", "parts")) == 1
    assert _backfill(aws, ingest, "uploads/fresh/", "fresh").objects == 1
    assert invoke(embed, {"Records": ingest.drain()}, FUNCTION) == []
    assert len(_rows(aws, "fresh", "parts")) == 1


def test_listing_goes_page_by_page(aws, ingest):
    s3 = aws_client("s3", aws)
    for i in range(1005):
        s3.put_object(Bucket=aws.bucket, Key=f"many/s{i % 7}/p{i}.jpg", Body=b"x")
    pages = list(list_pages(s3, aws.bucket, "many/"))
    assert [len(p) for p in pages] == [1000, 5]
    report = _backfill(aws, ingest, "many/", "many", chunk_size=200)
    assert report.to_dict() == {"objects": 1005, "chunks": 6, "pages": 2}  # 5 + 1
    bodies = [json.loads(r["body"]) for r in ingest.drain()]
    keys = [o[0] for b in bodies for o in b["objects"]]
    assert sorted(keys) == sorted(f"many/s{i % 7}/p{i}.jpg" for i in range(1005))


def test_the_embedding_function_follows_a_started_backfill_page_by_page(
    aws, embed, ingest, invoke, faces_dir
):
    """``POST /galleries/{g}/backfill`` queues only the first page: each page taken lists
    its objects, queues their chunks and the next page, until the listing ends."""
    s3 = aws_client("s3", aws)
    body = (faces_dir / "person_a_1.jpg").read_bytes()
    s3.put_object(Bucket=aws.bucket, Key="paged/person_a/real.jpg", Body=body)
    for i in range(1004):
        s3.put_object(Bucket=aws.bucket, Key=f"paged/s{i % 3}/p{i:04}.jpg", Body=b"x")
    ingest.drain()
    start_backfill(
        aws_client("sqs", aws),
        ingest.url,
        BackfillPage(aws.bucket, "paged/", "paged", 500),
        photo_bucket=aws.bucket,
    )
    kinds: list[str] = []
    pending = ingest.drain()
    while pending:
        kinds += [json.loads(r["body"])["type"] for r in pending]
        assert invoke(embed, {"Records": pending}, FUNCTION) == []
        pending = ingest.drain()
    assert kinds.count("facegate.backfill_page") == 2  # 1,005 versions: two listing pages
    assert kinds.count("facegate.backfill_chunk") == 3  # 1000 -> 500 + 500, then 5
    assert [r["image_key"] for r in _rows(aws, "paged", "parts")] == ["paged/person_a/real.jpg"]
    rejected = {r["image_key"] for r in _rows(aws, "paged", "rejects")}
    assert rejected == {f"paged/s{i % 3}/p{i:04}.jpg" for i in range(1004)}


def test_only_the_photo_bucket_and_folders_are_backfilled(aws, ingest):
    with pytest.raises(ValidationError, match="photo bucket"):
        backfill(
            aws_client("s3", aws),
            aws_client("sqs", aws),
            ingest.url,
            BackfillPage("someone-elses", "x/", "g", 10),
            photo_bucket=aws.bucket,
        )
    assert parse_s3_url("s3://b/some/prefix") == ("b", "some/prefix/")
    assert parse_s3_url("s3://b") == ("b", "")
    for bad in ("b/prefix", "s3:///prefix", "https://b/p"):
        with pytest.raises(ValidationError):
            parse_s3_url(bad)
