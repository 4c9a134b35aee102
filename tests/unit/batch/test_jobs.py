"""Batch verification jobs: manifests, chunk messages, results, aggregation, and job status
on moto (checking the DynamoDB items themselves), all without torch."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import run_without_torch

from facegate.batch.aggregate_job import run_aggregation
from facegate.batch.aggregation import aggregate, summary_json
from facegate.batch.csv_manifest import MAX_MANIFEST_BYTES
from facegate.batch.manifest import (
    JobRow,
    RowFailure,
    parse_job_manifest,
    resolve_probe,
)
from facegate.batch.messages import (
    JOB_AGGREGATE,
    JOB_CHUNK,
    AggregateRequest,
    JobChunk,
    message_type,
    parse_body,
    plan_job_chunks,
)
from facegate.batch.reembed import ReembedRequest, gallery_photos
from facegate.batch.results import (
    build_results_table,
    failed_record,
    failure_records,
    identify_record,
    results_from_parquet,
    results_schema,
    results_to_parquet,
    verify_record,
)
from facegate.errors import (
    FaceGateError,
    NoFaceError,
    UnknownJobError,
    UnknownSubjectError,
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage.galleries import GalleryStore
from facegate.storage.jobs import JobStatus, JobStore
from facegate.storage.keys import (
    chunk_result_key,
    job_id_from_manifest_key,
    manifest_failures_key,
    manifest_key,
    part_key,
    results_key,
    summary_key,
)

JOB = "job-2024.05_01"
REGION = "eu-west-1"
TABLE = "facegate-jobs-test"
BUCKET = "facegate-jobs-bucket"
T0 = "2024-05-01T12:00:00Z"
T1 = "2024-05-01T12:01:30Z"


def row(index: int, mode: str = "verify", subject: str | None = "alice") -> JobRow:
    return JobRow(index, f"jobs/{JOB}/p{index}.jpg", subject, "staff", mode)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------


def test_keys_follow_the_layout():
    assert manifest_key(JOB) == f"jobs/{JOB}/manifest.csv"
    assert results_key(JOB) == f"results/{JOB}/results.parquet"
    assert summary_key(JOB) == f"results/{JOB}/summary.json"
    assert chunk_result_key(JOB, 7) == f"results/{JOB}/chunks/00007.parquet"
    assert chunk_result_key(JOB, 123456) == f"results/{JOB}/chunks/123456.parquet"
    assert manifest_failures_key(JOB) == f"results/{JOB}/chunks/manifest-failures.parquet"


@pytest.mark.parametrize("bad", ["", "a/b", "a#b", "x" * 129, None])
def test_keys_refuse_invalid_job_ids(bad):
    with pytest.raises(ValidationError):
        manifest_key(bad)
    with pytest.raises(ValidationError):
        results_key(bad)


@pytest.mark.parametrize("bad", [-1, True, 1.0, "3"])
def test_chunk_result_key_refuses_bad_indexes(bad):
    with pytest.raises(ValidationError):
        chunk_result_key(JOB, bad)


def test_job_id_from_manifest_key_only_accepts_the_manifest_itself():
    assert job_id_from_manifest_key(f"jobs/{JOB}/manifest.csv") == JOB
    for other in [
        f"jobs/{JOB}/probe.jpg",
        f"jobs/{JOB}/sub/manifest.csv",
        f"jobs/{JOB}/Manifest.CSV",
        "jobs/manifest.csv",
        "jobs/a#b/manifest.csv",
        f"results/{JOB}/manifest.csv",
        f"uploads/{JOB}/manifest.csv",
        f"/jobs/{JOB}/manifest.csv",
        None,
    ]:
        assert job_id_from_manifest_key(other) is None, other


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def test_parse_manifest_resolves_relative_and_absolute_probes():
    text = (
        "probe,claimed_subject,gallery,mode\n"
        "alice.jpg,alice,staff,verify\n"
        "./probes/./bob.jpg,bob,staff,verify\n"
        "/samples/person_a_1.jpg,,staff,identify\n"
        f"s3://{BUCKET}/samples/person_b_1.jpg,carol,staff,identify\n"
    )
    rows, failures = parse_job_manifest(JOB, text, bucket=BUCKET)
    assert failures == []
    assert rows == [
        JobRow(0, f"jobs/{JOB}/alice.jpg", "alice", "staff", "verify"),
        JobRow(1, f"jobs/{JOB}/probes/bob.jpg", "bob", "staff", "verify"),
        JobRow(2, "samples/person_a_1.jpg", None, "staff", "identify"),
        JobRow(3, "samples/person_b_1.jpg", "carol", "staff", "identify"),
    ]


def test_parse_manifest_header_is_flexible_and_extra_columns_are_ignored():
    text = "\ufeff Mode ,note,GALLERY,Probe\r\nVERIFY,hello,g1,a.jpg\r\n Identify ,,g2,b.jpg\r\n"
    rows, failures = parse_job_manifest(JOB, text)
    # No claimed_subject column at all: identify rows are fine, verify rows are refused.
    assert rows == [JobRow(1, f"jobs/{JOB}/b.jpg", None, "g2", "identify")]
    assert [(f.row, f.reason_code) for f in failures] == [(0, "missing_claimed_subject")]


def test_parse_manifest_accepts_bytes_with_a_bom_and_skips_blank_lines():
    text = "probe,gallery,mode,claimed_subject\n\na.jpg,g,verify,alice\n,,,\n\nb.jpg,g,identify,\n"
    rows, failures = parse_job_manifest(JOB, ("\ufeff" + text).encode("utf-8"))
    assert failures == []
    assert [(r.row, r.probe_key) for r in rows] == [
        (0, f"jobs/{JOB}/a.jpg"),
        (1, f"jobs/{JOB}/b.jpg"),
    ]


def test_parse_manifest_records_every_invalid_row_kind():
    text = "\n".join(
        [
            "probe,claimed_subject,gallery,mode,extra",
            "ok.jpg,alice,staff,verify,x",  # 0 valid
            ",alice,staff,verify",  # 1 missing probe
            "../escape.jpg,alice,staff,verify",  # 2 leaves the job folder
            "a/../../escape.jpg,alice,staff,verify",  # 3 same, nested
            "/enrolments/default/alice/f1.jpg,alice,staff,verify",  # 4 private enrolment photo
            "s3://other-bucket/x.jpg,alice,staff,verify",  # 5 foreign bucket
            "a//b.jpg,alice,staff,verify",  # 6 empty path segment
            "ok.jpg,alice,staff,compare",  # 7 unknown mode
            "ok.jpg,alice,,verify",  # 8 missing gallery
            "ok.jpg,alice,bad/gallery,identify",  # 9 invalid gallery id
            "ok.jpg,al#ice,staff,verify",  # 10 invalid subject id
            "ok.jpg,,staff,verify",  # 11 verify without a subject
            "ok.jpg,al ice,staff,identify",  # 12 invalid subject even for identify
            "ok.jpg",  # 13 short row: no mode
            "/,alice,staff,verify",  # 14 the bucket root is no key
            "a\x00.jpg,alice,staff,verify",  # 15 control character
        ]
    )
    rows, failures = parse_job_manifest(JOB, text, bucket=BUCKET)
    assert [r.row for r in rows] == [0]
    assert [(f.row, f.reason_code) for f in failures] == [
        (1, "missing_probe"),
        (2, "invalid_probe"),
        (3, "invalid_probe"),
        (4, "invalid_probe"),
        (5, "invalid_probe"),
        (6, "invalid_probe"),
        (7, "invalid_mode"),
        (8, "invalid_id"),
        (9, "invalid_id"),
        (10, "invalid_id"),
        (11, "missing_claimed_subject"),
        (12, "invalid_id"),
        (13, "invalid_mode"),
        (14, "invalid_probe"),
        (15, "invalid_probe"),
    ]
    by_row = {f.row: f for f in failures}
    assert "leave the job folder" in by_row[2].message
    assert "enrolment" in by_row[4].message
    # The probe as written when it is the problem, resolved when something else is.
    assert by_row[2].probe == "../escape.jpg"
    assert by_row[7].probe == f"jobs/{JOB}/ok.jpg"
    assert (by_row[7].mode, by_row[7].gallery, by_row[7].claimed_subject) == (
        "compare",
        "staff",
        "alice",
    )
    assert by_row[11].claimed_subject is None


def test_s3_uris_need_the_jobs_bucket():
    _, failures = parse_job_manifest(JOB, f"probe,gallery,mode\ns3://{BUCKET}/a.jpg,g,identify\n")
    assert [f.reason_code for f in failures] == ["invalid_probe"]
    assert resolve_probe(JOB, f"s3://{BUCKET}/a.jpg", BUCKET) == "a.jpg"
    with pytest.raises(ValidationError):
        resolve_probe(JOB, f"s3://{BUCKET}/", BUCKET)


def test_every_row_is_accounted_for():
    lines = ["probe,gallery,mode,claimed_subject"]
    lines += [f"p{i}.jpg,g,{'verify' if i % 3 else 'nope'},s{i}" for i in range(50)]
    rows, failures = parse_job_manifest(JOB, "\n".join(lines))
    numbers = sorted([r.row for r in rows] + [f.row for f in failures])
    assert numbers == list(range(50))
    assert len(failures) == 17


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n ,, \n",
        "\ufeff",
        "probe,gallery,mode\n",
        "probe,gallery\na.jpg,g\n",
        "path,subject_id\na.jpg,alice\n",
        "probe,gallery,mode,probe\na.jpg,g,verify,b.jpg\n",
        'probe,gallery,mode\n"a.jpg"x,g,verify\n',
        b"probe,gallery,mode\n\xff\xfe.jpg,g,verify\n",
        42,
    ],
)
def test_unusable_manifests_are_refused_as_a_whole(text):
    with pytest.raises(ValidationError):
        parse_job_manifest(JOB, text)


def test_a_utf16_manifest_is_refused_by_name():
    text = "probe,gallery,mode\na.jpg,g,identify\n"
    with pytest.raises(ValidationError, match="is UTF-16 text: save it as CSV UTF-8"):
        parse_job_manifest(JOB, text.encode("utf-16"))


def test_manifest_size_and_row_limits(monkeypatch):
    with pytest.raises(ValidationError, match="larger"):
        parse_job_manifest(JOB, b"x" * (MAX_MANIFEST_BYTES + 1))
    monkeypatch.setattr("facegate.batch.manifest.MAX_JOB_ROWS", 3)
    rows = "".join(f"p{i}.jpg,g,identify\n" for i in range(4))
    with pytest.raises(ValidationError, match="more than 3 rows"):
        parse_job_manifest(JOB, "probe,gallery,mode\n" + rows)


def test_parse_manifest_refuses_an_invalid_job_id():
    with pytest.raises(ValidationError):
        parse_job_manifest("../x", "probe,gallery,mode\na.jpg,g,identify\n")


def test_job_row_validates_itself():
    with pytest.raises(ValidationError):
        JobRow(0, "jobs/x/../y.jpg", None, "g", "identify")
    with pytest.raises(ValidationError):
        JobRow(0, "enrolments/default/alice/f.jpg", None, "g", "identify")
    with pytest.raises(ValidationError):
        JobRow(0, "a.jpg", None, "g", "verify")
    with pytest.raises(ValidationError):
        JobRow(-1, "a.jpg", None, "g", "identify")
    with pytest.raises(ValidationError):
        JobRow(0, "a.jpg", None, "g", "search")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Chunks and messages
# --------------------------------------------------------------------------------------


def test_plan_job_chunks_splits_in_order():
    rows = [row(i) for i in range(5)]
    chunks = plan_job_chunks(JOB, rows, 2)
    assert [(c.index, c.count) for c in chunks] == [(0, 3), (1, 3), (2, 3)]
    assert [[r.row for r in c.rows] for c in chunks] == [[0, 1], [2, 3], [4]]
    assert plan_job_chunks(JOB, rows, 2) == chunks
    assert plan_job_chunks(JOB, rows, 100)[0].rows == tuple(rows)


def test_plan_job_chunks_with_no_rows_plans_nothing():
    assert plan_job_chunks(JOB, [], 10) == []


@pytest.mark.parametrize("size", [0, -1, True, 2.0])
def test_plan_job_chunks_refuses_bad_chunk_sizes(size):
    with pytest.raises(ValidationError):
        plan_job_chunks(JOB, [row(0)], size)


def test_plan_job_chunks_refuses_repeated_rows_and_too_many_chunks(monkeypatch):
    with pytest.raises(ValidationError, match="distinct"):
        plan_job_chunks(JOB, [row(0), row(0)], 5)
    monkeypatch.setattr("facegate.batch.messages.MAX_JOB_CHUNKS", 2)
    with pytest.raises(ValidationError, match="raise chunk_size"):
        plan_job_chunks(JOB, [row(i) for i in range(3)], 1)


def test_chunks_close_early_to_fit_a_queue_message(monkeypatch):
    monkeypatch.setattr("facegate.batch.messages.MAX_MESSAGE_BYTES", 600)
    rows = [
        JobRow(i, f"jobs/{JOB}/{'é' * 40}{i}.jpg", "alice", "staff", "verify") for i in range(12)
    ]
    chunks = plan_job_chunks(JOB, rows, 1000)
    assert len(chunks) > 1
    assert all(len(c.to_message()) <= 600 for c in chunks)
    assert [r for c in chunks for r in c.rows] == rows


def test_job_chunk_message_round_trip():
    rows = [row(0), row(3, "identify", None), row(4, "identify", "bob")]
    chunk = plan_job_chunks(JOB, rows, 10)[0]
    body = chunk.to_message()
    assert body.isascii()
    doc = json.loads(body)
    assert (doc["type"], doc["version"], doc["job_id"]) == ("facegate.job_chunk", 1, JOB)
    assert message_type(parse_body(body)) == JOB_CHUNK
    assert JobChunk.from_message(body) == chunk


def test_aggregate_message_round_trip():
    body = AggregateRequest(JOB).to_message()
    assert json.loads(body) == {"type": "facegate.job_aggregate", "version": 1, "job_id": JOB}
    assert message_type(parse_body(body)) == JOB_AGGREGATE
    assert AggregateRequest.from_message(body) == AggregateRequest(JOB)
    with pytest.raises(ValidationError):
        AggregateRequest("a/b")


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json facegate.job_chunk",
        json.dumps({"Records": [{"s3": {}}]}),
        json.dumps(["facegate.job_chunk"]),
        json.dumps({"type": "facegate.archive_chunk"}),
        None,
    ],
)
def test_other_bodies_are_not_job_messages(body):
    try:
        kind = message_type(parse_body(body))
    except ValidationError:
        kind = None
    assert kind not in (JOB_CHUNK, JOB_AGGREGATE)
    with pytest.raises(ValidationError):
        JobChunk.from_message(body)
    with pytest.raises(ValidationError):
        AggregateRequest.from_message(body)


#: Messages as version 1 put them on the queues: in flight during a deploy, they must
#: still decode, and encoding must not change under them.
V1_MESSAGES = [
    (
        JobChunk,
        '{"type":"facegate.job_chunk","version":1,"job_id":"job-2024.05_01","index":0,'
        '"count":1,"rows":[[3,"jobs/job-2024.05_01/a.jpg","staff","verify","alice"],'
        '[4,"samples/b.jpg","staff","identify",null]]}',
    ),
    (AggregateRequest, '{"type":"facegate.job_aggregate","version":1,"job_id":"job-2024.05_01"}'),
    (
        ReembedRequest,
        '{"type":"facegate.reembed","version":1,"target":"g-fused","model_id":"sface+dlib",'
        '"source_gallery":"g"}',
    ),
]


@pytest.mark.parametrize(("cls", "body"), V1_MESSAGES)
def test_version_1_messages_decode_and_encode_the_same(cls, body):
    message = cls.from_message(body)
    assert message.to_message() == body
    assert cls.from_message(json.loads(body)) == message  # a parsed body decodes the same


@pytest.mark.parametrize(("cls", "body"), V1_MESSAGES)
def test_messages_of_an_unknown_version_or_another_type_are_refused(cls, body):
    with pytest.raises(ValidationError, match="known version"):
        cls.from_message(body.replace('"version":1', '"version":2'))
    others = [other for other, _ in V1_MESSAGES if other is not cls]
    for other in others:
        with pytest.raises(ValidationError):
            other.from_message(body)


def _chunk_doc(**changes):
    doc = json.loads(plan_job_chunks(JOB, [row(0), row(1)], 10)[0].to_message())
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    "body",
    [
        _chunk_doc(version=2),
        _chunk_doc(index=1),
        _chunk_doc(index=-1),
        _chunk_doc(count="1"),
        _chunk_doc(rows=[]),
        _chunk_doc(rows="x"),
        _chunk_doc(rows=[[0, "jobs/x/../../y.jpg", "staff", "verify", "alice"]]),
        _chunk_doc(rows=[[0, "a.jpg", "staff", "verify", None]]),
        _chunk_doc(rows=[[0, "a.jpg", "staff", "verify"]]),
        _chunk_doc(rows=[[True, "a.jpg", "staff", "identify", None]]),
        _chunk_doc(job_id="a#b"),
        json.dumps({"type": "facegate.job_chunk", "version": 1, "rows": []}),
        json.dumps(
            {"type": "facegate.job_chunk", "version": 1, "index": 0, "count": 1, "rows": []}
        ),
        AggregateRequest(JOB).to_message(),
    ],
)
def test_job_chunk_from_message_refuses_anything_else(body):
    with pytest.raises(ValidationError):
        JobChunk.from_message(body)


def test_aggregate_request_from_message_refuses_anything_else():
    for body in [
        plan_job_chunks(JOB, [row(0)], 1)[0].to_message(),
        json.dumps({"type": "facegate.job_aggregate", "version": 1}),
        json.dumps({"type": "facegate.job_aggregate", "version": 9, "job_id": JOB}),
    ]:
        with pytest.raises(ValidationError):
            AggregateRequest.from_message(body)


def test_job_chunk_validates_itself():
    with pytest.raises(ValidationError):
        JobChunk(JOB, 0, 1, ())
    with pytest.raises(ValidationError):
        JobChunk(JOB, 1, 1, (row(0),))
    with pytest.raises(ValidationError):
        JobChunk(JOB, 0, 1, [row(0)])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def test_results_schema_columns_and_nullability():
    schema = results_schema()
    assert schema.names == [
        "row",
        "probe",
        "mode",
        "gallery",
        "claimed_subject",
        "decision",
        "similarity",
        "threshold",
        "best_subject",
        "ranks",
        "reason",
        "detail",
    ]
    required = {f.name for f in schema if not f.nullable}
    assert required == {"row", "probe", "mode", "gallery", "decision"}
    assert schema.field("row").type == pa.int32()
    assert schema.field("similarity").type == pa.float32()
    rank = schema.field("ranks").type.value_type
    assert [(f.name, f.type) for f in rank] == [
        ("subject_id", pa.string()),
        ("similarity", pa.float32()),
    ]


def mixed_records() -> list[dict]:
    return [
        verify_record(row(0), 0.62, 0.36),
        verify_record(row(1, subject="bob"), 0.12, 0.36),
        identify_record(row(2, "identify", None), [("carol", 0.71), ("dave", 0.30)], 0.36),
        identify_record(row(3, "identify", "erin"), [("frank", 0.2)], 0.36),
        failed_record(row(4), NoFaceError("no face found")),
    ]


def test_record_builders_decide_at_the_threshold():
    assert verify_record(row(0), 0.36, 0.36)["decision"] == "match"
    assert verify_record(row(0), 0.3599, 0.36)["decision"] == "no_match"
    hit = identify_record(row(1, "identify", None), [("carol", 0.5)], 0.36)
    assert (hit["decision"], hit["best_subject"], hit["similarity"]) == ("identified", "carol", 0.5)
    miss = identify_record(row(1, "identify", None), [("carol", 0.2)], 0.36)
    assert (miss["decision"], miss["best_subject"]) == ("not_identified", None)
    assert miss["ranks"] == [{"subject_id": "carol", "similarity": 0.2}]
    empty = identify_record(row(1, "identify", None), [], 0.36)
    assert (empty["decision"], empty["similarity"], empty["ranks"]) == ("not_identified", None, [])
    with pytest.raises(ValidationError):
        verify_record(row(1, "identify", None), 0.5, 0.36)
    with pytest.raises(ValidationError):
        identify_record(row(0), [], 0.36)


def test_build_results_table_and_parquet_round_trip():
    table = build_results_table(mixed_records())
    assert table.schema.equals(results_schema())
    back = results_from_parquet(results_to_parquet(table))
    assert back.schema.equals(results_schema())
    assert back.to_pylist() == table.to_pylist()
    got = {r["row"]: r for r in back.to_pylist()}
    assert got[0]["decision"] == "match"
    assert math.isclose(got[0]["similarity"], 0.62, rel_tol=1e-6)
    assert got[2]["best_subject"] == "carol"
    assert [r["subject_id"] for r in got[2]["ranks"]] == ["carol", "dave"]
    assert (got[4]["decision"], got[4]["reason"], got[4]["detail"]) == (
        "failed",
        "no_face",
        "no face found",
    )
    assert got[4]["similarity"] is None and got[4]["ranks"] is None


def test_failure_records_become_failed_rows():
    failures = [
        RowFailure(3, "../x.jpg", "invalid_probe", "would leave", "verify", "g", "alice"),
        RowFailure(5, "", "missing_probe", "empty"),
    ]
    rows = build_results_table(failure_records(failures)).to_pylist()
    assert [(r["row"], r["decision"], r["reason"], r["detail"]) for r in rows] == [
        (3, "failed", "invalid_probe", "would leave"),
        (5, "failed", "missing_probe", "empty"),
    ]
    assert rows[0]["claimed_subject"] == "alice"
    assert (rows[1]["mode"], rows[1]["gallery"]) == ("", "")


def bad(record_changes: dict, base: int = 0) -> dict:
    return {**mixed_records()[base], **record_changes}


@pytest.mark.parametrize(
    "record",
    [
        bad({"surprise": 1}),
        bad({"row": -1}),
        bad({"row": True}),
        bad({"row": 2**31}),
        bad({"probe": ""}),
        bad({"decision": "maybe"}),
        bad({"decision": "identified"}),
        bad({"reason": "no_face"}),
        bad({"threshold": None}),
        bad({"similarity": float("nan")}),
        bad({"similarity": 1.5}),
        bad({"similarity": "0.5"}),
        bad({"similarity": 0.2}),
        bad({"claimed_subject": None}),
        bad({"best_subject": "alice"}),
        bad({"ranks": []}),
        bad({"decision": "no_match"}, base=2),
        bad({"best_subject": "dave"}, base=2),
        bad({"similarity": 0.5}, base=2),
        bad({"ranks": None}, base=2),
        bad(
            {
                "ranks": [
                    {"subject_id": "a", "similarity": 0.1},
                    {"subject_id": "b", "similarity": 0.9},
                ]
            },
            base=3,
        ),
        bad({"ranks": [{"subject_id": "", "similarity": 0.1}]}, base=3),
        bad({"ranks": [{"subject_id": "a", "similarity": None}]}, base=3),
        bad(
            {
                "ranks": [
                    {"subject_id": "a", "similarity": 0.9},
                    {"subject_id": "b", "similarity": None},
                ]
            },
            base=3,
        ),
        bad({"ranks": [("a", 0.1)]}, base=3),
        bad({"reason": None}, base=4),
        bad({"reason": ""}, base=4),
        "not a dict",
    ],
)
def test_build_results_table_refuses_inconsistent_records(record):
    with pytest.raises(ValidationError):
        build_results_table([record])


def test_build_results_table_refuses_repeated_rows_and_non_lists():
    with pytest.raises(ValidationError, match="more than once"):
        build_results_table([verify_record(row(0), 0.5, 0.3), verify_record(row(0), 0.5, 0.3)])
    with pytest.raises(ValidationError):
        build_results_table(verify_record(row(0), 0.5, 0.3))  # type: ignore[arg-type]


def test_rounding_to_float32_never_flips_a_decision():
    # A similarity a hair below the threshold is a no_match even if float32 rounds them equal.
    record = verify_record(row(0), 0.36 - 1e-9, 0.36)
    assert record["decision"] == "no_match"
    assert build_results_table([record]).column("decision").to_pylist() == ["no_match"]


def test_results_from_parquet_refuses_other_files():
    with pytest.raises(ValidationError, match="not Parquet"):
        results_from_parquet(b"PAR1 nope")
    other = pa.table({"row": pa.array([0], pa.int32())})
    with pytest.raises(ValidationError, match="results schema"):
        results_to_parquet(other)


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------


def chunk_tables() -> list[pa.Table]:
    records = mixed_records()
    manifest_failures = failure_records(
        [RowFailure(5, "../x.jpg", "invalid_probe", "leaves", "verify", "staff", "alice")]
    )
    # Out of order on purpose: chunks finish in any order.
    return [
        build_results_table([records[3], records[4]]),
        build_results_table(manifest_failures),
        build_results_table([records[2], records[0], records[1]]),
    ]


def test_aggregate_sorts_counts_and_summarises():
    table, summary = aggregate(
        JOB, chunk_tables(), started_at=T0, model_id="sface", expected_rows=6, finished_at=T1
    )
    assert table.column("row").to_pylist() == [0, 1, 2, 3, 4, 5]
    assert table.schema.equals(results_schema())
    assert summary == {
        "job_id": JOB,
        "rows": 6,
        "counts": {"match": 1, "no_match": 1, "identified": 1, "not_identified": 1, "failed": 2},
        "match_rate": 0.5,
        "identified_rate": 0.5,
        "failures_by_reason": {"invalid_probe": 1, "no_face": 1},
        "model_id": "sface",
        "started_at": T0,
        "finished_at": T1,
        "seconds": 90.0,
    }
    assert json.loads(summary_json(summary)) == summary


def test_rates_are_null_when_nothing_was_decided():
    only_failures = build_results_table(
        [
            failed_record(row(0), UnknownSubjectError("no alice in staff")),
            failed_record(row(1, "identify", None), NoFaceError("none")),
        ]
    )
    _, summary = aggregate(JOB, [only_failures], started_at=T0, model_id="sface", finished_at=T1)
    assert summary["match_rate"] is None and summary["identified_rate"] is None
    assert summary["failures_by_reason"] == {"no_face": 1, "unknown_subject": 1}


def test_aggregate_refuses_a_row_written_twice():
    tables = chunk_tables()
    with pytest.raises(ValidationError, match="more than once") as err:
        aggregate(JOB, [*tables, tables[0]], started_at=T0, model_id="sface")
    assert "rows [3, 4]" in err.value.detail


def test_aggregate_refuses_missing_or_unexpected_rows():
    tables = chunk_tables()
    with pytest.raises(ValidationError) as err:
        aggregate(JOB, tables[1:], started_at=T0, model_id="sface", expected_rows=6)
    assert "missing rows [3, 4]" in err.value.detail
    with pytest.raises(ValidationError) as err:
        aggregate(JOB, tables, started_at=T0, model_id="sface", expected_rows=5)
    assert "unexpected rows [5]" in err.value.detail


def test_aggregate_of_nothing_is_an_empty_result():
    table, summary = aggregate(JOB, [], started_at=T0, model_id="sface", expected_rows=0)
    assert table.num_rows == 0 and table.schema.equals(results_schema())
    assert summary["rows"] == 0 and summary["counts"]["failed"] == 0


def test_aggregate_defaults_finished_at_to_now():
    start = datetime.now(UTC).replace(microsecond=0)
    _, summary = aggregate(JOB, chunk_tables(), started_at=start, model_id="sface")
    assert 0 <= summary["seconds"] < 60
    assert summary["started_at"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"started_at": "2024-05-01T12:00:00", "model_id": "sface"},
        {"started_at": "yesterday", "model_id": "sface"},
        {"started_at": T1, "model_id": "sface", "finished_at": T0},
        {"started_at": T0, "model_id": ""},
        {"started_at": T0, "model_id": "sface", "expected_rows": -1},
    ],
)
def test_aggregate_refuses_bad_arguments(kwargs):
    with pytest.raises(ValidationError):
        aggregate(JOB, chunk_tables(), **kwargs)


def test_aggregate_refuses_tables_of_another_schema():
    wrong = build_results_table(mixed_records()).drop_columns(["detail"])
    with pytest.raises(ValidationError, match="table 1"):
        aggregate(JOB, [chunk_tables()[0], wrong], started_at=T0, model_id="sface")


# --------------------------------------------------------------------------------------
# Job status on moto
# --------------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The names ``fresh_aws`` (conftest.py) gives moto's table."""
    return Settings(table=TABLE, aws_region=REGION, aws_endpoint_url=None)


