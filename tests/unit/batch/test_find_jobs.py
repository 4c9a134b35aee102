"""The read-only look into verification jobs (``find_in_jobs``), on moto's versioned S3 with
real manifests and real results tables: it changes nothing, and it lists exactly what
``erase_from_jobs`` then erases from the same bucket (the manifest rows, the job-folder
probes, the result rows), scope by scope."""

from __future__ import annotations

import pytest

from facegate.batch.erase_jobs import (
    JOB_MANIFEST,
    JOB_PROBE,
    RESULTS_TABLE,
    STILL_USED,
    TOO_LARGE,
    UNREADABLE,
    JobFound,
    ManifestRowFound,
    Remaining,
    ResultsFound,
    erase_from_jobs,
    find_in_jobs,
)
from facegate.batch.manifest import parse_job_manifest
from facegate.batch.results import (
    build_results_table,
    failure_records,
    identify_record,
    results_from_parquet,
    results_to_parquet,
    verify_record,
)
from facegate.storage.objects import ObjectStore

PHOTO = b"\xff\xd8\xff\xe0 a probe photo"
#: alice claimed in staff (rows 0, 3) and visitors (row 2); bob (row 1); an identify row
#: (row 4) whose result names alice first and bob second; "malice" holds her id as text
#: (row 5); a refused row claiming alice (row 6, its mode).
MANIFEST = (
    "probe,gallery,mode,claimed_subject\n"
    "a1.jpg,staff,verify,alice\n"
    "b1.jpg,staff,verify,bob\n"
    "a1.jpg,visitors,verify,alice\n"
    "/probes/a3.jpg,staff,verify,alice\n"
    "c1.jpg,staff,identify,\n"
    "m1.jpg,staff,verify,malice\n"
    "a4.jpg,staff,guess,alice\n"
)


@pytest.fixture
def objects(fresh_aws) -> ObjectStore:
    """The job as the worker leaves it, in a versioned bucket (a1.jpg uploaded twice), and
    two objects no erasure can read: a stray table under results/, an unreadable manifest
    that names alice."""
    s3, bucket = fresh_aws.s3, fresh_aws.bucket
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = ObjectStore(s3, bucket)

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    put("jobs/j1/manifest.csv", MANIFEST.encode())
    for name in ("a1", "a1", "a4", "b1", "c1", "m1"):
        put(f"jobs/j1/{name}.jpg", PHOTO)
    put("probes/a3.jpg", PHOTO)
    rows, refused = parse_job_manifest("j1", MANIFEST, bucket=bucket)
    records = failure_records(refused)
    for row in rows:
        if row.mode == "verify":
            records.append(verify_record(row, 0.8, 0.5))
        else:
            records.append(identify_record(row, [("alice", 0.9), ("bob", 0.4)], 0.5))
    table = build_results_table(sorted(records, key=lambda r: r["row"]))
    put("results/j1/results.parquet", results_to_parquet(table))
    put("results/j9/stray.parquet", b"PAR1 not a table")
    put("jobs/j2/manifest.csv", b"who\nalice\n")
    return store


def listing(objects: ObjectStore) -> list[tuple[str, str]]:
    return sorted(objects.versions(""))


def test_every_scope_lists_rows_probes_and_results_and_changes_nothing(objects):
    before = listing(objects)

    found = find_in_jobs(objects, "alice")

    assert listing(objects) == before
    assert found.jobs == [
        JobFound(
            "j1",
            "jobs/j1/manifest.csv",
            (
                ManifestRowFound(0, "staff", "verify", "jobs/j1/a1.jpg", True),
                ManifestRowFound(2, "visitors", "verify", "jobs/j1/a1.jpg", True),
                ManifestRowFound(3, "staff", "verify", "probes/a3.jpg", True),
                ManifestRowFound(4, "staff", "identify", "jobs/j1/c1.jpg", False),
                ManifestRowFound(6, "staff", "guess", "jobs/j1/a4.jpg", True),
            ),
            (("jobs/j1/a1.jpg", 2), ("jobs/j1/a4.jpg", 1), ("jobs/j1/c1.jpg", 1)),
        ),
        JobFound("j2", "jobs/j2/manifest.csv", readable=False),
    ]
    assert found.results == [ResultsFound("results/j1/results.parquet", (0, 2, 3, 4, 6))]
    assert found.remaining == [Remaining("results/j9/stray.parquet", RESULTS_TABLE, UNREADABLE)]
    # bob: his claimed row, and the identify row that ranked him second.
    bob = find_in_jobs(objects, "bob")
    assert [(r.row, r.claimed) for r in bob.jobs[0].rows] == [(1, True), (4, False)]
    assert bob.results == [ResultsFound("results/j1/results.parquet", (1, 4))]


@pytest.mark.parametrize("galleries", [{"staff"}, None])
def test_what_is_found_is_what_the_erasure_then_erases(objects, fresh_aws, galleries):
    found = find_in_jobs(objects, "alice", galleries)
    table_rows = results_from_parquet(objects.get("results/j1/results.parquet").body)["row"]

    erased = erase_from_jobs(fresh_aws.s3, fresh_aws.bucket, "alice", galleries)

    by_kind = {(s.kind, s.key): s for s in erased.scrubbed}
    (job,) = [j for j in found.jobs if j.readable]
    assert by_kind[(JOB_MANIFEST, job.manifest)].rows_removed == len(job.rows)
    # The manifest found unreadable is the one the erasure destroys whole.
    assert (JOB_MANIFEST, "jobs/j2/manifest.csv") in by_kind
    # A probe of the subject's rows is erased, unless a row out of scope still uses it.
    erased_probes = {k for kind, k in by_kind if kind == JOB_PROBE}
    kept = {r.key for r in erased.remaining if r.kind == JOB_PROBE and r.reason == STILL_USED}
    assert sorted(erased_probes | kept) == [key for key, _ in job.probes]
    assert bool(kept) is (galleries is not None)
    left = set(
        results_from_parquet(objects.get("results/j1/results.parquet").body)["row"].to_pylist()
    )
    (results,) = found.results
    assert set(results.rows) == set(table_rows.to_pylist()) - left
    assert by_kind[(RESULTS_TABLE, results.key)].rows_removed == len(results.rows)
    if galleries is not None:  # the visitors row is out of scope: found and kept alike
        assert 2 not in {r.row for r in job.rows} and 2 in left


def test_an_empty_scope_finds_nothing_and_a_huge_manifest_is_unchecked(objects, monkeypatch):
    assert find_in_jobs(objects, "alice", set()).jobs == []
    monkeypatch.setattr("facegate.batch.erase_jobs.MAX_MANIFEST_BYTES", 8)
    found = find_in_jobs(objects, "alice")
    assert found.jobs == []
    assert Remaining("jobs/j1/manifest.csv", JOB_MANIFEST, TOO_LARGE) in found.remaining
