"""Verification jobs through the real handlers (``functions/jobs``, ``functions/aggregate``)
on batches mixing good and bad records: every job ends with a status.

A manifest that cannot be used (UTF-16, deleted before its notification ran, over 16 MB)
leaves a ``failed`` job with the reason, which ``GET /jobs/<id>`` shows; a probe that cannot
be used (20 MB, too many pixels) is a failed result row with its reason code and the job
still succeeds; a chunk that cannot be run fails its job. Only the throttled record is a
batch item failure, and its retry starts its job.
"""

from __future__ import annotations

import io
import json
import logging

import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore
from facegate.storage.keys import results_key

JOBS = "JobsFunction"
AGGREGATE = "AggregateFunction"
HEADER = "probe,claimed_subject,gallery,mode\n"


@pytest.fixture(scope="module")
def queues(make_queue):
    jobs, aggregate = make_queue("facegate-jobs"), make_queue("facegate-aggregate")
    jobs.notify("jobs/", "manifest.csv")
    return jobs, aggregate


@pytest.fixture(scope="module")
def handlers(load_handler, queues):
    jobs, aggregate = queues
    urls = {"jobs_queue_url": jobs.url, "aggregate_queue_url": aggregate.url}
    return load_handler("jobs", job_chunk_size=2, **urls), load_handler("aggregate", **urls)


def _pixel_bomb() -> bytes:
    """A small PNG of 42 million pixels, over the 40 million the pipeline decodes."""
    buffer = io.BytesIO()
    Image.new("1", (7000, 6000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _message_id(records: list[dict], key: str) -> str:
    (found,) = [r["messageId"] for r in records if key.replace("/", "%2F") in r["body"]]
    return found


def test_every_job_ends_with_a_status(
    aws, handlers, queues, gallery, invoke, faces_dir, monkeypatch, caplog
):
    jobs_fn, aggregate_fn = handlers
    jobs_queue, aggregate_queue = queues
    s3 = aws_client("s3", aws)
    store = JobStore(aws_client("dynamodb", aws), aws.table)

    def upload(key: str, body: bytes) -> None:
        s3.put_object(Bucket=aws.bucket, Key=key, Body=body)

    for job, name in [("good", "person_a_2"), ("good", "impostor_2"), ("slow", "person_b_2")]:
        upload(f"jobs/{job}/{name}.jpg", (faces_dir / f"{name}.jpg").read_bytes())
    upload("jobs/good/big.jpg", b"\xff\xd8\xff\xe0" + bytes(20 * 1024 * 1024))
    upload("jobs/good/bomb.png", _pixel_bomb())
    good = (
        "person_a_2.jpg,person_a,demo,verify\n"
        "big.jpg,person_a,demo,verify\n"
        "bomb.png,,demo,identify\n"
        "impostor_2.jpg,,demo,identify\n"
    )
    upload("jobs/good/manifest.csv", (HEADER + good).encode())
    upload("jobs/wide/manifest.csv", (HEADER + good).encode("utf-16"))
    upload("jobs/gone/manifest.csv", (HEADER + good).encode())
    s3.delete_object(Bucket=aws.bucket, Key="jobs/gone/manifest.csv")
    upload("jobs/huge/manifest.csv", (HEADER + good * 200_000).encode())
    upload("jobs/slow/manifest.csv", (HEADER + "person_b_2.jpg,,demo,identify\n").encode())
    records = jobs_queue.drain()
    assert len(records) == 5
    records += [
        jobs_queue.record("{not json", "not-json"),
        jobs_queue.record(json.dumps({"type": "facegate.archive_chunk", "version": 1}), "wrong"),
    ]
    slow = _message_id(records, "jobs/slow/manifest.csv")
    real_get = jobs_fn.worker.s3.get_object

    def throttled(**kwargs):
        if kwargs["Key"] == "jobs/slow/manifest.csv":
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "GetObject")
        return real_get(**kwargs)

    monkeypatch.setattr(jobs_fn.worker.s3, "get_object", throttled)
    caplog.set_level(logging.WARNING, logger="facegate.batch")

    assert invoke(jobs_fn, {"Records": records}, JOBS) == [slow]

    failed = {job: store.get(job) for job in ("wide", "gone", "huge")}
    assert {job: s.status for job, s in failed.items()} == dict.fromkeys(failed, "failed")
    assert "UTF-16" in failed["wide"].reason
    assert "cannot be read" in failed["gone"].reason
    assert "larger than" in failed["huge"].reason
    assert store.get("good").status == "running"
    discarded = {r.message_id for r in caplog.records if r.getMessage() == "message discarded"}
    assert discarded == {"not-json", "wrong"}

    monkeypatch.undo()  # SQS redelivers the throttled record alone
    assert invoke(jobs_fn, {"Records": [r for r in records if r["messageId"] == slow]}, JOBS) == []

    store.create("broken", rows=1, chunks=1, failed_rows=0)
    bad_chunk = {
        "type": "facegate.job_chunk",
        "version": 1,
        "job_id": "broken",
        "index": 0,
        "count": 1,
        "rows": [[0, "jobs/broken/../../x.jpg", "demo", "verify", "person_a"]],
    }
    chunks = jobs_queue.drain()
    assert len(chunks) == 3  # good: 4 rows in chunks of 2; slow: 1 row
    chunks.append(jobs_queue.record(json.dumps(bad_chunk), "broken-chunk"))
    assert invoke(jobs_fn, {"Records": chunks}, JOBS) == []
    broken = store.get("broken")
    assert broken.status == "failed" and broken.reason.startswith("validation_error")

    requests = aggregate_queue.drain()
    assert len(requests) == 2
    requests.append(aggregate_queue.record("{not json", "not-a-request"))
    assert invoke(aggregate_fn, {"Records": requests}, AGGREGATE) == []

    status = store.get("good")
    assert status.status == "succeeded" and status.rows == 4
    body = s3.get_object(Bucket=aws.bucket, Key=results_key("good"))["Body"].read()
    results = pq.read_table(io.BytesIO(body)).to_pylist()
    assert [(r["decision"], r["reason"]) for r in results] == [
        ("match", None),
        ("failed", "image_too_large"),
        ("failed", "image_too_large"),
        ("not_identified", None),
    ]
    assert store.get("slow").status == "succeeded"