@pytest.fixture
def store(ddb, settings) -> JobStore:
    return JobStore.from_settings(settings)


def item(ddb, job_id: str = JOB) -> dict | None:
    key = {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "META"}}
    return ddb.get_item(TableName=TABLE, Key=key, ConsistentRead=True).get("Item")


def test_create_writes_a_running_job_once(store, ddb):
    assert store.create(JOB, rows=10, chunks=3, failed_rows=2)
    stored = item(ddb)
    assert stored["status"] == {"S": "running"}
    assert stored["job_id"] == {"S": JOB}
    assert (stored["rows"], stored["chunks"], stored["failed_rows"]) == (
        {"N": "10"},
        {"N": "3"},
        {"N": "2"},
    )
    assert "done_chunks" not in stored
    assert "kind" not in stored and "subject_id" not in stored
    assert not store.create(JOB, rows=99, chunks=1, failed_rows=0)
    assert item(ddb) == stored


@pytest.mark.parametrize(
    ("rows", "chunks", "failed"),
    [(-1, 0, 0), (3, 1, 4), (3, 0, 1), (3, 1, 3), (3, 3, 1), (3, True, 0), (3, 1.0, 0)],
)
def test_create_refuses_inconsistent_counts(store, rows, chunks, failed):
    with pytest.raises(ValidationError):
        store.create(JOB, rows=rows, chunks=chunks, failed_rows=failed)


