"""The SQS sample events of ``events/embed``, ``events/jobs`` and ``events/aggregate``: what
``sam local invoke`` and ``facegate local invoke`` feed the queue functions.

Each sample must parse, through Powertools' SQS event and the batch layer's own parsing
(:mod:`facegate.batch.events`, :mod:`facegate.batch.messages`), into the object or message it
claims to carry; its ``md5OfBody`` must be the body's, as SQS computes it. Then the samples
run, in order, through the real handlers on moto, as one scenario: the photo upload becomes
a gallery part, the manifest starts the job and queues exactly the chunk sample, the chunk
queues exactly the aggregation sample, and the job succeeds with the decisions the sample
photos call for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import SQSEvent
from facegate_local.config import LocalConfig
from tests_support import repo_root

from facegate.batch.events import notification_refs
from facegate.batch.manifest import JobRow, parse_job_manifest
from facegate.batch.messages import (
    JOB_AGGREGATE,
    JOB_CHUNK,
    AggregateRequest,
    JobChunk,
    message_type,
    parse_body,
    plan_job_chunks,
)
from facegate.settings import Settings
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.jobs import JobStore
from facegate.storage.keys import (
    PhotoUpload,
    classify,
    job_id_from_manifest_key,
    manifest_key,
    results_key,
)
from facegate.storage.objects import ObjectRef

EVENTS = repo_root() / "events"
#: Every SQS sample, with the template function it is for and the queue it comes from.
SAMPLES = {
    "embed/photo-upload.json": ("EmbedFunction", "IngestQueue"),
    "jobs/manifest-created.json": ("JobFunction", "JobsQueue"),
    "jobs/job-chunk.json": ("JobFunction", "JobsQueue"),
    "aggregate/aggregate-request.json": ("AggregateFunction", "AggregateQueue"),
}
BUCKET = "facegate-local"
PHOTO_KEY = "uploads/demo/person_a/person_a_1.jpg"
JOB = "demo-job"
MANIFEST = EVENTS / "jobs" / "manifest.csv"


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def _body(name: str) -> str:
    (record,) = SQSEvent(_event(name)).records
    return record.body


def _md5(data: bytes) -> str:
    """What S3 puts in a single-part upload's ETag, and SQS in ``md5OfBody``."""
    return hashlib.md5(data).hexdigest()


def _planned_chunk() -> JobChunk:
    """The chunk the worker plans from the sample manifest, with the default chunk size."""
    rows, failures = parse_job_manifest(JOB, MANIFEST.read_text())
    assert failures == []
    (chunk,) = plan_job_chunks(JOB, rows, Settings().job_chunk_size)
    return chunk


# ----------------------------------------------------------------------------- parsing


def test_every_sqs_sample_is_listed_here():
    found = {p.relative_to(EVENTS).as_posix() for p in EVENTS.glob("*/*.json")}
    assert found == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_are_sqs_events_of_the_functions_queue(name):
    function, queue = SAMPLES[name]
    (record,) = SQSEvent(_event(name)).records
    assert record.event_source == "aws:sqs" and record.aws_region == "us-east-1"
    arn = record.event_source_arn.split(":")
    assert arn[:4] == ["arn", "aws", "sqs", record.aws_region]
    assert f"-{queue}-" in arn[5]
    assert record.md5_of_body == _md5(record.body.encode())
    assert record.attributes.approximate_receive_count == "1"
    template = LocalConfig.load(repo_root()).template()
    (source,) = template.resources[function]["Properties"]["Events"].values()
    assert source["Type"] == "SQS"
    assert source["Properties"]["Queue"] == {"Fn::GetAtt": [queue, "Arn"]}


def test_photo_upload_sample_is_the_notification_of_a_photo(faces_dir):
    doc = parse_body(_body("embed/photo-upload.json"))
    assert message_type(doc) is None  # not one of our messages: an S3 notification
    photo = (faces_dir / "person_a_1.jpg").read_bytes()
    uploaded = "2025-11-22T16:04:31.512000Z"  # the record's eventTime, which its rows carry
    assert notification_refs(doc) == [
        ObjectRef(BUCKET, PHOTO_KEY, None, _md5(photo), len(photo), uploaded)
    ]
    assert classify(PHOTO_KEY) == PhotoUpload("demo", "person_a", "person_a_1.jpg")


