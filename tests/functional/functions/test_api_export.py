"""``GET /subjects/{id}/export``, the data-subject access route, on real photos and moto: an
enrolled subject's faces and photos, a subject known only to a batch gallery, the tombstone
left by a DELETE, embeddings only when asked, the key's scope, and a subject known only to
verification jobs (manifest rows, probes, result tables) and the dead-letter queues, which
the export reads without taking a message out. Each answer is checked against the schema the
app serves."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import repo_root

from facegate.batch.manifest import JobRow
from facegate.batch.messages import JobChunk
from facegate.batch.results import (
    build_results_table,
    identify_record,
    results_to_parquet,
    verify_record,
)
from facegate.gallery.format import GalleryMeta, build_gallery_table, build_rejects_table
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.subjects import SubjectStore

ROUTE = "/subjects/{subject_id}/export"
DEAD_LETTER_QUEUES = ("facegate-ingest-dlq", "facegate-jobs-dlq")


@pytest.fixture(scope="module")
def aws(aws):
    """The module's moto settings with the two dead-letter queues the API scans."""
    sqs = aws_client("sqs", aws)
    ingest, jobs = (sqs.create_queue(QueueName=q)["QueueUrl"] for q in DEAD_LETTER_QUEUES)
    return aws.model_copy(update={"ingest_dlq_url": ingest, "jobs_dlq_url": jobs})


@pytest.fixture(scope="module")
def keys(aws) -> dict[str, str]:
    store = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)
    return {
        "admin": store.create("dpo", ["admin", "enrol"]),
        "verify": store.create("kiosk", ["verify"]),
    }


@pytest.fixture(scope="module")
def client(api_client, keys):
    return api_client(keys["admin"])


@pytest.fixture(scope="module")
def schema(client) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def documented(schema: dict[str, Any], answer: Any) -> dict[str, Any]:
    """The answer's body, once its status and body are checked against the served schema."""
    responses = schema["paths"][ROUTE]["get"]["responses"]
    status = str(answer.status_code)
    assert status in responses, (status, answer.text[:200])
    body_schema = responses[status]["content"]["application/json"]["schema"]
    body: dict[str, Any] = answer.json()
    jsonschema.validate(body, {**body_schema, "components": schema["components"]})
    return body


def _photo(faces_dir, name: str) -> str:
    return base64.b64encode((faces_dir / f"{name}.jpg").read_bytes()).decode()


def test_an_enrolled_subject_s_faces_and_photos_without_embeddings_unless_asked(
    client, schema, aws, faces_dir
):
    enrolled = client.post(
        "/subjects/dsar.alice@example.org/faces",
        json={
            "images": [_photo(faces_dir, "person_a_1"), _photo(faces_dir, "person_a_2")],
            "metadata": {"team": "ops"},
        },
    )
    assert enrolled.status_code == 201 and enrolled.json()["accepted"] == 2, enrolled.text

    body = documented(schema, client.get("/subjects/dsar.alice@example.org/export"))
    assert body["enrolment"]["face_count"] == 2 and body["enrolment"]["metadata"] == {"team": "ops"}
    assert body["embeddings_included"] is False and body["galleries"] == []
    assert body["tombstone"] is None
    stored = {
        f.face_id: f
        for f in SubjectStore.from_settings(aws).get_embeddings("dsar.alice@example.org")[1]
    }
    assert {f["face_id"] for f in body["faces"]} == set(stored)
    for face in body["faces"]:
        assert face["embedding"] is None
        assert face["image_key"] == stored[face["face_id"]].image_key
        assert face["image_key"].startswith("enrolments/default/dsar.alice@example.org/")
        assert face["photo_versions"] == 1 and face["model_id"] == "sface+dlib"
        assert len(face["bbox"]) == 4 and face["det_score"] > 0
    assert sorted(p["key"] for p in body["photos"]) == sorted(f.image_key for f in stored.values())

    full = documented(
        schema, client.get("/subjects/dsar.alice@example.org/export", params={"embeddings": True})
    )
    assert full["embeddings_included"] is True
    for face in full["faces"]:
        expected = stored[face["face_id"]].embedding
        assert len(face["embedding"]) == expected.shape[0]
        np.testing.assert_allclose(face["embedding"], expected, atol=1e-6, rtol=0)

    # after a DELETE the tombstone is what remains, with its time
    assert client.delete("/subjects/dsar.alice@example.org").status_code == 200
    after = documented(schema, client.get("/subjects/dsar.alice@example.org/export"))
    assert after["enrolment"] is None and after["faces"] == [] and after["photos"] == []
    assert after["tombstone"]["deleted_at"].endswith("Z")


