"""The compaction function on moto: gallery parts -> ``gallery.parquet``, as the schedule runs it.

The handler module is loaded from where the local stack finds it (the template's CodeUri) and
called with a scheduled event, or a manual one, and the Lambda context the local stack gives.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import ModuleType

import numpy as np
import pyarrow as pa
import pytest
from facegate_local.config import LocalConfig
from facegate_local.stack import LambdaContext
from tests_support import keys_of, repo_root, unit_rows

from facegate.errors import NoFaceError, StorageError, ValidationError
from facegate.gallery.format import (
    GalleryMeta,
    build_gallery_table,
    gallery_embeddings,
    read_gallery,
    rejects_from_errors,
    write_gallery,
)
from facegate.settings import get_settings
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import StoredFace, SubjectStore
from facegate.storage.tombstones import TOMBSTONE_PK, Tombstones

REPO = repo_root()
FUNCTION = "CompactFunction"
DIM = 8
META = GalleryMeta(model_id="sface", weights_sha256="ab" * 32, dim=DIM, threshold=0.37)
T1 = "2024-03-01T10:00:00Z"
T2 = "2024-03-02T10:00:00Z"
SCHEDULE = json.loads((REPO / "functions" / "compact" / "events" / "schedule.json").read_text())


def write_part(
    aws,
    gallery: str,
    part: str,
    rows: Sequence[tuple[str, str, int]],
    created_at: str,
    seed: int,
    meta: GalleryMeta = META,
) -> np.ndarray:
    """Write a part of ``(subject_id, image_key, face_index)`` rows; return its embeddings."""
    embeddings = unit_rows(np.random.default_rng(seed), len(rows), meta.dim)
    table = build_gallery_table(
        subject_ids=[r[0] for r in rows],
        image_keys=[r[1] for r in rows],
        face_indices=np.array([r[2] for r in rows], dtype=np.int32),
        bboxes=np.tile(np.array([1.0, 2.0, 30.0, 40.0], dtype=np.float32), (len(rows), 1)),
        det_scores=np.full(len(rows), 0.99, dtype=np.float32),
        embeddings=embeddings,
        meta=replace(meta, created_at=created_at),
    )
    sink = pa.BufferOutputStream()
    write_gallery(table, sink)
    aws_client("s3", aws).put_object(
        Bucket=aws.bucket,
        Key=f"galleries/{gallery}/parts/{part}.parquet",
        Body=sink.getvalue().to_pybytes(),
    )
    return embeddings


def read_compacted(aws, gallery: str) -> pa.Table:
    body = aws_client("s3", aws).get_object(
        Bucket=aws.bucket, Key=f"galleries/{gallery}/gallery.parquet"
    )["Body"]
    meta, table = read_gallery(pa.BufferReader(body.read()), expected_model_id="sface")
    assert meta.row_count == table.num_rows
    return table


@pytest.fixture(scope="module")
def compact(aws) -> Iterator[ModuleType]:
    """The handler module, imported as the local stack imports it, bound to moto."""
    spec = LocalConfig.load(REPO).template().function(FUNCTION)
    get_settings.cache_clear()  # the module reads the settings of this (moto) environment
    loader = importlib.util.spec_from_file_location(
        f"{spec.module}_under_test", spec.code_dir / f"{spec.module}.py"
    )
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    assert (module.settings.bucket, module.settings.table) == (aws.bucket, aws.table)
    assert module.settings.aws_endpoint_url is None
    yield module
    get_settings.cache_clear()


@pytest.fixture
def clean(aws) -> None:
    """No galleries and no tombstones: each test sees only what it writes."""
    s3 = aws_client("s3", aws)
    listed = s3.list_objects_v2(Bucket=aws.bucket, Prefix="galleries/").get("Contents", [])
    for item in listed:
        s3.delete_object(Bucket=aws.bucket, Key=item["Key"])
    dynamodb = aws_client("dynamodb", aws)
    found = dynamodb.query(
        TableName=aws.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": TOMBSTONE_PK}},
    )["Items"]
    for item in found:
        dynamodb.delete_item(TableName=aws.table, Key={"pk": item["pk"], "sk": item["sk"]})


def invoke(compact: ModuleType, event: dict, timeout_s: float = 300.0) -> dict:
    """The handler with the template's timeout (the sweep stops short of it)."""
    answer = compact.handler(event, LambdaContext(FUNCTION, "us-east-1", timeout_s=timeout_s))
    json.dumps(answer)  # what `facegate local invoke` prints
    return answer


