"""Erasing a person, end to end on moto with real photos, real parts and real jobs.

Pat (``pat@example.com``, an id that is an e-mail address) is enrolled through the API,
uploaded in a zip photo set into gallery ``staff`` and as single photos into gallery ``lab``,
named by a verification job against ``staff``, and in the dead-letter queues: one message
redriven (its part lands with her rows), one still parked. A late part is being written
while she is erased. Another person of the same id lives in gallery ``visitors``.

She is erased everywhere (``DELETE /subjects/{id}``, ``DELETE /galleries/{g}/subjects/{id}``
for both galleries). Then a scan of every object version, every item, every queue message
and every warm cache finds nothing of her; the visitors' gallery is as it was; and the keys
the receipts list are exactly the keys the scan saw holding her before.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote_plus

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from facegate_local.config import LocalConfig
from facegate_local.resources import _notifications, create_queues
from fastapi.testclient import TestClient
from tests_support import clear_app_caches, drain_queue, repo_root, zip_of

from app import deps
from app.main import create_app
from facegate.batch.aggregate_job import run_aggregation
from facegate.batch.erasure_job import ErasureJobs
from facegate.batch.ingest_job import EmbedJob, JobConfig
from facegate.batch.job_worker import JobWorker, WorkerConfig
from facegate.settings import Settings, get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.jobs import JobStore
from facegate.storage.ledger import IngestLedger
from facegate.storage.tombstones import Tombstones

PAT = "pat@example.com"
VISITORS = ("uploads/visitors/", "galleries/visitors/")


# --------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(aws: Settings) -> dict[str, str]:
    """The template's queues and the bucket's notifications, as the local stack makes them."""
    template = LocalConfig.load(repo_root()).template()
    urls = create_queues(template, aws_client("sqs", aws))
    props = template.resources["PhotoBucket"]["Properties"]
    aws_client("s3", aws).put_bucket_notification_configuration(
        Bucket=aws.bucket, NotificationConfiguration=_notifications(template, props)
    )
    _drain(aws, urls["IngestQueue"])  # S3's test event
    return urls


@pytest.fixture(scope="module")
def settings(aws: Settings, stack: dict[str, str]) -> Settings:
    return aws.model_copy(
        update={
            "ingest_queue_url": stack["IngestQueue"],
            "jobs_queue_url": stack["JobsQueue"],
            "aggregate_queue_url": stack["AggregateQueue"],
            "ingest_dlq_url": stack["IngestDLQ"],
            "jobs_dlq_url": stack["JobsDLQ"],
        }
    )


@pytest.fixture(scope="module")
def client(settings: Settings, pipeline: Any) -> Iterator[TestClient]:
    clear_app_caches()
    app = create_app()
    app.dependency_overrides[deps.get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: settings
    key = ApiKeyStore(aws_client("dynamodb", settings), settings.keys_table).create(
        "dpo", ["admin", "enrol", "verify"]
    )
    yield TestClient(app, headers={"x-api-key": key})
    clear_app_caches()


def _drain(settings: Settings, url: str) -> dict[str, Any]:
    return drain_queue(aws_client("sqs", settings), url)


def _embed_job(settings: Settings, pipeline: Any) -> EmbedJob:
    config = JobConfig(settings.bucket, settings.ingest_queue_url, 50, 15 * 1024 * 1024)
    return EmbedJob(
        pipeline,
        aws_client("s3", settings),
        aws_client("sqs", settings),
        IngestLedger.from_settings(settings),
        config,
        Tombstones.from_settings(settings),
    )


def _identify(client: TestClient, photo: bytes, gallery: str) -> dict[str, Any]:
    """Identification in the gallery alone (not among the enrolled subjects)."""
    body = {"image": base64.b64encode(photo).decode(), "gallery": gallery, "subjects": False}
    answer = client.post("/identify", json=body)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


# --------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------


def _holds(key: str, body: bytes | None, photos: set[bytes], vectors: np.ndarray) -> bool:
    """Whether an object version holds Pat: her id in its key or content (Parquet decoded,
    zip members listed), one of her photos, or an embedding of her face."""
    if PAT in key:
        return True
    if body is None:  # a delete marker: only its key
        return False
    if body in photos:
        return True
    if key.endswith(".parquet"):
        table = pq.read_table(pa.BufferReader(body))
        if PAT in json.dumps(table.drop_columns(_vector_columns(table)).to_pylist(), default=str):
            return True
        if "embedding" in table.column_names and table.num_rows:
            found = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
            return bool((found @ vectors.T > 0.9999).any())
        return False
    if key.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return any(
                PAT in n or archive.read(n) in photos for n in archive.namelist() if n[-1] != "/"
            )
    return PAT.encode() in body


def _vector_columns(table: pa.Table) -> list[str]:
    return [n for n in ("embedding", "bbox") if n in table.column_names]


def _scan_s3(
    settings: Settings, photos: set[bytes], vectors: np.ndarray
) -> tuple[set[str], dict[str, list[str]]]:
    """The keys with a version holding Pat outside the visitors' gallery, and every version
    of the visitors' keys (which must not change)."""
    s3 = aws_client("s3", settings)
    holding: set[str] = set()
    visitors: dict[str, list[str]] = {}
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=settings.bucket)
    for page in pages:
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            key, version = entry["Key"], entry["VersionId"]
            if key.startswith(VISITORS):
                visitors.setdefault(key, []).append(version)
                continue
            is_marker = "Size" not in entry
            body = None
            if not is_marker:
                body = s3.get_object(Bucket=settings.bucket, Key=key, VersionId=version)[
                    "Body"
                ].read()
            if _holds(key, body, photos, vectors):
                holding.add(key)
    return holding, {k: sorted(v) for k, v in visitors.items()}