def _part(meta: GalleryMeta, subject_ids: list[str], image_keys: list[str]) -> Any:
    """A gallery part of unit vectors (their values do not matter to an export)."""
    vectors = np.random.default_rng(7).normal(size=(len(subject_ids), meta.dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(subject_ids)
    return build_gallery_table(
        subject_ids=subject_ids,
        image_keys=image_keys,
        face_indices=[0] * n,
        bboxes=np.zeros((n, 4), np.float32),
        det_scores=np.ones(n, np.float32),
        embeddings=vectors.astype(np.float32),
        meta=meta,
    )


def test_a_subject_only_in_a_batch_gallery_is_found_with_its_rows(client, schema, aws, pipeline):
    store = GalleryStore.from_settings(aws)
    meta = GalleryMeta(
        model_id=pipeline.model_id,
        weights_sha256=pipeline.card.weights_sha256,
        dim=pipeline.card.embedding_dim,
        threshold=pipeline.threshold,
    )
    rows = ["uploads/team/batchonly/1.jpg", "uploads/team/batchonly/2.jpg", "uploads/team/x/1.jpg"]
    part = _part(meta, ["batchonly", "batchonly", "x"], rows)
    store.write_table(store.part_key("team", "p1"), part)
    rejected = ["uploads/team/batchonly/3.jpg", "uploads/team/set.zip/batchonly/4.jpg"]
    store.write_table(
        store.rejects_key("team", "p1"),
        build_rejects_table([*rejected, "uploads/team/x/2.jpg"], ["no_face"] * 3),
    )
    store.compact("team")
    # another gallery without them is not listed
    store.write_table(store.part_key("other", "p1"), _part(meta, ["x"], rows[2:]))

    assert client.get("/subjects/batchonly").status_code == 404  # not API-enrolled
    body = documented(schema, client.get("/subjects/batchonly/export"))
    assert body["enrolment"] is None and body["faces"] == [] and body["tombstone"] is None
    assert [g["gallery"] for g in body["galleries"]] == ["team"]
    team = body["galleries"][0]
    assert team["compacted"] == {
        "key": "galleries/team/gallery.parquet",
        "rows": 2,
        "image_keys": rows[:2],
    }
    assert team["parts"] == [
        {"key": "galleries/team/parts/p1.parquet", "rows": 2, "image_keys": rows[:2]}
    ]
    assert team["rejects"] == [
        {"key": "galleries/team/rejects/p1.parquet", "rows": 2, "image_keys": rejected}
    ]


def test_a_verify_key_is_refused_and_an_unknown_subject_is_404(client, schema, keys):
    refused = client.get("/subjects/batchonly/export", headers={"x-api-key": keys["verify"]})
    assert refused.status_code == 403
    documented(schema, refused)
    unknown = client.get("/subjects/nobody.anywhere/export")
    assert unknown.status_code == 404
    assert documented(schema, unknown)["error"]["code"] == "unknown_subject"
    bad = client.get("/subjects/-dash/export")
    assert bad.status_code == 400
    documented(schema, bad)


# --------------------------------------------------------------------------------------
# Verification jobs, their results and the dead-letter queues
# --------------------------------------------------------------------------------------

PAT, BOB = "dsar.pat@example.org", "dsar.bob@example.org"


def _job_row(row: int, probe: str, gallery: str, mode: str, claimed: str | None) -> JobRow:
    return JobRow(row, probe, claimed, gallery, mode)  # type: ignore[arg-type]


def _results(records: list[dict[str, Any]]) -> bytes:
    return results_to_parquet(build_results_table(records))


def _upload_notification(key: str) -> str:
    """The sample S3 notification of ``events/``, for another key (form-encoded, as S3 sends
    it): what the ingest DLQ keeps of an upload whose embedding failed."""
    path = repo_root() / "events/embed/photo-upload.json"
    doc = json.loads(json.loads(path.read_text())["Records"][0]["body"])
    doc["Records"][0]["s3"]["object"]["key"] = key.replace("@", "%40")
    return json.dumps(doc)


def _visible(sqs: Any, url: str) -> dict[str, str]:
    """Every message receivable now, id to body, left visible (visibility 0): a message the
    export had hidden or deleted is missing."""
    found: dict[str, str] = {}
    for _ in range(5):  # a receive answers some of the messages, never more than 10
        answer = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        )
        found.update({m["MessageId"]: m["Body"] for m in answer.get("Messages", [])})
    return found


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _row(row: int, probe: str, gallery: str, mode: str, claimed: bool) -> dict[str, Any]:
    """An expected manifest row of the answer (``claimed``: it claims the subject)."""
    return {"row": row, "gallery": gallery, "mode": mode, "probe": probe, "claimed": claimed}


def test_job_rows_result_rows_and_dead_letters_are_listed_and_left_in_place(
    client, schema, aws, faces_dir
):
    s3, sqs, bucket = aws_client("s3", aws), aws_client("sqs", aws), aws.bucket
    photo = (faces_dir / "person_a_1.jpg").read_bytes()
    # Job j1: Pat claimed (row 0, probe uploaded twice), Bob claimed (row 1), an identify
    # row whose result named Pat first and Bob second (row 2), Pat claimed with a probe
    # outside the job folder (row 3).
    for key in ("jobs/j1/pat.jpg", "jobs/j1/pat.jpg", "jobs/j1/bob.jpg", "jobs/j1/crowd.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=photo)
    s3.put_object(Bucket=bucket, Key="probes/pat-2.jpg", Body=photo)
    manifest = (
        "probe,gallery,mode,claimed_subject\n"
        f"pat.jpg,staff,verify,{PAT}\n"
        f"bob.jpg,staff,verify,{BOB}\n"
        "\n"  # a blank line is no row: the job numbers the next one 2
        "crowd.jpg,staff,identify,\n"
        f"/probes/pat-2.jpg,lab,verify,{PAT}\n"
    )
    s3.put_object(Bucket=bucket, Key="jobs/j1/manifest.csv", Body=manifest.encode())
    j1 = [
        _job_row(0, "jobs/j1/pat.jpg", "staff", "verify", PAT),
        _job_row(1, "jobs/j1/bob.jpg", "staff", "verify", BOB),
        _job_row(2, "jobs/j1/crowd.jpg", "staff", "identify", None),
        _job_row(3, "probes/pat-2.jpg", "lab", "verify", PAT),
    ]
    records = [
        verify_record(j1[0], 0.81, 0.5),
        verify_record(j1[1], 0.77, 0.5),
        identify_record(j1[2], [(PAT, 0.74), (BOB, 0.31)], 0.5),
        verify_record(j1[3], 0.12, 0.5),
    ]
    s3.put_object(Bucket=bucket, Key="results/j1/results.parquet", Body=_results(records))
    s3.put_object(Bucket=bucket, Key="results/j1/chunks/00001.parquet", Body=_results(records[2:]))
    s3.put_object(Bucket=bucket, Key="results/j1/summary.json", Body=b'{"rows": 4}')
    # Job j2 claims Bob only; its identify row ranked Pat second (its probe never uploaded).
    j2_manifest = (
        f"probe,gallery,mode,claimed_subject\nb.jpg,lab,verify,{BOB}\nc.jpg,lab,identify,\n"
    )
    s3.put_object(Bucket=bucket, Key="jobs/j2/manifest.csv", Body=j2_manifest.encode())
    j2 = [
        _job_row(0, "jobs/j2/b.jpg", "lab", "verify", BOB),
        _job_row(1, "jobs/j2/c.jpg", "lab", "identify", None),
    ]
    j2_records = [
        verify_record(j2[0], 0.9, 0.5),
        identify_record(j2[1], [(BOB, 0.8), (PAT, 0.6)], 0.5),
    ]
    s3.put_object(Bucket=bucket, Key="results/j2/results.parquet", Body=_results(j2_records))
    # A manifest the worker cannot read that names Pat as text, and a table that is no
    # results table.
    s3.put_object(Bucket=bucket, Key="jobs/j3/manifest.csv", Body=f"who\n{PAT}\n".encode())
    stray = build_rejects_table([f"uploads/staff/{PAT}/1.jpg"], ["no_face"])
    s3.put_object(Bucket=bucket, Key="results/j9/stray.parquet", Body=_parquet(stray))
    # Dead letters: Pat's and Bob's upload notifications, Bob's job chunk, and a job chunk
    # of someone found nowhere else.
    ingest, jobs_dlq = aws.ingest_dlq_url, aws.jobs_dlq_url
    letters = {
        "pat": _upload_notification(f"uploads/staff/{PAT}/1.jpg"),
        "bob": _upload_notification(f"uploads/staff/{BOB}/1.jpg"),
        "bob_chunk": JobChunk("j2", 0, 1, (j2[0],)).to_message(),
        "solo_chunk": JobChunk(
            "j4", 0, 1, (_job_row(0, "jobs/j4/x.jpg", "lab", "verify", "dsar.solo"),)
        ).to_message(),
    }
    queue_of = {"pat": ingest, "bob": ingest, "bob_chunk": jobs_dlq, "solo_chunk": jobs_dlq}
    ids = {
        name: sqs.send_message(QueueUrl=queue_of[name], MessageBody=body)["MessageId"]
        for name, body in letters.items()
    }

    pat = documented(schema, client.get(f"/subjects/{PAT}/export"))
    assert pat["enrolment"] is None and pat["galleries"] == [] and pat["uploads"] == []
    assert pat["jobs"] == [
        {
            "job_id": "j1",
            "manifest": "jobs/j1/manifest.csv",
            "readable": True,
            "rows": [
                _row(0, "jobs/j1/pat.jpg", "staff", "verify", True),
                _row(2, "jobs/j1/crowd.jpg", "staff", "identify", False),
                _row(3, "probes/pat-2.jpg", "lab", "verify", True),
            ],
            "probes": [  # in the job folder only; probes/ is another store
                {"key": "jobs/j1/crowd.jpg", "versions": 1},
                {"key": "jobs/j1/pat.jpg", "versions": 2},
            ],
        },
        {
            "job_id": "j2",
            "manifest": "jobs/j2/manifest.csv",
            "readable": True,
            "rows": [_row(1, "jobs/j2/c.jpg", "lab", "identify", False)],
            "probes": [],
        },
        {
            "job_id": "j3",
            "manifest": "jobs/j3/manifest.csv",
            "readable": False,
            "rows": [],
            "probes": [],
        },
    ]
    assert pat["results"] == [
        {"key": "results/j1/chunks/00001.parquet", "rows": 2, "row_numbers": [2, 3]},
        {"key": "results/j1/results.parquet", "rows": 3, "row_numbers": [0, 2, 3]},
        {"key": "results/j2/results.parquet", "rows": 1, "row_numbers": [1]},
    ]
    assert pat["unchecked"] == [{"key": "results/j9/stray.parquet", "reason": "unreadable"}]
    assert pat["dead_letters"] == [
        {"queue": "facegate-ingest-dlq", "messages": 1, "message_ids": [ids["pat"]]}
    ]

    bob = documented(schema, client.get(f"/subjects/{BOB}/export"))
    assert [(j["job_id"], [r["row"] for r in j["rows"]]) for j in bob["jobs"]] == [
        ("j1", [1, 2]),
        ("j2", [0, 1]),
    ]
    assert bob["jobs"][0]["probes"] == [
        {"key": "jobs/j1/bob.jpg", "versions": 1},
        {"key": "jobs/j1/crowd.jpg", "versions": 1},
    ]
    assert [(r["key"], r["row_numbers"]) for r in bob["results"]] == [
        ("results/j1/chunks/00001.parquet", [2]),
        ("results/j1/results.parquet", [1, 2]),
        ("results/j2/results.parquet", [0, 1]),
    ]
    assert bob["dead_letters"] == [
        {"queue": "facegate-ingest-dlq", "messages": 1, "message_ids": [ids["bob"]]},
        {"queue": "facegate-jobs-dlq", "messages": 1, "message_ids": [ids["bob_chunk"]]},
    ]

    # Known only to a dead letter: found; found nowhere (the unreadable table aside): 404.
    solo = documented(schema, client.get("/subjects/dsar.solo/export"))
    assert solo["jobs"] == [] and solo["results"] == []
    assert solo["dead_letters"] == [
        {"queue": "facegate-jobs-dlq", "messages": 1, "message_ids": [ids["solo_chunk"]]}
    ]
    assert client.get("/subjects/dsar.nowhere/export").status_code == 404

    # Every message is still in its queue, unchanged and visible at once: four exports
    # scanned both queues and took none out.
    assert _visible(sqs, ingest) == {ids[n]: letters[n] for n in ("pat", "bob")}
    assert _visible(sqs, jobs_dlq) == {ids[n]: letters[n] for n in ("bob_chunk", "solo_chunk")}