def test_create_allows_a_job_with_only_failed_rows(store):
    assert store.create(JOB, rows=4, chunks=0, failed_rows=4)
    status = store.get(JOB)
    assert (status.status, status.chunks, status.chunks_done) == ("running", 0, 0)


def test_chunk_done_counts_each_chunk_once(store, ddb):
    store.create(JOB, rows=30, chunks=3, failed_rows=0)
    assert store.chunk_done(JOB, 1) == (1, 3)
    assert store.chunk_done(JOB, 1) == (1, 3)
    assert store.chunk_done(JOB, 0) == (2, 3)
    assert store.chunk_done(JOB, 0) == (2, 3)
    assert store.chunk_done(JOB, 2) == (3, 3)
    assert store.chunk_done(JOB, 2) == (3, 3)
    assert sorted(item(ddb)["done_chunks"]["SS"]) == ["0", "1", "2"]
    assert store.get(JOB).chunks_done == 3


def test_chunk_done_refuses_unknown_chunks_and_jobs(store, ddb):
    store.create(JOB, rows=30, chunks=3, failed_rows=0)
    with pytest.raises(ValidationError, match="out of range"):
        store.chunk_done(JOB, 3)
    with pytest.raises(ValidationError):
        store.chunk_done(JOB, -1)
    assert "done_chunks" not in item(ddb)
    with pytest.raises(UnknownJobError):
        store.chunk_done("nope", 0)
    assert item(ddb, "nope") is None


