"""An erasure fanned out over the jobs workers: the plan kept once, chunks run in any order and
retried after a crash, the receipt merged by whichever chunk ends last and equal to what the
same erasure answers inline. On moto (S3, DynamoDB, SQS), with real gallery tables."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from tests_support import erasure_key_for_tests, unit_rows

from facegate.batch.erasure import TABLE, Eraser, Task
from facegate.batch.erasure_job import (
    MAX_CHUNK_SIZE,
    ErasureChunk,
    ErasureJobs,
    ErasureRequest,
    plan_chunks,
)
from facegate.batch.messages import MAX_MESSAGE_BYTES, message_type, parse_body
from facegate.errors import StorageError
from facegate.gallery.format import GalleryMeta, build_gallery_table
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.keys import erasure_work_prefix
from facegate.storage.tombstones import Tombstones

META = GalleryMeta(model_id="sface", weights_sha256="cd" * 32, dim=8, threshold=0.4)
PARTS = 5


@pytest.fixture
def jobs(fresh_aws) -> ErasureJobs:
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    sqs = aws_client("sqs", fresh_aws.settings)
    queue = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    tombstones = Tombstones(fresh_aws.dynamodb, fresh_aws.settings.table, erasure_key_for_tests())
    eraser = Eraser(fresh_aws.s3, fresh_aws.bucket, tombstones, sqs=sqs)
    return ErasureJobs(eraser, queue, chunk_size=2)


def _gallery(store: GalleryStore, gallery: str) -> list[str]:
    """``PARTS`` parts, each with ann and one other person; their keys."""
    keys = []
    for n in range(PARTS):
        subjects = ["ann", f"p{n}"]
        table = build_gallery_table(
            subject_ids=subjects,
            image_keys=[f"uploads/{gallery}/{s}/{n}.jpg" for s in subjects],
            face_indices=np.zeros(2, np.int32),
            bboxes=np.zeros((2, 4), np.float32),
            det_scores=np.ones(2, np.float32),
            embeddings=unit_rows(np.random.default_rng(n), 2, 8),
            meta=META,
        )
        key = store.part_key(gallery, f"p{n}")
        store.write_table(key, table)
        keys.append(key)
    return keys


def _receive(jobs: ErasureJobs) -> list[str]:
    assert jobs.sqs is not None and jobs.queue_url is not None
    bodies: list[str] = []
    while True:
        answer = jobs.sqs.receive_message(QueueUrl=jobs.queue_url, MaxNumberOfMessages=10)
        messages = answer.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message["Body"])
            jobs.sqs.delete_message(QueueUrl=jobs.queue_url, ReceiptHandle=message["ReceiptHandle"])


def _work_versions(jobs: ErasureJobs, erasure_id: str) -> list[Any]:
    return jobs.objects.versions(erasure_work_prefix(erasure_id))


def _comparable(receipt: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in receipt.items() if k != "erased_at"}


def test_a_fanned_out_erasure_merges_the_receipt_the_inline_one_gives(jobs):
    store = jobs.eraser.galleries
    parts = _gallery(store, "big")
    _gallery(store, "twin")  # the same erasure, answered inline, for comparison

    plan = jobs.eraser.prepare("ann", "gallery:big")
    assert plan.objects == PARTS
    queued = jobs.submit(plan)
    (request,) = _receive(jobs)
    assert message_type(parse_body(request)) == "facegate.erasure"
    jobs.run(ErasureRequest.from_message(request))

    # PARTS tables + the upload folder + the jobs + the dead letters, two tasks a chunk.
    chunks = [ErasureChunk.from_message(b) for b in _receive(jobs)]
    assert [c.index for c in chunks] == [0, 1, 2, 3] and {c.total for c in chunks} == {4}
    state = jobs.status(queued["erasure_id"])
    assert (state["status"], state["chunks"], state["chunks_done"]) == ("running", 4, 0)

    merged = [jobs.run_chunk(c) for c in reversed(chunks)]  # any order
    assert merged[:3] == [None, None, None] and merged[3] is not None
    done = jobs.status(queued["erasure_id"])
    assert done["status"] == "done" and done["chunks"] == 4
    receipt = done["receipt"]
    assert [r["key"] for r in receipt["removed"]] == parts  # in plan order
    assert receipt["totals"]["gallery_part"]["rows_removed"] == PARTS
    for key in parts:
        assert "ann" not in store.read_table(key)["subject_id"].to_pylist()
    assert _work_versions(jobs, queued["erasure_id"]) == []

    inline = jobs.eraser.erase("ann", "gallery:twin").to_dict()
    twin = json.loads(json.dumps(receipt).replace("/big/", "/twin/").replace(":big", ":twin"))
    twin["galleries"] = ["twin"]
    assert _comparable(twin) == _comparable(inline)

    # A chunk delivered again after the merge changes nothing.
    assert jobs.run_chunk(chunks[0]) is None
    assert jobs.status(queued["erasure_id"]) == done
    assert _work_versions(jobs, queued["erasure_id"]) == []


def test_a_chunk_retried_after_a_crash_keeps_what_its_first_run_removed(jobs, monkeypatch):
    parts = _gallery(jobs.eraser.galleries, "big")
    plan = jobs.eraser.prepare("ann", "gallery:big")
    jobs.chunk_size = 3
    chunks = plan_chunks("e1", plan, jobs.chunk_size)
    real, calls = jobs.eraser.run_task, []

    def crashing(*args: Any) -> Any:
        calls.append(args[-1])
        if len(calls) == 2:
            raise StorageError("S3 went away")
        return real(*args)

    monkeypatch.setattr(jobs.eraser, "run_task", crashing)
    with pytest.raises(StorageError):
        jobs.run_chunk(chunks[0])
    monkeypatch.setattr(jobs.eraser, "run_task", real)
    for chunk in chunks:
        jobs.run_chunk(chunk)

    receipt = jobs.status("e1")["receipt"]
    # The first part, erased before the crash, is in the receipt once.
    assert [r["key"] for r in receipt["removed"]] == parts
    assert all(r["rows_removed"] == 1 for r in receipt["removed"])


def test_a_request_whose_plan_expired_plans_again(jobs):
    parts = _gallery(jobs.eraser.galleries, "big")
    jobs.chunk_size = 100
    jobs.run(ErasureRequest("e2", "ann", "gallery:big"))  # one chunk: run by this worker
    state = jobs.status("e2")
    assert state["status"] == "done" and state["chunks"] == 1
    assert [r["key"] for r in state["receipt"]["removed"]] == parts
    assert jobs.eraser.tombstones.in_scope("gallery:big", ["ann"])
    assert _receive(jobs) == []


def test_chunks_fit_a_queue_message_and_survive_the_wire(jobs):
    long = "galleries/big/parts/" + "x" * 990 + ".parquet"
    _gallery(jobs.eraser.galleries, "big")
    plan = jobs.eraser.prepare("ann", "gallery:big")
    plan = replace(plan, tasks=[Task(TABLE, f"{long}{n}", "big") for n in range(450)])
    chunks = plan_chunks("e3", plan, MAX_CHUNK_SIZE)
    assert [len(c.tasks) for c in chunks] == [200, 200, 50]
    assert plan_chunks("e3", plan, MAX_CHUNK_SIZE) == chunks
    for chunk in chunks:
        body = chunk.to_message()
        assert len(body) <= MAX_MESSAGE_BYTES
        assert ErasureChunk.from_message(body) == chunk
