"""Batch verification jobs on moto with real photos: manifest -> chunks -> results.

The decisions must be right for the known identities: person_a_2 is person_a, impostors
are nobody in the gallery, and bad rows and missing probes are failures with reasons.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest
from tests_support import drain_queue

from facegate.batch.aggregate_job import run_aggregation
from facegate.batch.job_worker import JobWorker, WorkerConfig
from facegate.batch.messages import AggregateRequest
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore
from facegate.storage.keys import chunk_result_key, results_key, summary_key
from facegate.storage.tombstones import Tombstones, gallery_scope

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


ERASED_MANIFEST = """probe,claimed_subject,gallery,mode
p1.jpg,person_a,demo,verify
p2.jpg,,demo,identify
p1.jpg,,demo,identify
"""
#: The probes, under names that say nothing of whom they show.
ERASED_PROBES = {"p1": "person_a_2", "p2": "person_b_2"}


def _results(s3, bucket, key):
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def test_a_job_running_while_a_person_is_erased_writes_nothing_of_them(
    aws, pipeline, faces_dir, queues, gallery
):
    """person_a is erased from ``demo`` after the job started and before its last chunks
    (their gallery, loaded before, still holds her): no result the job writes names her,
    its rows still add up, and a job created after the erasure may name a person_a again."""
    s3 = aws_client("s3", aws)
    for probe, name in ERASED_PROBES.items():
        body = (faces_dir / f"{name}.jpg").read_bytes()
        s3.put_object(Bucket=aws.bucket, Key=f"jobs/j2/{probe}.jpg", Body=body)
    s3.put_object(Bucket=aws.bucket, Key="jobs/j2/manifest.csv", Body=ERASED_MANIFEST.encode())
    jobs = JobStore(aws_client("dynamodb", aws), aws.table)
    tombstones = Tombstones.from_settings(aws)
    config = WorkerConfig(aws.bucket, queues["jobs"], queues["aggregate"], chunk_size=1)
    worker = JobWorker(pipeline, s3, aws_client("sqs", aws), jobs, config, tombstones=tombstones)
    assert worker.handle(_notification(aws.bucket, "jobs/j2/manifest.csv")) == {
        "batchItemFailures": []
    }
    chunks = _drain(aws, queues["jobs"])["Records"]
    assert len(chunks) == 3
    first = {"Records": chunks[:1]}
    assert worker.handle(first) == {"batchItemFailures": []}
    assert _results(s3, aws.bucket, "results/j2/chunks/00000.parquet")[
        "claimed_subject"
    ].to_pylist() == ["person_a"]  # written before the erasure

    tombstones.record(gallery_scope("demo"), "person_a")
    assert worker.handle({"Records": chunks[1:]}) == {"batchItemFailures": []}
    _drain(aws, queues["aggregate"])
    run_aggregation(s3, aws.bucket, jobs, "j2", pipeline.model_id, tombstones)

    results = _results(s3, aws.bucket, results_key("j2")).to_pylist()
    assert "person_a" not in json.dumps(results)
    assert [r["row"] for r in results] == [0, 1, 2]
    # The claim fails; the identifications are answered as the gallery without her would.
    assert [r["reason"] for r in results] == ["subject_erased", None, None]
    assert results[0]["probe"] == "" and results[0]["claimed_subject"] is None
    assert results[1]["best_subject"] == "person_b"
    assert results[2]["decision"] == "not_identified" and results[2]["best_subject"] is None
    assert jobs.get("j2").status == "succeeded"
    stored = json.loads(s3.get_object(Bucket=aws.bucket, Key=summary_key("j2"))["Body"].read())
    assert stored["counts"]["failed"] == 1
    chunk_tables = [chunk_result_key("j2", n) for n in (1, 2)]
    assert all(
        "person_a" not in json.dumps(_results(s3, aws.bucket, k).to_pylist()) for k in chunk_tables
    )

    # A job created after the erasure asks about a person_a knowingly: kept. Job times are
    # whole seconds, and an erasure in the job's second counts as during it: the next one.
    time.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)
    for probe, name in ERASED_PROBES.items():
        body = (faces_dir / f"{name}.jpg").read_bytes()
        s3.put_object(Bucket=aws.bucket, Key=f"jobs/j3/{probe}.jpg", Body=body)
    s3.put_object(Bucket=aws.bucket, Key="jobs/j3/manifest.csv", Body=ERASED_MANIFEST.encode())
    worker.handle(_notification(aws.bucket, "jobs/j3/manifest.csv"))
    assert worker.handle(_drain(aws, queues["jobs"])) == {"batchItemFailures": []}
    _drain(aws, queues["aggregate"])
    run_aggregation(s3, aws.bucket, jobs, "j3", pipeline.model_id, tombstones)
    later = _results(s3, aws.bucket, results_key("j3")).to_pylist()
    assert later[0]["claimed_subject"] == "person_a"
    assert later[2]["best_subject"] == "person_a"