def test_finish_records_the_results(store, ddb):
    store.create(JOB, rows=6, chunks=2, failed_rows=1)
    store.chunk_done(JOB, 0)
    store.chunk_done(JOB, 1)
    counts = {"match": 1, "no_match": 1, "identified": 1, "not_identified": 1, "failed": 2}
    store.finish(JOB, summary_key(JOB), results_key(JOB), counts)
    stored = item(ddb)
    assert stored["status"] == {"S": "succeeded"}
    assert stored["results_key"] == {"S": results_key(JOB)}
    assert stored["counts"]["M"]["failed"] == {"N": "2"}
    status = store.get(JOB)
    assert isinstance(status, JobStatus)
    assert status.to_dict() == {
        "job_id": JOB,
        "status": "succeeded",
        "rows": 6,
        "chunks": 2,
        "chunks_done": 2,
        "failed_rows": 1,
        "created_at": status.created_at,
        "updated_at": status.updated_at,
        "results_key": results_key(JOB),
        "summary_key": summary_key(JOB),
        "counts": counts,
        "reason": None,
    }
    assert status.created_at.endswith("Z") and status.updated_at >= status.created_at


def test_finish_refuses_bad_arguments(store):
    store.create(JOB, rows=1, chunks=1, failed_rows=0)
    with pytest.raises(ValidationError):
        store.finish(JOB, "", results_key(JOB), {})
    with pytest.raises(ValidationError):
        store.finish(JOB, summary_key(JOB), results_key(JOB), {"match": -1})
    assert store.get(JOB).status == "running"