# ----------------------------------------------------------------------------- wiring


def test_local_stack_resolves_the_zip_function():
    template = LocalConfig.load(REPO).template()
    spec = template.function(FUNCTION)
    assert spec.code_dir == REPO / "functions" / "compact"
    assert (spec.module, spec.attribute) == ("facegate_compact", "handler")
    assert spec.environment["FACEGATE_MODEL_ID"] == "sface+dlib"
    assert spec.environment["FACEGATE_BUCKET"] == "facegate-local"
    assert spec.environment["FACEGATE_TABLE"] == "facegate-subjects"
    events = template.resources[FUNCTION]["Properties"]["Events"]
    assert sorted(e["Type"] for e in events.values()) == ["SQS", "Schedule"]
    assert template.resolve(events["Hourly"]["Properties"]["Schedule"]) == "rate(1 hour)"
    assert events["Galleries"]["Properties"]["BatchSize"] == 1
    assert spec.environment["FACEGATE_COMPACT_QUEUE_URL"] == template.queue_url("CompactQueue")
    assert spec.environment["FACEGATE_INGEST_QUEUE_URL"] == template.queue_url("IngestQueue")


def test_sample_event_is_an_eventbridge_schedule():
    assert SCHEDULE["detail-type"] == "Scheduled Event" and SCHEDULE["source"] == "aws.events"
    assert SCHEDULE["detail"] == {} and SCHEDULE["resources"][0].startswith("arn:aws:events:")
    datetime.fromisoformat(SCHEDULE["time"])


# ----------------------------------------------------------------------------- compaction


def test_schedule_compacts_every_gallery_with_parts(aws, compact, clean):
    first = write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0), ("bob", "bob/1.jpg", 0)], T1, 1)
    # A retry of bob/1.jpg in a later part, and a new photo of ann.
    second = write_part(aws, "g1", "b", [("bob", "bob/1.jpg", 0), ("ann", "ann/2.jpg", 0)], T2, 2)
    write_part(aws, "g2", "a", [("cat", "cat/1.jpg", 0)], T1, 3)
    # Only rejects, no parts: not a gallery to compact.
    store = GalleryStore(aws_client("s3", aws), aws.bucket)
    store.write_table(
        GalleryStore.rejects_key("g3", "a"),
        rejects_from_errors([("uploads/g3/x.jpg", NoFaceError("no face"))]),
    )

    answer = invoke(compact, SCHEDULE)

    assert answer["failed"] == []
    reports = {r["gallery"]: r for r in answer["compacted"]}
    assert sorted(reports) == ["g1", "g2"]
    g1 = reports["g1"]
    assert g1["key"] == "galleries/g1/gallery.parquet"
    assert (g1["parts_read"], g1["rows_in"], g1["rows_out"]) == (2, 4, 3)
    assert (g1["duplicates_dropped"], g1["deleted_dropped"], g1["subjects"]) == (1, 0, 2)

    table = read_compacted(aws, "g1")
    assert keys_of(table) == [
        ("ann", "ann/1.jpg", 0),
        ("ann", "ann/2.jpg", 0),
        ("bob", "bob/1.jpg", 0),
    ]
    embeddings = gallery_embeddings(table)
    np.testing.assert_array_equal(embeddings[0], first[0])
    np.testing.assert_array_equal(embeddings[1], second[1])
    np.testing.assert_array_equal(embeddings[2], second[0])  # the newer part's row won
    assert keys_of(read_compacted(aws, "g2")) == [("cat", "cat/1.jpg", 0)]
    s3 = aws_client("s3", aws)
    assert "Contents" not in s3.list_objects_v2(Bucket=aws.bucket, Prefix="galleries/g3/gallery")
    # Parts stay: they are the source of truth.
    assert store.list_parts("g1") == [
        "galleries/g1/parts/a.parquet",
        "galleries/g1/parts/b.parquet",
    ]