def test_manifest_sample_is_the_notification_of_the_sample_manifest():
    doc = parse_body(_body("jobs/manifest-created.json"))
    assert message_type(doc) is None
    manifest = MANIFEST.read_bytes()
    (ref,) = notification_refs(doc)
    assert ref == ObjectRef(
        BUCKET, manifest_key(JOB), None, _md5(manifest), len(manifest), ref.uploaded_at
    )
    assert ref.uploaded_at == "2025-11-22T16:10:02.087000Z"
    assert job_id_from_manifest_key(ref.key) == JOB


def test_chunk_sample_is_the_chunk_the_manifest_plans():
    body = _body("jobs/job-chunk.json")
    assert message_type(parse_body(body)) == JOB_CHUNK
    chunk = JobChunk.from_message(body)
    assert chunk == _planned_chunk()
    assert body == chunk.to_message()  # byte for byte what the worker sends
    assert chunk.rows == (
        JobRow(0, f"jobs/{JOB}/person_a_2.jpg", "person_a", "demo", "verify"),
        JobRow(1, f"jobs/{JOB}/person_b_2.jpg", "person_a", "demo", "verify"),
        JobRow(2, f"jobs/{JOB}/impostor_2.jpg", None, "demo", "identify"),
    )


def test_aggregate_sample_asks_for_the_jobs_aggregation():
    body = _body("aggregate/aggregate-request.json")
    assert message_type(parse_body(body)) == JOB_AGGREGATE
    assert AggregateRequest.from_message(body) == AggregateRequest(JOB)
    assert body == AggregateRequest(JOB).to_message()


# ----------------------------------------------------------------------------- the scenario


@pytest.fixture(scope="module")
def queues(make_queue):
    return {name: make_queue(f"facegate-{name}") for name in ("ingest", "jobs", "aggregate")}


@pytest.fixture(scope="module")
def handlers(load_handler, queues):
    urls = {f"{name}_queue_url": queue.url for name, queue in queues.items()}
    return {name: load_handler(name, **urls) for name in ("embed", "jobs", "aggregate")}


def test_the_samples_run_in_order_through_the_handlers(aws, handlers, queues, invoke, faces_dir):
    assert aws.bucket == BUCKET  # the samples name the local stack's bucket
    s3 = aws_client("s3", aws)

    def put(key: str, path: Path) -> None:
        s3.put_object(Bucket=aws.bucket, Key=key, Body=path.read_bytes())

    put(PHOTO_KEY, faces_dir / "person_a_1.jpg")
    assert invoke(handlers["embed"], _event("embed/photo-upload.json"), "EmbedFunction") == []
    gallery = GalleryStore(s3, aws.bucket)
    (part,) = gallery.list_parts("demo")
    assert gallery.read_table(part).column("subject_id").to_pylist() == ["person_a"]
    gallery.compact("demo")

    for name in ("person_a_2", "person_b_2", "impostor_2"):
        put(f"jobs/{JOB}/{name}.jpg", faces_dir / f"{name}.jpg")
    put(manifest_key(JOB), MANIFEST)
    assert invoke(handlers["jobs"], _event("jobs/manifest-created.json"), "JobFunction") == []
    (queued,) = queues["jobs"].drain()
    assert queued["body"] == _body("jobs/job-chunk.json")

    assert invoke(handlers["jobs"], _event("jobs/job-chunk.json"), "JobFunction") == []
    (requested,) = queues["aggregate"].drain()
    assert requested["body"] == _body("aggregate/aggregate-request.json")

    event = _event("aggregate/aggregate-request.json")
    assert invoke(handlers["aggregate"], event, "AggregateFunction") == []
    status = JobStore(aws_client("dynamodb", aws), aws.table).get(JOB)
    assert status.status == "succeeded" and status.rows == 3
    assert status.results_key == results_key(JOB)
    counts = {k: v for k, v in status.counts.items() if v}
    assert counts == {"match": 1, "no_match": 1, "not_identified": 1}
