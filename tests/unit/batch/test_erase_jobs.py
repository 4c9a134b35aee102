"""Erasing a subject from verification jobs on moto's versioned S3: real manifests, real
results tables (``build_results_table``), and the job worker's skip of rewritten manifests.

Every test checks the bucket itself afterwards: which versions are left, and what they hold.
"""

from __future__ import annotations

import json

import pytest

from facegate.batch.erase_jobs import (
    JOB_MANIFEST,
    JOB_PROBE,
    OUTSIDE_JOB,
    RESULTS_TABLE,
    STILL_USED,
    UNREADABLE,
    JobsErasure,
    Remaining,
    erase_from_jobs,
    is_erasure_rewrite,
)
from facegate.batch.job_worker import JobWorker, WorkerConfig
from facegate.batch.manifest import parse_job_manifest
from facegate.batch.results import (
    build_results_table,
    failed_record,
    failure_records,
    identify_record,
    results_from_parquet,
    results_to_parquet,
    verify_record,
)
from facegate.errors import InvalidImageError, UnknownJobError
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore
from facegate.storage.keys import (
    chunk_result_key,
    manifest_failures_key,
    manifest_key,
    results_key,
    summary_key,
)
from facegate.storage.objects import ObjectRef
from facegate.storage.scrub import ERASURE_METADATA, Scrubbed

STAFF, VISITORS = "staff", "visitors"
THRESHOLD = 0.5
PHOTO = b"\xff\xd8\xff\xe0 a probe photo"

#: Job j1: alice is claimed in staff (rows 0, 3, 5, 7) and in visitors (row 2, out of
#: scope); row 6 claims "malice", which holds her id as text; row 7 is refused (mode).
MANIFEST = (
    "probe,gallery,mode,claimed_subject,note\n"
    "a1.jpg,staff,verify,alice,first\n"
    'b1.jpg,staff,verify,bob,"keep, me"\n'
    "a1.jpg,visitors,verify,alice,\n"
    "a2.jpg,staff,verify,alice,\n"
    "c1.jpg,staff,identify,,\n"
    "/probes/a3.jpg,staff,verify,alice,\n"
    "m1.jpg,staff,verify,malice,\n"
    "a4.jpg,staff,guess,alice,\n"
)
#: What is left of it: bob's, the visitors row, malice's (the identify row's result named
#: alice: its probe is her photo).
LEFT = (
    "probe,gallery,mode,claimed_subject,note\n"
    'b1.jpg,staff,verify,bob,"keep, me"\n'
    "a1.jpg,visitors,verify,alice,\n"
    "m1.jpg,staff,verify,malice,\n"
)
#: The manifest's first upload, since replaced: it claimed alice with another probe.
FIRST_MANIFEST = "probe,gallery,mode,claimed_subject\na0.jpg,staff,verify,alice\n"


@pytest.fixture
def s3(fresh_aws):
    """moto's S3 with the test bucket versioned, as the template's bucket is."""
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    return fresh_aws.s3


@pytest.fixture
def bucket(fresh_aws) -> str:
    return fresh_aws.bucket


def put(s3, bucket: str, key: str, body: bytes | str) -> str:
    data = body.encode() if isinstance(body, str) else body
    return s3.put_object(Bucket=bucket, Key=key, Body=data)["VersionId"]


def versions(s3, bucket: str, key: str) -> list[str]:
    """Every version and delete marker of exactly ``key``."""
    page = s3.list_object_versions(Bucket=bucket, Prefix=key)
    entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
    return [v["VersionId"] for v in entries if v["Key"] == key]