def test_tombstoned_subject_is_dropped(aws, compact, clean):
    write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0), ("bob", "bob/1.jpg", 0)], T1, 1)
    write_part(aws, "g1", "b", [("bob", "bob/2.jpg", 0)], T2, 2)
    invoke(compact, SCHEDULE)
    assert {k[0] for k in keys_of(read_compacted(aws, "g1"))} == {"ann", "bob"}

    Tombstones.from_settings(aws).record("gallery:g2", "bob", datetime.now(UTC))  # elsewhere
    assert invoke(compact, SCHEDULE)["compacted"][0]["deleted_dropped"] == 0
    Tombstones.from_settings(aws).record("gallery:g1", "bob", datetime.now(UTC))
    answer = invoke(compact, SCHEDULE)

    (report,) = answer["compacted"]
    assert (report["rows_out"], report["deleted_dropped"], report["subjects"]) == (1, 2, 1)
    assert keys_of(read_compacted(aws, "g1")) == [("ann", "ann/1.jpg", 0)]


def test_a_subject_enrolled_again_after_deletion_stays(aws, compact, clean):
    Tombstones.from_settings(aws).record("gallery:g1", "bob", "2024-03-01T12:00:00Z")
    write_part(aws, "g1", "a", [("bob", "bob/1.jpg", 0)], T1, 1)  # before the deletion
    write_part(aws, "g1", "b", [("bob", "bob/2.jpg", 0)], T2, 2)  # after it
    invoke(compact, SCHEDULE)
    assert keys_of(read_compacted(aws, "g1")) == [("bob", "bob/2.jpg", 0)]


def test_manual_invoke_compacts_only_the_named_gallery(aws, compact, clean):
    write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0)], T1, 1)
    write_part(aws, "g2", "a", [("cat", "cat/1.jpg", 0)], T1, 2)

    answer = invoke(compact, {"gallery": "g2"})

    assert [r["gallery"] for r in answer["compacted"]] == ["g2"] and answer["failed"] == []
    store = GalleryStore(aws_client("s3", aws), aws.bucket)
    assert store.exists(GalleryStore.gallery_key("g2"))
    assert not store.exists(GalleryStore.gallery_key("g1"))


def test_a_failing_gallery_is_reported_and_the_others_compacted(aws, compact, clean, caplog):
    """A gallery of another model than the deployment's compacts (galleries are re-embedded
    for upgrades); one whose parts mix models is refused, and the others still compact. The
    failure is logged by its code: a message can name what it failed on."""
    write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0)], T1, 1)
    other = replace(META, model_id="vggface2")
    write_part(aws, "g2", "a", [("cat", "cat/1.jpg", 0)], T1, 2)
    write_part(aws, "g2", "b", [("cat", "cat/2.jpg", 0)], T2, 3, meta=other)

    answer = invoke(compact, SCHEDULE)

    assert [r["gallery"] for r in answer["compacted"]] == ["g1"]
    (failure,) = answer["failed"]
    assert failure["gallery"] == "g2" and failure["error"]["code"] == "model_mismatch"
    (logged,) = [r for r in caplog.records if r.getMessage() == "compaction failed"]
    assert (logged.gallery, logged.code) == ("g2", "model_mismatch")
    assert "vggface2" in failure["error"]["message"] and "vggface2" not in str(vars(logged))


def test_manual_invoke_of_a_gallery_without_parts(aws, compact, clean):
    answer = invoke(compact, {"gallery": "nothing"})
    assert answer["compacted"] == []
    assert answer["failed"][0]["error"]["code"] == "unknown_gallery"
    with pytest.raises(ValidationError):
        invoke(compact, {"gallery": "../escape"})


