"""Batch verification jobs on moto with real photos: manifest -> chunks -> results.

The decisions must be right for the known identities: person_a_2 is person_a, impostors
are nobody in the gallery, and bad rows and missing probes are failures with reasons.
"""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from tests_support import drain_queue

from facegate.batch.aggregate_job import run_aggregation
from facegate.batch.job_worker import JobWorker, WorkerConfig
from facegate.batch.messages import AggregateRequest
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore
from facegate.storage.keys import results_key, summary_key

MANIFEST = """probe,claimed_subject,gallery,mode
person_a_2.jpg,person_a,demo,verify
person_b_2.jpg,person_a,demo,verify
impostor_2.jpg,,demo,identify
person_b_2.jpg,,demo,identify
missing.jpg,person_a,demo,verify
person_a_2.jpg,person_a,demo,guess
person_a_2.jpg,nobody,demo,verify
"""
EXPECTED = ["match", "no_match", "not_identified", "identified", "failed", "failed", "failed"]


@pytest.fixture(scope="module")
def queues(aws):
    sqs = aws_client("sqs", aws)
    return {n: sqs.create_queue(QueueName=n)["QueueUrl"] for n in ("jobs", "aggregate")}


def _drain(aws, url):
    return drain_queue(aws_client("sqs", aws), url)


def _notification(bucket, key):
    s3 = {"bucket": {"name": bucket}, "object": {"key": key, "size": 1, "eTag": "x"}}
    body = json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": s3}]})
    return {"Records": [{"messageId": "n1", "body": body}]}


def test_manifest_to_results(aws, pipeline, faces_dir, queues, gallery):
    s3 = aws_client("s3", aws)
    for name in ("person_a_2", "person_b_2", "impostor_2"):
        s3.put_object(
            Bucket=aws.bucket,
            Key=f"jobs/j1/{name}.jpg",
            Body=(faces_dir / f"{name}.jpg").read_bytes(),
        )
    s3.put_object(Bucket=aws.bucket, Key="jobs/j1/manifest.csv", Body=MANIFEST.encode())
    jobs = JobStore(aws_client("dynamodb", aws), aws.table)
    config = WorkerConfig(aws.bucket, queues["jobs"], queues["aggregate"], chunk_size=2)
    worker = JobWorker(pipeline, s3, aws_client("sqs", aws), jobs, config)

    start = _notification(aws.bucket, "jobs/j1/manifest.csv")
    assert worker.handle(start) == {"batchItemFailures": []}
    assert worker.handle(start) == {"batchItemFailures": []}  # duplicate: starts nothing
    chunks = _drain(aws, queues["jobs"])
    assert len(chunks["Records"]) == 3  # 5 valid rows in chunks of 2
    assert jobs.get("j1").status == "running"
    assert worker.handle(chunks) == {"batchItemFailures": []}
    assert worker.cache.stats().hits >= 1  # the gallery was loaded once per process
    requests = _drain(aws, queues["aggregate"])["Records"]
    assert [AggregateRequest.from_message(r["body"]).job_id for r in requests] == ["j1"]

    summary = run_aggregation(s3, aws.bucket, jobs, "j1", pipeline.model_id)
    body = s3.get_object(Bucket=aws.bucket, Key=results_key("j1"))["Body"].read()
    results = pq.read_table(io.BytesIO(body)).to_pylist()
    assert [r["decision"] for r in results] == EXPECTED
    assert results[3]["best_subject"] == "person_b"
    assert [r["reason"] for r in results[4:]] == [
        "invalid_image",
        "invalid_mode",
        "unknown_subject",
    ]
    stored = json.loads(s3.get_object(Bucket=aws.bucket, Key=summary_key("j1"))["Body"].read())
    assert stored["rows"] == 7 and summary["counts"]["failed"] == 3
    assert stored["match_rate"] == 0.5
    status = jobs.get("j1")
    assert status.status == "succeeded" and status.chunks_done == status.chunks == 3