def test_fail_marks_a_running_job_failed(store, ddb):
    store.create(JOB, rows=1, chunks=1, failed_rows=0)
    assert store.fail(JOB, "storage_error: results chunk 0 missing")
    assert item(ddb)["status"] == {"S": "failed"}
    status = store.get(JOB)
    assert (status.status, status.reason) == ("failed", "storage_error: results chunk 0 missing")
    with pytest.raises(ValidationError):
        store.fail(JOB, "")


def test_a_failure_never_erases_a_success_but_a_success_replaces_a_failure(store, ddb):
    store.create(JOB, rows=1, chunks=1, failed_rows=0)
    store.fail(JOB, "first aggregation crashed")
    store.finish(JOB, summary_key(JOB), results_key(JOB), {"match": 1})
    assert "reason" not in item(ddb)
    assert not store.fail(JOB, "a late duplicate failed")
    stored = item(ddb)
    assert stored["status"] == {"S": "succeeded"} and "reason" not in stored


def test_long_reasons_are_cut(store):
    store.create(JOB, rows=1, chunks=1, failed_rows=0)
    store.fail(JOB, "x" * 5000)
    assert len(store.get(JOB).reason) == 1024


def test_unknown_jobs(store, ddb):
    for call in (
        lambda: store.get("ghost"),
        lambda: store.finish("ghost", summary_key("ghost"), results_key("ghost"), {}),
        lambda: store.fail("ghost", "boom"),
        lambda: store.chunk_done("ghost", 0),
    ):
        with pytest.raises(UnknownJobError) as err:
            call()
        assert err.value.code == "unknown_job"
        assert isinstance(err.value, FaceGateError)
    assert item(ddb, "ghost") is None


