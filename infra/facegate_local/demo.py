"""``make demo``: the whole online flow over HTTP against the local stack.

Starts the stack (unless one is running), enrols the two sample people from one photo each,
compares every pair of sample photos, identifies each photo that was not enrolled (the
impostors must come back "no match"), deletes a subject and checks that it is gone with its
photos, shows a second collection whose subject of the same id is another person and that
identify in one collection never sees the other (then deletes it with its export), exports
the enrolled subjects as a gallery a batch job verifies against, prints a report, and stops
what it started.
The last line is one JSON summary.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from facegate_local.config import LocalConfig, StackState
from facegate_local.server import sample_photos
from facegate_local.stack import down, invoke, memory, status, up

ENROL = {"person_a": "person_a_1", "person_b": "person_b_1"}


def identity(stem: str) -> str:
    return stem.rsplit("_", 1)[0] if stem.startswith("person") else stem


def run_demo(config: LocalConfig) -> dict[str, Any]:
    started_here = status(config) is None
    t0 = time.perf_counter()
    state = up(config)
    print(f"local stack up in {time.perf_counter() - t0:.1f} s: {state.api_url}")
    print(
        f"webcam page at {state.api_url.rstrip('/')}/ while the stack is up "
        "('facegate local up' keeps it up and prints its key)"
    )
    try:
        summary = _exercise(state.api_url, state.api_key, config.root)
        summary |= _collections(state, config.root)
        summary |= _batch(state, config.root)
        summary |= _job(state)
        summary |= _erase(state, config.root)
        summary |= _invocations(config, state)
        summary |= _memory(config, status(config) or state)
        return summary
    finally:
        if started_here:
            down(config)
            print("local stack stopped")


def _exercise(url: str, key: str, root: Path) -> dict[str, Any]:
    photos = {p.stem: p.read_bytes() for p in sample_photos(root)}
    if not photos:
        raise SystemExit("no sample photos: run 'make setup' first")
    client = httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=120)
    health = client.get("/health").json()
    print(f"model {health['model_id']} threshold {health['threshold']:.4f}")

    print("\nenrol")
    enrolled = 0
    for subject, stem in ENROL.items():
        files = {"image": (f"{stem}.jpg", photos[stem], "image/jpeg")}
        answer = client.post(f"/subjects/{subject}/faces", files=files).json()
        enrolled += answer["accepted"]
        print(f"  {subject:<9} <- {stem}: accepted {answer['accepted']}")

    print("\ncompare (1:1)")
    compared = matches = correct = 0
    for a, b in itertools.combinations(sorted(photos), 2):
        files = {
            "image_a": (f"{a}.jpg", photos[a], "image/jpeg"),
            "image_b": (f"{b}.jpg", photos[b], "image/jpeg"),
        }
        answer = client.post("/compare", files=files).json()
        compared += 1
        matches += answer["match"]
        right = answer["match"] == (identity(a) == identity(b))
        correct += right
        verdict = "MATCH" if answer["match"] else "no match"
        print(f"  {a:<11} {b:<11} {answer['similarity']:+.4f} {verdict:<8} {_mark(right)}")

    print("\nidentify (1:N over enrolled subjects)")
    identified = identify_correct = 0
    probes = sorted(set(photos) - set(ENROL.values()))
    for stem in probes:
        files = {"image": (f"{stem}.jpg", photos[stem], "image/jpeg")}
        answer = client.post("/identify", files=files).json()
        best = answer["best"]["subject_id"] if answer["best"] else None
        expected = identity(stem) if identity(stem) in ENROL else None
        identified += best is not None
        identify_correct += best == expected
        print(f"  {stem:<11} -> {best or 'no match':<9} {_mark(best == expected)}")

    print("\ndelete")
    removed = client.delete("/subjects/person_a").json()
    gone = client.get("/subjects/person_a").status_code == 404
    print(
        f"  person_a: {removed['deleted_faces']} face(s), {removed['deleted_photos']} photo(s); "
        f"now unknown: {gone}"
    )
    return {
        "enrolled": enrolled,
        "compared": compared,
        "matches": matches,
        "compare_correct": correct,
        "identified": identified,
        "identify_correct": identify_correct,
        "probes": len(probes),
        "deleted": int(gone),
    }


def _collections(state: StackState, root: Path) -> dict[str, Any]:
    """A second collection, ``lobby``, whose ``person_b`` is person A: the same id in two
    collections is two people, and identify in one never sees the other. Lobby's person_b
    is erased (the default collection's stays); lobby, still holding a visitor, is exported
    as a gallery and then deleted with everything in it, its export included. The default
    collection is exported as gallery ``enrolled``, which the batch job verifies against."""
    photos = {p.stem: p.read_bytes() for p in sample_photos(root)}
    client = httpx.Client(base_url=state.api_url, headers={"x-api-key": state.api_key}, timeout=120)
    print("\ncollections")
    client.post("/collections", json={"name": "lobby", "description": "lobby kiosks"})
    for subject, stem in (("person_b", "person_a_1"), ("visitor", "impostor_1")):
        files = {"image": (f"{stem}.jpg", photos[stem], "image/jpeg")}
        client.post(f"/collections/lobby/subjects/{subject}/faces", files=files)
    names = [c["name"] for c in client.get("/collections").json()["collections"]]
    print(f"  {', '.join(names)}; lobby's person_b <- person_a_1, visitor <- impostor_1")
    correct = 0
    expected = {
        ("lobby", "person_a_2"): "person_b",  # lobby's person_b is person A
        ("default", "person_a_2"): None,  # default's person_a was deleted above
        ("lobby", "person_b_2"): None,  # default's person_b is not in lobby
        ("default", "person_b_2"): "person_b",
    }
    for (collection, stem), want in expected.items():
        files = {"image": (f"{stem}.jpg", photos[stem], "image/jpeg")}
        path = "/identify" if collection == "default" else f"/collections/{collection}/identify"
        best = client.post(path, files=files).json()["best"]
        got = best["subject_id"] if best else None
        correct += got == want
        shown = got or "no match"
        print(f"  identify {stem:<10} in {collection:<7} -> {shown:<9} {_mark(got == want)}")
    erased = client.delete("/collections/lobby/subjects/person_b").json()
    kept = client.get("/subjects/person_b").status_code == 200
    print(f"  erase lobby's person_b: scope {erased['scope']}; default's person_b kept: {kept}")
    exported = client.post("/collections/lobby/export", json={"gallery": "lobby-export"}).json()
    print(f"  export lobby -> gallery lobby-export: {exported['rows']} row(s)")
    receipt = client.delete("/collections/lobby").json()
    dropped = (
        receipt.get("deleted") is True
        and receipt["subjects_erased"] == 1
        and receipt["galleries_destroyed"] == ["lobby-export"]
        and client.get("/collections/lobby").status_code == 404
        and client.get("/galleries/lobby-export").status_code == 404
    )
    print(
        f"  delete lobby: {receipt.get('subjects_erased')} subject(s) erased, galleries "
        f"destroyed {receipt.get('galleries_destroyed')}; gone: {dropped}"
    )
    enrolled = client.post("/collections/default/export", json={"gallery": "enrolled"}).json()
    print(f"  export default -> gallery enrolled: {enrolled['rows']} row(s) for the batch job")
    return {
        "collections": len(names),
        "isolation_correct": correct == len(expected) and kept and dropped,
        "exported_rows": enrolled["rows"],
    }


def _photo_set(photos: dict[str, bytes]) -> bytes:
    """The sample photos as a zip photo set, one folder per person, plus one planted bad
    file, so the gallery shows a reject with its reason."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for stem, data in sorted(photos.items()):
            archive.writestr(f"samples/{identity(stem)}/{stem}.jpg", data)
        archive.writestr("samples/person_a/notes.jpg", b"not a photo\n")
    return buffer.getvalue()


def _batch(state: StackState, root: Path, timeout: float = 300.0) -> dict[str, Any]:
    """Upload the photo set to S3 as a user would; the bucket notification, the queue and
    the embedding function (polled like Lambda's event source) build the gallery."""

    photos = {p.stem: p.read_bytes() for p in sample_photos(root)}
    s3 = _operator_s3(state)
    bucket = state.resources["PhotoBucket"]
    print("\nbatch: upload a zip photo set -> S3 -> SQS -> embedding job -> Parquet gallery")
    s3.put_object(Bucket=bucket, Key="uploads/demo/samples.zip", Body=_photo_set(photos))
    client = httpx.Client(base_url=state.api_url, headers={"x-api-key": state.api_key})
    deadline = time.monotonic() + timeout
    summary: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = client.get("/galleries/demo", timeout=60)
        if answer.status_code == 200 and answer.json()["parts"] >= 1:
            summary = answer.json()
            break
        time.sleep(1)
    if not summary:
        raise SystemExit("the embedding job wrote no gallery part in time")
    report = client.post("/galleries/demo/compact", timeout=120).json()
    shown = client.get("/galleries/demo", timeout=60).json()
    print(
        f"  gallery demo: {shown['rows']} rows, {shown['subjects']} subjects, "
        f"rejects {shown['rejects']}, compacted in {report['seconds']} s"
    )
    return {"gallery_rows": shown["rows"], "rejects": sum(shown["rejects"].values())}


#: (manifest row, expected decision): probes are the sample photos under probes/samples/.
JOB_ROWS = [
    ("/probes/samples/person_a_2.jpg,person_a,demo,verify", "match"),
    ("/probes/samples/impostor_1.jpg,person_b,demo,verify", "no_match"),
    ("/probes/samples/impostor_2.jpg,person_a,demo,verify", "no_match"),
    ("/probes/samples/person_b_2.jpg,,demo,identify", "identified"),
    ("/probes/samples/no-such-photo.jpg,person_a,demo,verify", "failed"),
    # Against the API-enrolled people, exported from the default collection.
    ("/probes/samples/person_b_2.jpg,person_b,enrolled,verify", "match"),
]


def _job(state: StackState, timeout: float = 300.0) -> dict[str, Any]:
    """A batch verification job: the manifest goes to S3, the job function fans it out,
    the aggregation function writes results.parquet; the API reports its status."""
    import pyarrow.parquet as pq

    s3 = _operator_s3(state)
    bucket = state.resources["PhotoBucket"]
    manifest = "probe,claimed_subject,gallery,mode\n" + "\n".join(r for r, _ in JOB_ROWS)
    print("\nbatch verification job: manifest -> S3 -> job function -> aggregation")
    s3.put_object(Bucket=bucket, Key="jobs/demo-job/manifest.csv", Body=manifest.encode())
    client = httpx.Client(base_url=state.api_url, headers={"x-api-key": state.api_key})
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = client.get("/jobs/demo-job", timeout=60)
        if answer.status_code == 200 and answer.json()["status"] != "running":
            status = answer.json()
            break
        time.sleep(1)
    if status.get("status") != "succeeded":
        raise SystemExit(f"the job did not succeed in time: {status}")
    body = s3.get_object(Bucket=bucket, Key=status["results_key"])["Body"].read()
    results = pq.read_table(io.BytesIO(body)).to_pylist()
    correct = 0
    for result, (row, expected) in zip(results, JOB_ROWS, strict=True):
        correct += result["decision"] == expected
        shown = result["best_subject"] or result["claimed_subject"] or ""
        print(
            f"  {row.split(',')[0]:<28} {result['decision']:<15} {shown:<9} "
            f"{result['reason'] or ''}  {_mark(result['decision'] == expected)}"
        )
    return {"job_rows": len(results), "job_correct": correct}


def _erase(state: StackState, root: Path) -> dict[str, Any]:
    """Erase person_b from the demo gallery: rows, rejects, the photo set's members, the
    job's results naming her; the receipt says where, and she is no longer identified."""
    photos = {p.stem: p.read_bytes() for p in sample_photos(root)}
    client = httpx.Client(base_url=state.api_url, headers={"x-api-key": state.api_key})
    print("\nerase person_b from gallery demo")
    receipt = client.delete("/galleries/demo/subjects/person_b", timeout=120).json()
    for kind, total in receipt["totals"].items():
        print(f"  {kind:<16} {total['objects']} object(s), {total['rows_removed']} row(s)")
    files = {"image": ("probe.jpg", photos["person_b_2"], "image/jpeg")}
    found = client.post("/identify", files=files, data={"gallery": "demo", "subjects": "false"})
    best = found.json()["best"]
    gone = best is None or best["subject_id"] != "person_b"
    print(f"  identify person_b_2 in demo -> {best['subject_id'] if best else 'no match'}")
    return {"erased": int(gone and bool(receipt["found"]))}


def _invocations(config: LocalConfig, state: StackState) -> dict[str, Any]:
    """The two functions nothing local triggers by itself, invoked with their own roles as
    ``sam local invoke`` would: the hourly compaction (schedule event) and the job status
    route (on AWS, API Gateway sends ``GET /jobs/{id}`` to it instead of the API)."""
    print("\ninvoked (facegate local invoke, each with its own role)")
    request = config.state_dir / "compact-demo.json"
    request.write_text(json.dumps({"gallery": "demo"}))
    compacted = invoke(config, "CompactFunction", request)
    galleries = {entry["gallery"] for entry in compacted.get("compacted", [])}
    print(f"  CompactFunction {{'gallery': 'demo'}}: compacted {sorted(galleries)}")
    event = json.loads((config.root / STATUS_EVENTS["status"]).read_text())
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/jobs/demo-job"
    path = config.state_dir / "get-demo-job.json"
    path.write_text(json.dumps(event))
    answer = invoke(config, "JobStatusFunction", path)
    job = json.loads(answer["body"])
    print(f"  JobStatusFunction GET /jobs/demo-job: {answer['statusCode']} {job.get('status')}")
    ok = galleries == {"demo"} and answer["statusCode"] == 200 and job["status"] == "succeeded"
    return {"invoked": 2 if ok else 0}


#: The sample event the job status function gets, for the demo's job.
STATUS_EVENTS = {"status": "events/get-job-unknown.json"}


def _memory(config: LocalConfig, state: StackState) -> dict[str, Any]:
    """Each function's peak memory so far against its MemorySize (Lambda's envelope)."""
    print("\nmemory (peak resident, per function process)")
    peaks = memory(config, state)
    for function, figures in peaks.items():
        print(f"  {function:<18} {figures['peak_mib']:7.0f} MiB of {figures['limit_mb']} MB")
    within = all(0 < f["peak_mib"] < f["limit_mb"] for f in peaks.values())
    return {"functions": len(peaks), "memory_within_limits": within}


def _operator_s3(state: StackState) -> Any:
    """An S3 client of the stack's operator (the user uploading photo sets, manifests)."""
    import boto3

    keys = state.operator()
    return boto3.client(
        "s3",
        endpoint_url=state.endpoint_url,
        region_name=state.region,
        aws_access_key_id=keys["aws_access_key_id"],
        aws_secret_access_key=keys["aws_secret_access_key"],
    )


def _mark(right: bool) -> str:
    return "ok" if right else "WRONG"


def main(root: Path) -> int:
    """Exit 0 when every decision was right and the gallery holds every sample face."""
    summary = run_demo(LocalConfig.load(root))
    print(json.dumps(summary))
    ok = (
        summary["compare_correct"] == summary["compared"]
        and summary["identify_correct"] == summary["probes"]
        and summary["deleted"] == 1
        and summary["erased"] == 1
        and summary["gallery_rows"] == len(sample_photos(root))
        and summary["rejects"] == 1
        and summary["job_correct"] == summary["job_rows"] == len(JOB_ROWS)
        and summary["invoked"] == 2
        and summary["memory_within_limits"]
        and summary["collections"] == 2
        and summary["isolation_correct"]
        and summary["exported_rows"] == 1
    )
    return 0 if ok else 1
