"""Dead letters naming a subject: the decision per message kind, on the sample events of
``events/`` and messages built by the project's own classes, and the purge on moto's SQS
(deleted, and every other message receivable again at once), and the export's read-only
look (found by id, and every message receivable again at once, none deleted)."""

from __future__ import annotations

import json
from functools import partial

import pytest
from tests_support import repo_root

from facegate.batch.dlq import body_names_subject, find_dead_letters, purge_dead_letters
from facegate.batch.manifest import JobRow
from facegate.batch.messages import AggregateRequest, ArchiveChunk, JobChunk
from facegate.batch.reembed import ReembedRequest
from facegate.errors import ValidationError
from facegate.storage.clients import aws_client

SUBJECT, GALLERY = "person_a", "demo"


def sample_body(path: str) -> str:
    """The body of the first SQS record of a sample event under the repository root."""
    return json.loads((repo_root() / path).read_text())["Records"][0]["body"]


def sample_event(path: str) -> str:
    """A sample invocation event, as a Lambda DLQ keeps it: the event itself is the body."""
    return (repo_root() / path).read_text()


#: uploads/demo/person_a/person_a_1.jpg, as S3 sends it.
PHOTO_UPLOAD = sample_body("events/embed/photo-upload.json")
#: Rows 0 and 1 claim person_a in demo; row 2 identifies impostor_2.jpg.
JOB_CHUNK = sample_body("events/jobs/job-chunk.json")
MANIFEST_CREATED = sample_body("events/jobs/manifest-created.json")
AGGREGATE = sample_body("events/aggregate/aggregate-request.json")
COMPACT_ONE = sample_event("functions/compact/events/one-gallery.json")
COMPACT_SCHEDULE = sample_event("functions/compact/events/schedule.json")


def upload_of(key: str) -> str:
    """The photo upload's notification for another key (form-encoded, as S3 writes it)."""
    doc = json.loads(PHOTO_UPLOAD)
    doc["Records"][0]["s3"]["object"]["key"] = key
    return json.dumps(doc)


def in_sns(body: str) -> str:
    return json.dumps({"Type": "Notification", "MessageId": "1", "Message": body})


ARCHIVE_CHUNK = ArchiveChunk(
    bucket="facegate-local",
    key="uploads/demo/staff.zip",
    version_id="v1",
    etag=None,
    gallery=GALLERY,
    members=(("a/1.jpg", "person_b"), ("b/2.jpg", SUBJECT)),
    index=0,
    count=1,
).to_message()


@pytest.mark.parametrize(
    ("body", "galleries", "api", "expected"),
    [
        (PHOTO_UPLOAD, {GALLERY}, False, True),
        (PHOTO_UPLOAD, None, False, True),
        (PHOTO_UPLOAD, {"other"}, False, False),
        (in_sns(PHOTO_UPLOAD), {GALLERY}, False, True),
        (upload_of("uploads/demo/person_b/person_a_1.jpg"), {GALLERY}, False, False),
        (upload_of("uploads/demo/person_a/deeper/x.jpg"), {GALLERY}, False, True),
        (upload_of("uploads/demo/person_a/.DS_Store"), {GALLERY}, False, True),
        (upload_of("uploads/demo/person_a.zip"), {GALLERY}, False, False),
        (upload_of("enrolments/default/person_a/f1.jpg"), set(), True, True),
        (upload_of("enrolments/default/person_a/f1.jpg"), None, False, False),
        (MANIFEST_CREATED, None, True, False),
        (JOB_CHUNK, {GALLERY}, False, True),
        (JOB_CHUNK, {"other"}, False, False),
        (ARCHIVE_CHUNK, {GALLERY}, False, True),
        (ARCHIVE_CHUNK, {"other"}, False, False),
        (AGGREGATE, None, True, False),
        (AggregateRequest(SUBJECT).to_message(), None, True, False),  # a job, not a person
        (ReembedRequest("person_a_v2", "sface").to_message(), None, True, False),
        (COMPACT_ONE, None, True, False),
        (COMPACT_SCHEDULE, None, True, False),
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}), None, True, False),
    ],
)
def test_the_decision_follows_the_message_kind(body, galleries, api, expected):
    assert body_names_subject(body, SUBJECT, galleries, api) is expected


def test_an_identify_row_or_a_probe_name_is_not_a_claim():
    """person_b appears in the chunk as a probe file name only: the rows are parsed, not
    searched, so the chunk does not name them."""
    assert "person_b" in JOB_CHUNK
    assert not body_names_subject(JOB_CHUNK, "person_b", None, True)


def test_form_encoded_keys_are_decoded():
    key = "uploads/demo/alice%40example.com/1.jpg"
    assert body_names_subject(upload_of(key), "alice@example.com", {GALLERY}, False)


@pytest.mark.parametrize(
    ("body", "subject", "expected"),
    [
        ("not json, but person_a", SUBJECT, True),
        ("not json at all", SUBJECT, False),
        ("upload of alice%40example.com failed", "alice@example.com", True),
        (json.dumps({"type": "facegate.unknown", "who": "person_a"}), SUBJECT, True),
        (json.dumps({"type": "facegate.unknown", "who": "person_b"}), SUBJECT, False),
        (
            json.dumps({"type": "facegate.job_chunk", "version": 1, "rows": "person_a"}),
            SUBJECT,
            True,
        ),
        (json.dumps({"Records": "person_a"}), SUBJECT, True),
        (json.dumps(["person_a"]), SUBJECT, True),
    ],
)
def test_a_body_no_parser_accepts_is_read_as_text(body, subject, expected):
    assert body_names_subject(body, subject, None, False) is expected


