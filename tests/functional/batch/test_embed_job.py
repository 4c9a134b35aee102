"""The S3 embedding job on moto with real photos: S3 notifications -> SQS -> gallery parts.

The queue, its dead-letter queue and the bucket notification are created from template.yaml
by the local stack's own code, so these tests also check the template's wiring.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from facegate_local.config import LocalConfig
from facegate_local.resources import _notifications, create_queues
from PIL import Image
from tests_support import repo_root

from facegate.batch.ingest_job import EmbedJob, JobConfig
from facegate.storage.clients import aws_client
from facegate.storage.ledger import IngestLedger

REPO = repo_root()


@pytest.fixture(scope="module")
def wiring(aws):
    template = LocalConfig.load(REPO).template()
    sqs = aws_client("sqs", aws)
    urls = create_queues(template, sqs)
    props = template.resources["PhotoBucket"]["Properties"]
    aws_client("s3", aws).put_bucket_notification_configuration(
        Bucket=aws.bucket, NotificationConfiguration=_notifications(template, props)
    )
    test_event = _drain(aws, urls["IngestQueue"])  # S3 sends one when notifications are set
    assert all("s3:TestEvent" in r["body"] for r in test_event["Records"])
    return urls


def _job(pipeline, aws, wiring, chunk_size=50):
    config = JobConfig(
        bucket=aws.bucket,
        queue_url=wiring["IngestQueue"],
        chunk_size=chunk_size,
        max_photo_bytes=15 * 1024 * 1024,
    )
    ledger = IngestLedger(aws_client("dynamodb", aws), aws.table)
    return EmbedJob(pipeline, aws_client("s3", aws), aws_client("sqs", aws), ledger, config)


def _drain(aws, url):
    """Every message now on the queue, as the SQS event Lambda would get."""
    sqs = aws_client("sqs", aws)
    records = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        if not messages:
            return {"Records": records}
        for m in messages:
            records.append(
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "eventSource": "aws:sqs",
                }
            )
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def _jpeg(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo_set(faces_dir):
    """A zip photo set: one folder per subject, plus the four kinds of bad file."""
    read = lambda n: (faces_dir / f"{n}.jpg").read_bytes()  # noqa: E731
    left = np.asarray(Image.open(faces_dir / "person_a_2.jpg").convert("RGB"))
    right = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))
    height = min(left.shape[0], right.shape[0])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("set/person_a/a1.jpg", read("person_a_1"))
        archive.writestr("set/person_a/a2.jpg", read("person_a_2"))
        archive.writestr("set/person_b/b1.jpg", read("person_b_1"))
        archive.writestr("set/person_b/b2.jpg", read("person_b_2"))
        archive.writestr("set/bad/corrupt.jpg", read("person_b_1")[:5000])
        archive.writestr("set/bad/notes.jpg", b"shopping list: milk, eggs\n")
        archive.writestr("set/bad/clothes.jpg", _jpeg(right[650:, :]))
        archive.writestr(
            "set/bad/two.jpg", _jpeg(np.concatenate([left[:height], right[:height]], 1))
        )
    return buffer.getvalue()


def _parts(aws, gallery):
    s3 = aws_client("s3", aws)
    listed = s3.list_objects_v2(Bucket=aws.bucket, Prefix=f"galleries/{gallery}/")
    out = {"parts": [], "rejects": []}
    for item in listed.get("Contents", []):
        if "/inbox/" in item["Key"]:  # the parts' markers for compaction
            continue
        kind = "parts" if "/parts/" in item["Key"] else "rejects"
        body = s3.get_object(Bucket=aws.bucket, Key=item["Key"])["Body"].read()
        out[kind].append(pq.read_table(io.BytesIO(body)))
    return out


def test_zip_photo_set_becomes_one_part_with_rejects(pipeline, aws, wiring, photo_set):
    s3 = aws_client("s3", aws)
    s3.put_object(Bucket=aws.bucket, Key="uploads/team/photo set.zip", Body=photo_set)
    event = _drain(aws, wiring["IngestQueue"])
    assert len(event["Records"]) == 1  # the bucket notification reached the queue
    assert _job(pipeline, aws, wiring).handle(event) == {"batchItemFailures": []}
    found = _parts(aws, "team")
    assert len(found["parts"]) == 1 and len(found["rejects"]) == 1
    rows = found["parts"][0].to_pylist()
    assert sorted(r["subject_id"] for r in rows) == ["person_a", "person_a", "person_b", "person_b"]
    assert all(r["image_key"].startswith("uploads/team/photo set.zip/set/") for r in rows)
    reasons = {
        r["image_key"].rsplit("/", 1)[1]: r["reason"] for r in found["rejects"][0].to_pylist()
    }
    assert reasons == {
        "corrupt.jpg": "invalid_image",
        "notes.jpg": "invalid_image",
        "clothes.jpg": "no_face",
        "two.jpg": "multiple_faces",
    }

    again = _job(pipeline, aws, wiring).handle(event)  # the same delivery, twice
    assert again == {"batchItemFailures": []}
    assert sum(t.num_rows for t in _parts(aws, "team")["parts"]) == 4


def test_single_photos_and_partial_batch_failure(pipeline, aws, wiring, faces_dir, monkeypatch):
    s3 = aws_client("s3", aws)
    uploads = [("macron", "José Núñez+1.jpg", "person_a_1"), ("ardern", "b2.jpg", "person_b_2")]
    for subject, filename, name in uploads:
        key = f"uploads/solo/{subject}/{filename}"  # S3 URL-encodes it in the notification
        s3.put_object(Bucket=aws.bucket, Key=key, Body=(faces_dir / f"{name}.jpg").read_bytes())
    event = _drain(aws, wiring["IngestQueue"])
    assert len(event["Records"]) == 2
    job = _job(pipeline, aws, wiring)
    real_get = job.s3.get_object

    def flaky(**kwargs):
        if "ardern" in kwargs["Key"]:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "throttled"}}, "GetObject")
        return real_get(**kwargs)

    monkeypatch.setattr(job.s3, "get_object", flaky)
    answer = job.handle(event)
    failed = [f["itemIdentifier"] for f in answer["batchItemFailures"]]
    ardern = next(r["messageId"] for r in event["Records"] if "ardern" in r["body"])
    assert failed == [ardern]
    rows = [r for t in _parts(aws, "solo")["parts"] for r in t.to_pylist()]
    assert [r["subject_id"] for r in rows] == ["macron"]
    assert rows[0]["image_key"] == "uploads/solo/macron/José Núñez+1.jpg"

    monkeypatch.setattr(job.s3, "get_object", real_get)  # the retry succeeds
    retry = {"Records": [r for r in event["Records"] if r["messageId"] == ardern]}
    assert job.handle(retry) == {"batchItemFailures": []}
    rows = [r for t in _parts(aws, "solo")["parts"] for r in t.to_pylist()]
    assert sorted(r["subject_id"] for r in rows) == ["ardern", "macron"]


def test_large_archive_fans_out_into_chunks(pipeline, aws, wiring, photo_set):
    s3 = aws_client("s3", aws)
    s3.put_object(Bucket=aws.bucket, Key="uploads/big/set.zip", Body=photo_set)
    job = _job(pipeline, aws, wiring, chunk_size=3)
    first = _drain(aws, wiring["IngestQueue"])
    assert job.handle(first) == {"batchItemFailures": []}
    assert _parts(aws, "big")["parts"] == []  # nothing embedded inline
    chunks = _drain(aws, wiring["IngestQueue"])
    assert len(chunks["Records"]) == 3  # 8 members in chunks of at most 3
    assert all(json.loads(r["body"])["type"] == "facegate.archive_chunk" for r in chunks["Records"])
    assert job.handle(chunks) == {"batchItemFailures": []}
    found = _parts(aws, "big")
    assert sum(t.num_rows for t in found["parts"]) == 4
    assert sum(t.num_rows for t in found["rejects"]) == 4


def test_compaction_over_the_api_honours_deletions(pipeline, aws, wiring, photo_set, faces_dir):
    """Compaction of the parts the job wrote, through the API. Deleting the enrolled subject
    of the same id leaves the gallery's person_b alone (another person, another scope);
    erasing person_b from the gallery takes her out of the parts and the next compaction."""
    from fastapi.testclient import TestClient

    from app.deps import get_pipeline
    from app.main import create_app
    from facegate.gallery.format import read_gallery
    from facegate.settings import get_settings
    from facegate.storage.apikeys import ApiKeyStore
    from facegate.storage.tombstones import Tombstones

    photo_set_face = (faces_dir / "person_b_1.jpg").read_bytes()
    s3 = aws_client("s3", aws)
    s3.put_object(Bucket=aws.bucket, Key="uploads/crew/set.zip", Body=photo_set)
    assert _job(pipeline, aws, wiring).handle(_drain(aws, wiring["IngestQueue"]))
    app = create_app()
    app.dependency_overrides[get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: aws
    key = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table).create("compaction")
    client = TestClient(app, headers={"x-api-key": key})

    first = client.post("/galleries/crew/compact")
    assert first.status_code == 200, first.text
    assert first.json()["rows_out"] == 4
    b64 = base64.b64encode(photo_set_face).decode()
    enrolled = client.post("/subjects/person_b/faces", json={"image": b64})
    assert enrolled.status_code == 201
    assert client.delete("/subjects/person_b").status_code == 200  # records a tombstone
    assert Tombstones.from_settings(aws).all().in_scope("api", ["person_b"])
    assert client.post("/galleries/crew/compact").json()["rows_out"] == 4
    erased = client.delete("/galleries/crew/subjects/person_b")
    assert erased.status_code == 200, erased.text
    assert erased.json()["totals"]["gallery_part"]["rows_removed"] == 2
    second = client.post("/galleries/crew/compact").json()
    assert second["rows_out"] == 2 and second["deleted_dropped"] == 0
    body = s3.get_object(Bucket=aws.bucket, Key="galleries/crew/gallery.parquet")["Body"].read()
    meta, table = read_gallery(io.BytesIO(body), expected_model_id="sface+dlib")
    assert set(table.column("subject_id").to_pylist()) == {"person_a"} and meta.row_count == 2
    assert meta.detector == "yunet"  # the default detector made every part
    shown = client.get("/galleries/crew").json()
    assert shown["compacted"] is True and shown["rows"] == 2
    assert shown["rejects"] == {"invalid_image": 2, "no_face": 1, "multiple_faces": 1}
    other = client.get("/galleries/nothing-here")
    assert other.status_code == 404 and other.json()["error"]["code"] == "unknown_gallery"