def _scan_dynamodb(settings: Settings) -> list[dict[str, Any]]:
    db = aws_client("dynamodb", settings)
    items = []
    for table in (settings.table, settings.keys_table):
        for page in db.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            items.extend(i for i in page["Items"] if PAT in json.dumps(i, default=str))
    return items


def _scan_queues(settings: Settings, urls: dict[str, str]) -> list[str]:
    """Bodies naming Pat on any queue (peeked: made visible again at once)."""
    sqs = aws_client("sqs", settings)
    found = []
    for url in urls.values():
        seen = []
        while got := sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30
        ).get("Messages"):
            seen.extend(got)
        for m in seen:
            if PAT in m["Body"] or quote_plus(PAT) in m["Body"]:  # S3 encodes keys
                found.append(m["Body"])
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
            )
    return found


def _covered(key: str, listed: set[str]) -> bool:
    return key in listed or any(p.endswith("/") and key.startswith(p) for p in listed)


# --------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------


def test_an_erased_person_is_gone_from_every_store_and_the_receipt_says_where(
    settings: Settings,
    stack: dict[str, str],
    client: TestClient,
    pipeline: Any,
    faces_dir: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photo: Callable[[str], bytes] = lambda name: (faces_dir / f"{name}.jpg").read_bytes()  # noqa: E731
    s3 = aws_client("s3", settings)
    sqs = aws_client("sqs", settings)
    bucket = settings.bucket
    pats = {photo("person_a_1"), photo("person_a_2")}
    embed = _embed_job(settings, pipeline)

    # Pat enrolled through the API.
    b64 = base64.b64encode(photo("person_a_1")).decode()
    assert client.post(f"/subjects/{PAT}/faces", json={"image": b64}).status_code == 201

    # In a zip photo set of staff (with Bob), as single photos in lab; the visitors' Pat.
    staff_set = zip_of({f"{PAT}/1.jpg": photo("person_a_1"), "bob/1.jpg": photo("person_b_1")})
    s3.put_object(Bucket=bucket, Key="uploads/staff/set.zip", Body=staff_set)
    s3.put_object(Bucket=bucket, Key=f"uploads/lab/{PAT}/1.jpg", Body=photo("person_a_2"))
    s3.put_object(Bucket=bucket, Key=f"uploads/lab/{PAT}/2.jpg", Body=b"not a photo")
    s3.put_object(Bucket=bucket, Key=f"uploads/visitors/{PAT}/1.jpg", Body=photo("person_b_2"))
    s3.put_object(Bucket=bucket, Key="uploads/visitors/bob/1.jpg", Body=photo("person_b_1"))
    assert embed.handle(_drain(settings, stack["IngestQueue"])) == {"batchItemFailures": []}

    # A notification of another lab photo dead-lettered, then redriven: its part lands.
    s3.put_object(Bucket=bucket, Key=f"uploads/lab/{PAT}/3.jpg", Body=photo("person_a_1"))
    (redriven,) = _drain(settings, stack["IngestQueue"])["Records"]
    assert embed.handle({"Records": [redriven]}) == {"batchItemFailures": []}
    # ... and one more still parked in the dead-letter queue.
    s3.put_object(Bucket=bucket, Key=f"uploads/lab/{PAT}/4.jpg", Body=photo("person_a_2"))
    (parked,) = _drain(settings, stack["IngestQueue"])["Records"]
    sqs.send_message(QueueUrl=stack["IngestDLQ"], MessageBody=parked["body"])
    # A late part: a worker that read Pat's upload before the erasure.
    s3.put_object(Bucket=bucket, Key=f"uploads/staff/{PAT}/late.jpg", Body=photo("person_a_2"))
    (late,) = _drain(settings, stack["IngestQueue"])["Records"]
    for gallery in ("staff", "lab", "visitors"):
        compacted = client.post(f"/galleries/{gallery}/compact")
        assert compacted.status_code == 200, compacted.text

    # A verification job against staff naming Pat (and Bob).
    s3.put_object(Bucket=bucket, Key="jobs/j1/probe-pat.jpg", Body=photo("person_a_2"))
    s3.put_object(Bucket=bucket, Key="jobs/j1/probe-bob.jpg", Body=photo("person_b_2"))
    manifest = f"probe,claimed_subject,gallery,mode\nprobe-pat.jpg,{PAT},staff,verify\n"
    manifest += "probe-bob.jpg,bob,staff,verify\nprobe-pat.jpg,,staff,identify\n"
    s3.put_object(Bucket=bucket, Key="jobs/j1/manifest.csv", Body=manifest.encode())
    jobs = JobStore.from_settings(settings)
    worker = JobWorker(
        pipeline,
        s3,
        sqs,
        jobs,
        WorkerConfig(bucket, stack["JobsQueue"], stack["AggregateQueue"], chunk_size=2),
    )
    job_events = [m for m in _drain(settings, stack["IngestQueue"])["Records"]]
    assert job_events == []  # jobs/ notifies the jobs queue, not the ingest one
    assert worker.handle(_drain(settings, stack["JobsQueue"])) == {"batchItemFailures": []}
    assert worker.handle(_drain(settings, stack["JobsQueue"])) == {"batchItemFailures": []}
    _drain(settings, stack["AggregateQueue"])
    run_aggregation(s3, bucket, jobs, "j1", pipeline.model_id)
    results = pq.read_table(
        io.BytesIO(s3.get_object(Bucket=bucket, Key="results/j1/results.parquet")["Body"].read())
    ).to_pylist()
    assert [r["decision"] for r in results] == ["match", "match", "identified"]
    assert results[2]["best_subject"] == PAT

    # Warm caches: the API identifies Pat in both galleries.
    for gallery in ("staff", "lab"):
        found = _identify(client, photo("person_a_2"), gallery)
        assert found["best"]["subject_id"] == PAT

    vectors = np.stack(
        [pipeline.process(photo(n)).primary.vector for n in ("person_a_1", "person_a_2")]
    )
    held, visitors_before = _scan_s3(settings, pats, vectors)
    assert {
        "uploads/staff/set.zip",
        "jobs/j1/manifest.csv",
        "jobs/j1/probe-pat.jpg",
        "results/j1/results.parquet",
        "galleries/staff/gallery.parquet",
        "galleries/lab/gallery.parquet",
    } <= held
    assert any(k.startswith(f"enrolments/default/{PAT}/") for k in held)
    assert any(k.startswith("galleries/lab/rejects/") for k in held)
    assert _scan_dynamodb(settings) and _scan_queues(settings, stack)

    # Erase, while the late worker writes its part: it read and embedded the photo before,
    # and writes after the erasure has listed the parts.
    receipts: list[dict[str, Any]] = []

    def erase_everywhere() -> None:
        answer = client.delete(f"/subjects/{PAT}")
        assert answer.status_code == 200, answer.text
        receipts.append(answer.json())
        for gallery in ("staff", "lab"):
            answer = client.delete(f"/galleries/{gallery}/subjects/{PAT}")
            assert answer.status_code == 200, answer.text
            receipts.append(answer.json())

    real_write = GalleryStore.write_table
    erased_once: list[bool] = []

    def write_after_the_erasure(self: GalleryStore, key: str, table: pa.Table, **kw: Any) -> Any:
        if not erased_once and key.startswith("galleries/staff/parts/"):
            erased_once.append(True)
            erase_everywhere()
        return real_write(self, key, table, **kw)

    late_job = _embed_job(settings, pipeline)
    tombstones = late_job.tombstones
    assert tombstones is not None
    checked: list[int] = []
    real_in_scope = tombstones.in_scope

    def in_scope_seen_before_the_erasure(scope: str, subjects: Any) -> dict[str, str]:
        # The worker's first check ran before the erasure began (it finds nothing).
        checked.append(1)
        return {} if len(checked) == 1 else real_in_scope(scope, subjects)

    monkeypatch.setattr(tombstones, "in_scope", in_scope_seen_before_the_erasure)
    monkeypatch.setattr(GalleryStore, "write_table", write_after_the_erasure)
    assert late_job.handle({"Records": [late]}) == {"batchItemFailures": []}
    monkeypatch.undo()
    assert erased_once and len(receipts) == 3

    # Nothing of Pat anywhere outside the visitors' gallery.
    held_after, visitors_after = _scan_s3(settings, pats, vectors)
    assert held_after == set()
    assert _scan_dynamodb(settings) == []
    assert _scan_queues(settings, stack) == []
    for gallery in ("staff", "lab"):
        assert client.post(f"/galleries/{gallery}/compact").status_code == 200
    cache = deps._gallery_cache(pipeline.model_id)
    for bucket_name, key, _ in cache.entries():
        index = cache.peek(bucket_name, key)
        assert (
            index is None or PAT not in index.subject_names.to_pylist() or key.startswith(VISITORS)
        )
    for gallery in ("staff", "lab"):
        found = _identify(client, photo("person_a_2"), gallery)
        assert PAT not in [c["subject_id"] for c in found["candidates"]]
    assert GalleryStore(s3, bucket).read_table("galleries/staff/gallery.parquet")[
        "subject_id"
    ].to_pylist() == ["bob"]

    # The warm jobs worker (it cached staff's gallery for j1) sees the rewrite too.
    s3.put_object(Bucket=bucket, Key="jobs/j2/probe.jpg", Body=photo("person_a_2"))
    s3.put_object(
        Bucket=bucket,
        Key="jobs/j2/manifest.csv",
        Body=b"probe,claimed_subject,gallery,mode\nprobe.jpg,,staff,identify\n",
    )
    assert worker.handle(_drain(settings, stack["JobsQueue"])) == {"batchItemFailures": []}
    assert worker.handle(_drain(settings, stack["JobsQueue"])) == {"batchItemFailures": []}
    _drain(settings, stack["AggregateQueue"])
    run_aggregation(s3, bucket, jobs, "j2", pipeline.model_id)
    (again,) = pq.read_table(
        io.BytesIO(s3.get_object(Bucket=bucket, Key="results/j2/results.parquet")["Body"].read())
    ).to_pylist()
    assert again["best_subject"] != PAT
    assert PAT not in [r["subject_id"] for r in again["ranks"] or []]
    cached = worker.cache.peek(bucket, "galleries/staff/gallery.parquet")
    assert cached is not None and PAT not in cached.subject_names.to_pylist()

    # The visitors' Pat is untouched: every version as it was, and still found there.
    assert visitors_after == visitors_before
    assert _identify(client, photo("person_b_2"), "visitors")["best"]["subject_id"] == PAT

    # The receipts list exactly the keys the scan saw holding her.
    listed = {r["key"] for receipt in receipts for r in receipt["removed"] if r["store"] == "s3"}
    assert all(_covered(k, listed) for k in held), sorted(
        k for k in held if not _covered(k, listed)
    )
    assert all(any(_covered(k, {entry}) for k in held) for entry in listed), sorted(listed)
    kinds = {kind for receipt in receipts for kind in receipt["totals"]}
    assert {
        "enrolment_photos",
        "subject_items",
        "gallery_part",
        "gallery",
        "gallery_rejects",
        "archive",
        "upload_photos",
        "job_manifest",
        "job_probe",
        "results_table",
        "dead_letters",
    } <= kinds
    assert [r["scope"] for r in receipts] == ["api", "gallery:staff", "gallery:lab"]
    assert all(r["remaining"] for r in receipts)


def test_a_large_gallery_is_erased_by_the_jobs_worker_with_its_receipt_kept(
    settings: Settings, stack: dict[str, str], pipeline: Any, faces_dir: Any
) -> None:
    """Over the inline limit the DELETE answers 202 with the tombstone already recorded; the
    worker erases, and ``GET /erasures/{id}`` gives the receipt."""
    s3, sqs = aws_client("s3", settings), aws_client("sqs", settings)
    small = settings.model_copy(update={"erasure_inline_max_objects": 0})
    clear_app_caches()
    app = create_app()
    app.dependency_overrides[deps.get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: small
    key = ApiKeyStore(aws_client("dynamodb", small), small.keys_table).create("dpo", ["admin"])
    client = TestClient(app, headers={"x-api-key": key})
    photo = (faces_dir / "person_a_1.jpg").read_bytes()
    s3.put_object(Bucket=settings.bucket, Key="uploads/big/kim/1.jpg", Body=photo)
    s3.put_object(Bucket=settings.bucket, Key="uploads/big/lee/1.jpg", Body=photo)
    assert _embed_job(settings, pipeline).handle(_drain(settings, stack["IngestQueue"])) == {
        "batchItemFailures": []
    }

    answer = client.delete("/galleries/big/subjects/kim")
    assert answer.status_code == 202, answer.text
    queued = answer.json()
    assert queued["status"] == "queued" and queued["scope"] == "gallery:big"
    assert Tombstones.from_settings(settings).in_scope("gallery:big", ["kim"])
    assert client.get(f"/erasures/{queued['erasure_id']}").json()["status"] == "queued"

    eraser = deps._eraser(small, pipeline.model_id)
    worker = JobWorker(
        pipeline,
        s3,
        sqs,
        JobStore.from_settings(settings),
        WorkerConfig(settings.bucket, stack["JobsQueue"], stack["AggregateQueue"]),
        erasures=ErasureJobs(eraser, stack["JobsQueue"], chunk_size=1),
    )
    # The request fans out one task a chunk; the chunks, run together, merge the receipt.
    assert worker.handle(_drain(settings, stack["JobsQueue"])) == {"batchItemFailures": []}
    running = client.get(f"/erasures/{queued['erasure_id']}").json()
    assert running["status"] == "running" and running["chunks"] > 1, running
    assert worker.handle(_drain(settings, stack["JobsQueue"])) == {"batchItemFailures": []}
    done = client.get(f"/erasures/{queued['erasure_id']}").json()
    assert done["status"] == "done", done
    assert done["receipt"]["totals"]["gallery_part"]["rows_removed"] == 1
    assert done["receipt"]["totals"]["upload_photos"]["rows_removed"] == 1
    store = GalleryStore(s3, settings.bucket)
    (part,) = store.list_parts("big")
    assert store.read_table(part)["subject_id"].to_pylist() == ["lee"]
    assert client.get("/erasures/never-queued").json()["error"]["code"] == "unknown_erasure"
    assert client.delete("/galleries/nowhere/subjects/kim").status_code == 404