def test_store_refuses_invalid_job_ids(store):
    with pytest.raises(ValidationError):
        store.get("a#b")
    with pytest.raises(ValidationError):
        store.create("../x", rows=1, chunks=1, failed_rows=0)


def test_a_whole_job_end_to_end(store):
    """Planner, workers and aggregator as the Lambdas will chain them, minus the model."""
    manifest = "probe,claimed_subject,gallery,mode\n" + "".join(
        f"p{i}.jpg,s{i},staff,{'verify' if i % 4 else 'oops'}\n" for i in range(10)
    )
    rows, failures = parse_job_manifest(JOB, manifest)
    chunks = plan_job_chunks(JOB, rows, 3)
    assert store.create(JOB, rows=10, chunks=len(chunks), failed_rows=len(failures))
    assert not store.create(JOB, rows=10, chunks=len(chunks), failed_rows=len(failures))
    files = {
        manifest_failures_key(JOB): results_to_parquet(
            build_results_table(failure_records(failures))
        )
    }
    requests = []
    for chunk in reversed(chunks):
        received = JobChunk.from_message(chunk.to_message())
        records = [verify_record(r, 0.1 * (r.row % 5), 0.25) for r in received.rows]
        files[chunk_result_key(JOB, received.index)] = results_to_parquet(
            build_results_table(records)
        )
        done, total = store.chunk_done(JOB, received.index)
        if done == total:
            requests.append(AggregateRequest(JOB).to_message())
    assert len(requests) == 1
    job = AggregateRequest.from_message(requests[0]).job_id
    status = store.get(job)
    tables = [results_from_parquet(data) for data in files.values()]
    table, summary = aggregate(
        job, tables, started_at=status.created_at, model_id="sface", expected_rows=status.rows
    )
    store.finish(job, summary_key(job), results_key(job), summary["counts"])
    final = store.get(job)
    assert final.status == "succeeded" and final.chunks_done == final.chunks == 3
    assert table.column("row").to_pylist() == list(range(10))
    assert summary["failures_by_reason"] == {"invalid_mode": 3}
    assert summary["counts"]["match"] + summary["counts"]["no_match"] == 7
    assert final.counts == summary["counts"]