def test_a_folder_that_is_not_a_gallery_is_skipped(aws, compact, clean, caplog):
    write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0)], T1, 1)
    s3 = aws_client("s3", aws)
    s3.put_object(Bucket=aws.bucket, Key="galleries/not a gallery!/parts/a.parquet", Body=b"x")
    s3.put_object(Bucket=aws.bucket, Key="galleries/loose.parquet", Body=b"x")

    answer = invoke(compact, SCHEDULE)

    assert [r["gallery"] for r in answer["compacted"]] == ["g1"] and answer["failed"] == []
    skipped = [r.prefix for r in caplog.records if r.getMessage().startswith("skipping a prefix")]
    assert skipped == ["not a gallery!"]


def test_every_page_of_the_listing_is_read(aws, compact, clean, monkeypatch):
    """Galleries after the first page of ``galleries/`` (here: two keys a page) compact too."""
    for gallery in ("g1", "g2", "g3"):
        write_part(aws, gallery, "a", [("ann", "ann/1.jpg", 0)], T1, 1)
        write_part(aws, gallery, "b", [("bob", "bob/1.jpg", 0)], T2, 2)
    monkeypatch.setattr(compact.store, "list_page_size", 2)

    answer = invoke(compact, SCHEDULE)

    reports = {r["gallery"]: r for r in answer["compacted"]}
    assert sorted(reports) == ["g1", "g2", "g3"] and answer["failed"] == []
    assert {r["parts_read"] for r in reports.values()} == {2}


# ----------------------------------------------------------------------------- orphan sweep

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
#: Subject ids distinctive enough to be searched for in every log record.
ORPHANED, ENROLLED = "zed_orphaned", "yan_enrolled"


@pytest.fixture
def enrolments(aws) -> Iterator[tuple[PhotoStore, SubjectStore]]:
    """The photo and subject stores on the module's moto, with no enrolment photo (no
    version, no marker) and no subject item before and after the test."""
    photos, subjects = PhotoStore.from_settings(aws), SubjectStore.from_settings(aws)

    def wipe() -> None:
        photos.objects.delete_versions(photos.objects.versions("enrolments/"))
        dynamodb = aws_client("dynamodb", aws)
        for item in dynamodb.scan(TableName=aws.table)["Items"]:
            if item["pk"]["S"].startswith("SUBJECT#"):
                dynamodb.delete_item(TableName=aws.table, Key={"pk": item["pk"], "sk": item["sk"]})

    wipe()
    yield photos, subjects
    wipe()


def enrol_two(photos: PhotoStore, subjects: SubjectStore) -> tuple[str, str]:
    """One enrolment killed between its photo and its items, one that finished."""
    orphan = photos.put(ORPHANED, "f1", JPEG, "image/jpeg")
    photos.put(ORPHANED, "f1", JPEG + b"2", "image/jpeg")  # a retried put: two versions
    kept = photos.put(ENROLLED, "f1", JPEG, "image/jpeg")
    (vector,) = unit_rows(np.random.default_rng(1), 1, DIM)
    face = StoredFace(face_id="f1", embedding=vector, image_key=kept)
    subjects.write_faces(ENROLLED, [face], "sface", weights_sha256="ab" * 32)
    return orphan, kept


def keys_left(photos: PhotoStore) -> set[str]:
    return {key for key, _ in photos.objects.versions("enrolments/")}