def body_of(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def rows_of(s3, bucket: str, key: str) -> list[int]:
    return results_from_parquet(body_of(s3, bucket, key))["row"].to_pylist()


def job_records(job_id: str, text: str, bucket: str) -> list[dict]:
    """Result records of every manifest row, as a worker with a fixed gallery would decide
    them: alice is top-1 of any identify row, bob second; probes under probes/ are missing."""
    rows, refused = parse_job_manifest(job_id, text, bucket=bucket)
    records = failure_records(refused)
    for row in rows:
        if row.probe_key.startswith("probes/"):
            records.append(failed_record(row, InvalidImageError("the probe is missing")))
        elif row.mode == "verify":
            records.append(verify_record(row, 0.8 if row.claimed_subject == "alice" else 0.3, 0.5))
        else:
            records.append(identify_record(row, [("alice", 0.9), ("bob", 0.4)], THRESHOLD))
    return sorted(records, key=lambda r: r["row"])


def table_bytes(records: list[dict]) -> bytes:
    return results_to_parquet(build_results_table(records))


@pytest.fixture
def job(s3, bucket):
    """Job j1 as the worker leaves it: manifest (two versions), probes, chunk tables, the
    manifest failures, results and summary; and job j2, an identify job that never names
    alice in its manifest but ranks her second in an older write of its only chunk."""
    put(s3, bucket, manifest_key("j1"), FIRST_MANIFEST)
    put(s3, bucket, manifest_key("j1"), MANIFEST)
    for name in ("a0", "a1", "a2", "a2", "a4", "b1", "c1", "m1"):
        put(s3, bucket, f"jobs/j1/{name}.jpg", PHOTO)
    put(s3, bucket, "probes/a3.jpg", PHOTO)
    records = job_records("j1", MANIFEST, bucket)
    refused = [r for r in records if r["row"] == 7]
    done = [r for r in records if r["row"] != 7]
    put(s3, bucket, chunk_result_key("j1", 0), table_bytes(done[:4]))
    put(s3, bucket, chunk_result_key("j1", 1), table_bytes(done[4:]))
    put(s3, bucket, manifest_failures_key("j1"), table_bytes(refused))
    put(s3, bucket, results_key("j1"), table_bytes(records))
    put(s3, bucket, summary_key("j1"), json.dumps({"job_id": "j1", "rows": 8}))

    j2 = "probe,gallery,mode\nx.jpg,staff,identify\ny.jpg,staff,identify\n"
    put(s3, bucket, manifest_key("j2"), j2)
    rows, _ = parse_job_manifest("j2", j2)
    older = [identify_record(r, [("carol", 0.7), ("alice", 0.6)], 0.9) for r in rows]
    current = [identify_record(r, [("carol", 0.7), ("dave", 0.2)], 0.9) for r in rows]
    put(s3, bucket, chunk_result_key("j2", 0), table_bytes(older))
    put(s3, bucket, chunk_result_key("j2", 0), table_bytes(current))
    return s3


def test_erases_the_subjects_rows_probes_and_results_in_scope(job, bucket):
    s3 = job
    done = erase_from_jobs(s3, bucket, "alice", {STAFF})

    assert done.scrubbed == [
        Scrubbed(manifest_key("j1"), JOB_MANIFEST, 2, rows_removed=5, rewritten=True),
        Scrubbed("jobs/j1/a0.jpg", JOB_PROBE, 1, 1, rewritten=False),  # older manifest's row
        Scrubbed("jobs/j1/a2.jpg", JOB_PROBE, 2, 1, rewritten=False),
        Scrubbed("jobs/j1/a4.jpg", JOB_PROBE, 1, 1, rewritten=False),  # a refused row's
        # an identify row that never named her, but its result identified her: her photo
        Scrubbed("jobs/j1/c1.jpg", JOB_PROBE, 1, 1, rewritten=False),
        Scrubbed(chunk_result_key("j1", 0), RESULTS_TABLE, 1, 2, rewritten=True),
        Scrubbed(chunk_result_key("j1", 1), RESULTS_TABLE, 1, 2, rewritten=True),
        Scrubbed(manifest_failures_key("j1"), RESULTS_TABLE, 1, 1, rewritten=True),
        Scrubbed(results_key("j1"), RESULTS_TABLE, 1, 5, rewritten=True),
        # the older write ranked alice: destroyed; the current one never named her
        Scrubbed(chunk_result_key("j2", 0), RESULTS_TABLE, 1, 0, rewritten=False),
    ]
    assert done.remaining == [
        # still used by the visitors row, which is out of scope
        Remaining("jobs/j1/a1.jpg", JOB_PROBE, STILL_USED),
        # not the job's own upload: probes/ expires on its own, the caller decides
        Remaining("probes/a3.jpg", JOB_PROBE, OUTSIDE_JOB),
    ]
    assert body_of(s3, bucket, manifest_key("j1")).decode() == LEFT
    head = s3.head_object(Bucket=bucket, Key=manifest_key("j1"))
    assert head["Metadata"] == ERASURE_METADATA
    assert head["ServerSideEncryption"] == "AES256"
    assert len(versions(s3, bucket, manifest_key("j1"))) == 1
    for name in ("a0", "a2", "a4", "c1"):
        assert versions(s3, bucket, f"jobs/j1/{name}.jpg") == []
    for key in ("jobs/j1/a1.jpg", "jobs/j1/b1.jpg", "probes/a3.jpg"):
        assert len(versions(s3, bucket, key)) == 1

    # Result rows keep the numbers of the manifest the job ran.
    assert rows_of(s3, bucket, chunk_result_key("j1", 0)) == [1, 2]
    assert rows_of(s3, bucket, chunk_result_key("j1", 1)) == [6]
    assert rows_of(s3, bucket, manifest_failures_key("j1")) == []
    assert rows_of(s3, bucket, results_key("j1")) == [1, 2, 6]
    for key in (chunk_result_key("j1", 0), results_key("j1"), chunk_result_key("j2", 0)):
        assert len(versions(s3, bucket, key)) == 1
    left = results_from_parquet(body_of(s3, bucket, results_key("j1")))
    assert left["claimed_subject"].to_pylist() == ["bob", "alice", "malice"]
    assert left["gallery"].to_pylist() == [STAFF, VISITORS, STAFF]
    # j2's current chunk and manifest, and j1's summary (counts only), are as written.
    assert rows_of(s3, bucket, chunk_result_key("j2", 0)) == [0, 1]
    assert len(versions(s3, bucket, manifest_key("j2"))) == 1
    assert len(versions(s3, bucket, summary_key("j1"))) == 1


def test_a_second_run_finds_nothing_left(job, bucket):
    erase_from_jobs(job, bucket, "alice", {STAFF})
    assert erase_from_jobs(job, bucket, "alice", {STAFF}) == JobsErasure()
    assert body_of(job, bucket, manifest_key("j1")).decode() == LEFT


def test_another_gallery_or_another_subject_is_left_alone(job, bucket):
    """alice in a gallery that has none of her rows, and "malice", whose id holds "alice"
    only as text: nothing changes, not even a version."""
    before = {
        key: versions(job, bucket, key)
        for key in (manifest_key("j1"), results_key("j1"), chunk_result_key("j1", 0))
    }
    assert erase_from_jobs(job, bucket, "alice", {"elsewhere"}) == JobsErasure()
    assert erase_from_jobs(job, bucket, "alic", {STAFF}) == JobsErasure()
    assert erase_from_jobs(job, bucket, "alice", set()) == JobsErasure()
    assert {key: versions(job, bucket, key) for key in before} == before


def test_every_gallery_empties_the_manifest_and_removes_it(job, bucket):
    """With no gallery scope, only malice's and bob's rows and the identify row are left;
    a job of alice's rows only loses its manifest, every version."""
    put(
        job,
        bucket,
        manifest_key("j3"),
        "probe,gallery,mode,claimed_subject\nz.jpg,g,verify,alice\n",
    )
    put(job, bucket, "jobs/j3/z.jpg", PHOTO)
    done = erase_from_jobs(job, bucket, "alice", None)

    by_key = {r.key: r for r in done.scrubbed}
    assert by_key[manifest_key("j1")].rows_removed == 6
    assert by_key["jobs/j1/a1.jpg"] == Scrubbed("jobs/j1/a1.jpg", JOB_PROBE, 1, 1, False)
    assert by_key[manifest_key("j3")] == Scrubbed(manifest_key("j3"), JOB_MANIFEST, 1, 1, False)
    assert by_key["jobs/j3/z.jpg"] == Scrubbed("jobs/j3/z.jpg", JOB_PROBE, 1, 1, False)
    assert done.remaining == [Remaining("probes/a3.jpg", JOB_PROBE, OUTSIDE_JOB)]
    assert versions(job, bucket, manifest_key("j3")) == []
    assert versions(job, bucket, "jobs/j3/z.jpg") == []
    assert rows_of(job, bucket, results_key("j1")) == [1, 6]


def test_a_deleted_manifest_loses_every_version_that_names_the_subject(job, bucket):
    job.delete_object(Bucket=bucket, Key=manifest_key("j1"))  # a delete marker on top
    done = erase_from_jobs(job, bucket, "alice", {STAFF})
    assert done.scrubbed[0] == Scrubbed(manifest_key("j1"), JOB_MANIFEST, 3, 0, rewritten=False)
    assert versions(job, bucket, manifest_key("j1")) == []
    assert versions(job, bucket, "jobs/j1/a1.jpg") == []  # no manifest row uses it now


def test_an_unreadable_manifest_naming_the_subject_is_removed_whole(s3, bucket):
    """No job ran from it (the worker refuses the same bytes), and its rows cannot be told
    apart; one that does not hold the id stays."""
    put(s3, bucket, manifest_key("bad"), "probe,subject\nx.jpg,alice\n")
    put(s3, bucket, manifest_key("other"), "probe,subject\nx.jpg,bob\n")
    assert erase_from_jobs(s3, bucket, "alice", {STAFF}).scrubbed == [
        Scrubbed(manifest_key("bad"), JOB_MANIFEST, 1, 0, rewritten=False)
    ]
    assert versions(s3, bucket, manifest_key("bad")) == []
    assert len(versions(s3, bucket, manifest_key("other"))) == 1


def test_a_table_that_is_not_a_results_table_is_left_and_reported(s3, bucket):
    put(s3, bucket, chunk_result_key("j9", 0), b"PAR1 not really")
    assert erase_from_jobs(s3, bucket, "alice", {STAFF}) == JobsErasure(
        remaining=[Remaining(chunk_result_key("j9", 0), RESULTS_TABLE, UNREADABLE)]
    )
    assert len(versions(s3, bucket, chunk_result_key("j9", 0))) == 1


# --------------------------------------------------------------------------------------
# The job worker does not start a job from an erasure's rewrite
# --------------------------------------------------------------------------------------


class _NoPipeline:
    """Starting a job reads its manifest only; the pipeline is never called."""

    model_id = "sface"
    threshold = THRESHOLD


def notification(bucket: str, key: str, version_id: str) -> dict:
    obj = {"key": key, "size": 1, "eTag": "x", "versionId": version_id}
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": obj}}
    return {"Records": [{"messageId": "m1", "body": json.dumps({"Records": [record]})}]}


def test_the_job_worker_skips_a_rewritten_manifest(fresh_aws, s3, bucket):
    sqs = aws_client("sqs", fresh_aws.settings)
    urls = [sqs.create_queue(QueueName=n)["QueueUrl"] for n in ("jobs", "aggregate")]
    jobs = JobStore(fresh_aws.dynamodb, fresh_aws.table)
    worker = JobWorker(_NoPipeline(), s3, sqs, jobs, WorkerConfig(bucket, *urls))
    first = put(s3, bucket, manifest_key("j1"), MANIFEST)
    erase_from_jobs(s3, bucket, "alice", {STAFF})
    [rewritten] = versions(s3, bucket, manifest_key("j1"))

    assert is_erasure_rewrite(s3, ObjectRef(bucket, manifest_key("j1"), rewritten, None, 0))
    assert is_erasure_rewrite(s3, ObjectRef(bucket, manifest_key("j1"), None, None, 0))
    # The first upload's version is gone: not a rewrite, the worker goes its usual way.
    assert not is_erasure_rewrite(s3, ObjectRef(bucket, manifest_key("j1"), first, None, 0))
    assert worker.handle(notification(bucket, manifest_key("j1"), rewritten)) == {
        "batchItemFailures": []
    }
    with pytest.raises(UnknownJobError):
        jobs.get("j1")

    # A user's upload still starts its job.
    upload = put(s3, bucket, manifest_key("j2"), MANIFEST)
    assert not is_erasure_rewrite(s3, ObjectRef(bucket, manifest_key("j2"), upload, None, 0))
    worker.handle(notification(bucket, manifest_key("j2"), upload))
    assert jobs.get("j2").rows == 8