def test_the_subject_id_is_checked():
    with pytest.raises(ValidationError):
        body_names_subject(PHOTO_UPLOAD, "../x", None, True)


# --------------------------------------------------------------------------------------
# The purge, on moto's SQS
# --------------------------------------------------------------------------------------


@pytest.fixture
def sqs(fresh_aws):
    return aws_client("sqs", fresh_aws.settings)


@pytest.fixture
def queue(sqs) -> str:
    return sqs.create_queue(QueueName="facegate-dlq")["QueueUrl"]


def send(sqs, queue: str, bodies: list[str]) -> list[str]:
    """Send each body; their message ids, in order."""
    return [sqs.send_message(QueueUrl=queue, MessageBody=body)["MessageId"] for body in bodies]


def drain(sqs, queue: str) -> list[str]:
    """Every body receivable now (none waits for a visibility timeout to pass)."""
    bodies: list[str] = []
    while messages := sqs.receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=600
    ).get("Messages"):
        bodies += [m["Body"] for m in messages]
    return bodies


def job_chunk(gallery: str, index: int) -> str:
    """The sample job chunk for another gallery and chunk index (real rows, re-encoded)."""
    chunk = JobChunk.from_message(JOB_CHUNK)
    rows = tuple(JobRow(r.row, r.probe_key, r.claimed_subject, gallery, r.mode) for r in chunk.rows)
    return JobChunk(chunk.job_id, index, 50, rows).to_message()


NAMING = [PHOTO_UPLOAD, in_sns(PHOTO_UPLOAD), ARCHIVE_CHUNK, "person_a, unparsed"] + [
    job_chunk(GALLERY, i) for i in range(10)
]
#: The same subject id in another gallery, other subjects, and messages naming nobody.
OTHERS = [
    upload_of("uploads/visitors/person_a/1.jpg"),
    upload_of("uploads/demo/person_b/1.jpg"),
    MANIFEST_CREATED,
    AGGREGATE,
    COMPACT_SCHEDULE,
    "unparsed, nobody",
] + [job_chunk("visitors", i) for i in range(10, 20)]


def test_purge_deletes_the_subjects_messages_and_releases_the_others(sqs, queue):
    send(sqs, queue, NAMING + OTHERS)
    names = partial(body_names_subject, subject_id=SUBJECT, galleries={GALLERY}, api=False)

    assert purge_dead_letters(sqs, queue, names) == len(NAMING)
    assert sorted(drain(sqs, queue)) == sorted(OTHERS)


def test_a_bounded_purge_stops_after_max_messages(sqs, queue):
    send(sqs, queue, NAMING)
    names = partial(body_names_subject, subject_id=SUBJECT, galleries={GALLERY}, api=False)

    assert purge_dead_letters(sqs, queue, names, max_messages=5) == 5
    assert len(drain(sqs, queue)) == len(NAMING) - 5


def test_a_failing_decision_still_releases_every_message(sqs, queue):
    send(sqs, queue, OTHERS)

    def names(body: str) -> bool:
        if body == OTHERS[-1]:
            raise RuntimeError("the decision failed")
        return False

    with pytest.raises(RuntimeError):
        purge_dead_letters(sqs, queue, names)
    assert sorted(drain(sqs, queue)) == sorted(OTHERS)


def test_an_empty_queue_deletes_nothing(sqs, queue):
    assert purge_dead_letters(sqs, queue, lambda body: True, wait_seconds=0) == 0


# --------------------------------------------------------------------------------------
# The read-only look, on moto's SQS
# --------------------------------------------------------------------------------------


def test_find_lists_the_subjects_messages_and_leaves_every_one_visible(sqs, queue):
    naming = send(sqs, queue, NAMING)
    send(sqs, queue, OTHERS)
    names = partial(body_names_subject, subject_id=SUBJECT, galleries={GALLERY}, api=False)

    found = find_dead_letters(sqs, queue, names)

    assert len(found) == len(set(found)) and set(found) == set(naming)
    # Nothing deleted, nothing left hidden: a second look finds the same, and every
    # message is receivable at once.
    assert set(find_dead_letters(sqs, queue, names)) == set(naming)
    assert sorted(drain(sqs, queue)) == sorted(NAMING + OTHERS)


def test_a_bounded_find_receives_at_most_max_messages(sqs, queue):
    send(sqs, queue, NAMING)
    names = partial(body_names_subject, subject_id=SUBJECT, galleries={GALLERY}, api=False)

    assert len(find_dead_letters(sqs, queue, names, max_messages=5)) == 5
    assert len(drain(sqs, queue)) == len(NAMING)


def test_a_failing_decision_in_a_find_still_releases_every_message(sqs, queue):
    send(sqs, queue, NAMING)

    def names(body: str) -> bool:
        if body == NAMING[-1]:
            raise RuntimeError("the decision failed")
        return True

    with pytest.raises(RuntimeError):
        find_dead_letters(sqs, queue, names)
    assert sorted(drain(sqs, queue)) == sorted(NAMING)


def test_find_in_an_empty_queue_finds_nothing(sqs, queue):
    assert find_dead_letters(sqs, queue, lambda body: True, wait_seconds=0) == []