def test_schedule_sweeps_orphaned_enrolment_photos(
    aws, compact, clean, enrolments, monkeypatch, caplog
):
    """The hourly run destroys a photo no face item names once it is older than the minimum
    age, every version; a referenced photo stays; the answer and the log carry counts."""
    photos, subjects = enrolments
    orphan, kept = enrol_two(photos, subjects)

    young = invoke(compact, SCHEDULE)["orphan_photos"]  # an enrolment may still be running

    assert (young["subjects"], young["versions_deleted"], young["complete"]) == (2, 0, True)
    assert keys_left(photos) == {orphan, kept}

    an_hour_on = datetime.now(UTC) + compact.orphans.min_age + timedelta(minutes=1)
    monkeypatch.setattr(compact.orphans, "clock", lambda: an_hour_on)
    answer = invoke(compact, SCHEDULE)

    assert answer["orphan_photos"] == {
        "subjects": 2,
        "subjects_touched": 1,
        "objects_deleted": 1,
        "versions_deleted": 2,
        "keys_skipped": 0,
        "complete": True,
    }
    assert answer["failed"] == [] and keys_left(photos) == {kept}
    assert subjects.image_keys(ENROLLED) == {kept}
    logged = [r for r in caplog.records if r.getMessage() == "swept orphaned enrolment photos"]
    assert [r.versions_deleted for r in logged] == [0, 2]  # one line a run, counts only
    for record in caplog.records:
        shown = f"{record.getMessage()} {vars(record)}"
        assert ORPHANED not in shown and ENROLLED not in shown and "enrolments/" not in shown


def test_the_sweep_uses_the_deployment_s_minimum_age(compact):
    configured = compact.settings.orphan_photo_min_age_minutes
    assert compact.orphans.min_age == timedelta(minutes=configured)
    assert compact.orphans.min_age == timedelta(hours=1)


def test_a_manual_invoke_does_not_sweep(aws, compact, clean, enrolments, monkeypatch):
    photos, subjects = enrolments
    orphan, kept = enrol_two(photos, subjects)
    write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0)], T1, 1)
    monkeypatch.setattr(compact.orphans, "clock", lambda: datetime.now(UTC) + timedelta(days=1))

    answer = invoke(compact, {"gallery": "g1"})

    assert [r["gallery"] for r in answer["compacted"]] == ["g1"]
    assert answer["orphan_photos"] is None
    assert keys_left(photos) == {orphan, kept}


def test_a_sweep_short_of_time_stops_before_the_first_subject(
    aws, compact, clean, enrolments, monkeypatch
):
    photos, subjects = enrolments
    orphan, kept = enrol_two(photos, subjects)
    monkeypatch.setattr(compact.orphans, "clock", lambda: datetime.now(UTC) + timedelta(days=1))

    answer = invoke(compact, SCHEDULE, timeout_s=compact.SWEEP_MARGIN_MS / 1000 - 1)

    assert answer["orphan_photos"]["complete"] is False
    assert answer["orphan_photos"]["subjects"] == 0
    assert keys_left(photos) == {orphan, kept}


def test_a_failed_sweep_is_logged_by_its_code_and_compaction_still_answers(
    aws, compact, clean, monkeypatch, caplog
):
    write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0)], T1, 1)

    def broken(**_: object) -> None:
        raise StorageError(f"deleting enrolments/default/{ORPHANED}/f1.jpg failed: SlowDown")

    monkeypatch.setattr(compact.orphans, "sweep", broken)
    answer = invoke(compact, SCHEDULE)

    assert [r["gallery"] for r in answer["compacted"]] == ["g1"]
    assert answer["orphan_photos"] == {"error": {"code": "storage_error"}}
    (logged,) = [r for r in caplog.records if r.getMessage() == "orphan sweep failed"]
    assert logged.code == "storage_error" and ORPHANED not in str(vars(logged))


# ----------------------------------------------------------------------------- fan-out


@pytest.fixture
def queues(aws, compact, monkeypatch) -> dict[str, str]:
    """The compaction and ingest queues, and the module's settings pointing at them (as the
    template sets them), with an ANN threshold of 3 rows."""
    sqs = aws_client("sqs", aws)
    urls = {
        name: sqs.create_queue(QueueName=f"{name}-{id(monkeypatch)}")["QueueUrl"]
        for name in ("compact", "ingest")
    }
    monkeypatch.setattr(
        compact,
        "settings",
        compact.settings.model_copy(
            update={
                "compact_queue_url": urls["compact"],
                "ingest_queue_url": urls["ingest"],
                "ann_min_rows": 3,
            }
        ),
    )
    return urls


def _drain(aws, url: str) -> list[dict]:
    sqs = aws_client("sqs", aws)
    found = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in batch:
            found.append(message)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def _sqs_event(messages: list[dict]) -> dict:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:CompactQueue",
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