def test_a_finished_jobs_results_are_encrypted_and_typed(store, fresh_aws):
    """``results.parquet`` and ``summary.json`` name people: written like every other object
    (SSE-S3, a content type), whatever the bucket's default encryption."""
    s3, bucket = fresh_aws.s3, fresh_aws.settings.bucket
    store.create(JOB, rows=2, chunks=1, failed_rows=0)
    records = [verify_record(row(0), 0.9, 0.25), verify_record(row(1), 0.1, 0.25)]
    chunk = results_to_parquet(build_results_table(records))
    s3.put_object(Bucket=bucket, Key=chunk_result_key(JOB, 0), Body=chunk)
    store.chunk_done(JOB, 0)

    summary = run_aggregation(s3, bucket, store, JOB, "sface")

    assert store.get(JOB).status == "succeeded"
    assert summary["counts"]["match"] == summary["counts"]["no_match"] == 1
    written = {results_key(JOB): "application/vnd.apache.parquet"}
    written[summary_key(JOB)] = "application/json"
    for key, content_type in written.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", key
        assert head["ContentType"] == content_type
    results = s3.get_object(Bucket=bucket, Key=results_key(JOB))["Body"].read()
    assert results_from_parquet(results).column("decision").to_pylist() == ["match", "no_match"]
    assert json.loads(s3.get_object(Bucket=bucket, Key=summary_key(JOB))["Body"].read()) == summary


def test_a_chunk_file_that_is_not_a_results_table_fails_its_job(store, fresh_aws):
    """No retry makes such a file readable: the job is failed with the reason, not left
    running for ever."""
    s3, bucket = fresh_aws.s3, fresh_aws.settings.bucket
    store.create(JOB, rows=1, chunks=1, failed_rows=0)
    s3.put_object(Bucket=bucket, Key=chunk_result_key(JOB, 0), Body=b"not parquet")
    with pytest.raises(ValidationError):
        run_aggregation(s3, bucket, store, JOB, "sface")
    status = store.get(JOB)
    assert status.status == "failed"
    assert status.reason.startswith("validation_error: ") and "not Parquet" in status.reason
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=results_key(JOB))


def test_reembedding_refuses_a_part_with_null_photo_keys(fresh_aws):
    """Parts are read without the gallery checks: a null key or subject is refused by name,
    never re-embedded as the photo ``None``."""
    s3, bucket = fresh_aws.s3, fresh_aws.settings.bucket
    store = GalleryStore(s3, bucket)
    uploaded = pa.array([1_700_000_000_000_000] * 2, pa.timestamp("us", tz="UTC"))
    part = pa.table(
        {
            "image_key": ["uploads/g/ann/1.jpg", None],
            "subject_id": ["ann", "bob"],
            "source_at": uploaded,
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(part, sink)
    s3.put_object(Bucket=bucket, Key=part_key("g", "p1"), Body=sink.getvalue().to_pybytes())
    with pytest.raises(ValidationError, match="image_key"):
        gallery_photos(store, "g")


# --------------------------------------------------------------------------------------
# Torch-free
# --------------------------------------------------------------------------------------


def test_jobs_module_imports_without_torch():
    """Beyond test_torch_free.py: with torch and the pipeline refused, as in a light zip Lambda,
    manifests still parse."""
    code = (
        "import facegate.batch.manifest as jobs\n"
        "rows, _ = jobs.parse_job_manifest('j', 'probe,gallery,mode\\na.jpg,g,identify\\n')\n"
        "print(rows[0].probe_key)\n"
    )
    done = run_without_torch(code, block=("torch", "facegate.pipeline.face_pipeline"))
    assert done.returncode == 0, (
        done.stderr or "facegate.batch.manifest imported torch or the pipeline"
    )
    assert done.stdout.strip() == "jobs/j/a.jpg"


def test_workers_build_other_models_on_the_same_detector():
    """``wiring.model_pipelines``: a re-embedding's model gets its own embedder, warm, and the
    worker's detector (a fake pipeline class stands in for ``FacePipeline``)."""
    from facegate.batch.wiring import model_pipelines, warm_pipeline

    class FakePipeline:
        def __init__(self, settings: Settings, *, detector: object = None) -> None:
            self.settings, self.detector, self.warm = settings, detector or object(), False

        def warm_up(self) -> None:
            self.warm = True

    settings = Settings(model_id="sface")
    main = warm_pipeline(FakePipeline, settings)
    other = model_pipelines(FakePipeline, settings, main)("sface+dlib")
    assert main.warm and other.warm
    assert other.detector is main.detector
    assert (main.settings.model_id, other.settings.model_id) == ("sface", "sface+dlib")