def test_the_schedule_queues_one_compaction_per_gallery_and_each_runs_alone(
    aws, compact, clean, queues
):
    write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0), ("bob", "bob/1.jpg", 0)], T1, 1)
    write_part(aws, "g1", "b", [("cat", "cat/1.jpg", 0)], T2, 2)
    write_part(aws, "g2", "a", [("dan", "dan/1.jpg", 0)], T1, 3)

    answer = invoke(compact, SCHEDULE)
    assert answer["queued"] == ["g1", "g2"] and answer["compacted"] == []
    store = GalleryStore(aws_client("s3", aws), aws.bucket)
    assert not store.exists(GalleryStore.gallery_key("g1"))  # nothing compacted in the call
    queued = _drain(aws, queues["compact"])
    assert sorted(json.loads(m["Body"])["gallery"] for m in queued) == ["g1", "g2"]

    # The queue's messages, one invocation each (BatchSize 1), as the event source sends.
    for message in queued:
        assert invoke(compact, _sqs_event([message])) == {"batchItemFailures": []}
    assert keys_of(read_compacted(aws, "g1")) == [
        ("ann", "ann/1.jpg", 0),
        ("bob", "bob/1.jpg", 0),
        ("cat", "cat/1.jpg", 0),
    ]
    assert read_compacted(aws, "g2").num_rows == 1
    # g1 has 3 rows (the threshold): its index build is queued for the embedding function.
    builds = [json.loads(m["Body"]) for m in _drain(aws, queues["ingest"])]
    assert builds == [
        {"type": "facegate.index_gallery", "version": 1, "gallery": "g1", "min_rows": 3}
    ]
    # Again with nothing new: no compaction writes, no index build is queued.
    invoke(compact, _sqs_event(_queued_again(aws, compact, queues, "g1")))
    assert _drain(aws, queues["ingest"]) == []
    # A new part: an incremental run changes only the delta, and an index of the base still
    # serves (the delta's rows are rescored beside it), so no build is queued either.
    # (Written through GalleryStore, as FaceGate's writers do: it announces the part in the
    # gallery's inbox; write_part's bare PUT would wait for the daily full run.)
    store.write_table(
        store.part_key("g1", "c"),
        build_gallery_table(
            subject_ids=["dee"],
            image_keys=["dee/1.jpg"],
            face_indices=np.zeros(1, np.int32),
            bboxes=np.ones((1, 4), np.float32),
            det_scores=np.ones(1, np.float32),
            embeddings=unit_rows(np.random.default_rng(4), 1, META.dim),
            meta=replace(META, created_at=T2),
        ),
    )
    invoke(compact, _sqs_event(_queued_again(aws, compact, queues, "g1")))
    assert _drain(aws, queues["ingest"]) == []
    assert store.objects.exists("galleries/g1/delta.parquet")


def _queued_again(aws, compact, queues, gallery: str) -> list[dict]:
    from facegate.batch.gallery_work import queue_compactions

    queue_compactions(aws_client("sqs", aws), queues["compact"], [gallery])
    return _drain(aws, queues["compact"])


def test_a_compaction_message_that_fails_on_storage_is_retried_and_a_bad_one_dropped(
    aws, compact, clean, queues, monkeypatch, caplog
):
    write_part(aws, "g1", "a", [("ann", "ann/1.jpg", 0)], T1, 1)
    messages = _queued_again(aws, compact, queues, "g1")

    def unavailable(*_args, **_kwargs):
        raise StorageError("S3 is unavailable")

    monkeypatch.setattr(compact.store, "compact", unavailable)
    answer = invoke(compact, _sqs_event(messages))
    assert answer == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}
    monkeypatch.undo()

    bad = dict(messages[0], Body=json.dumps({"type": "facegate.compact_gallery", "version": 1}))
    assert invoke(compact, _sqs_event([bad])) == {"batchItemFailures": []}
    assert any(r.getMessage() == "message discarded" for r in caplog.records)
