"""Ingestion front half: S3/SQS events, the upload layout, archive plans, chunks, the ledger.

Events are written out as AWS documents them (S3 notification structure, S3 test event, SQS
Lambda event); the ledger runs on moto and every test checks the DynamoDB item behind it.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile
from urllib.parse import quote_plus

import pytest
from aws_lambda_powertools.utilities.data_classes import SQSEvent
from tests_support import run_without_torch

from facegate.batch.archives import (
    MAX_MEMBER_BYTES,
    ArchivePlan,
    open_archive,
    parse_archive_manifest,
    read_archive,
    read_member,
)
from facegate.batch.csv_manifest import read_manifest
from facegate.batch.events import notification_refs
from facegate.batch.messages import (
    ARCHIVE_CHUNK,
    MAX_MESSAGE_BYTES,
    ArchiveChunk,
    message_type,
    parse_body,
    plan_archive_chunks,
)
from facegate.batch.processing import (
    CollectingBatchProcessor,
    is_permanent,
    is_retryable,
    process_batch,
)
from facegate.batch.uploads import upload, zip_folder
from facegate.errors import (
    ImageTooLargeError,
    InvalidImageError,
    StorageError,
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage.keys import (
    ArchiveUpload,
    IgnoredKey,
    InvalidUpload,
    ManifestUpload,
    PhotoUpload,
    classify,
)
from facegate.storage.ledger import IngestLedger, safe_part_name
from facegate.storage.objects import ObjectRef
from facegate.storage.subjects import SubjectStore

REGION = "eu-west-1"
TABLE = "facegate-test-ingest"
BUCKET = "facegate-uploads"
UNICODE_KEY = "uploads/g/José Ñúñez/ph+oto 1.jpg"
#: How S3 writes that key into a notification: form-encoded UTF-8, ``/`` kept.
ENCODED_UNICODE_KEY = "uploads/g/Jos%C3%A9+%C3%91%C3%BA%C3%B1ez/ph%2Boto+1.jpg"
PHOTO = b"\xff\xd8\xff\xe0 not really a jpeg"


# --------------------------------------------------------------------------------------
# Event documents
# --------------------------------------------------------------------------------------


def s3_record(
    key: str,
    *,
    event_name: str = "ObjectCreated:Put",
    version_id: str | None = "096fKKXTRTtl3on89fVO.nfljtsv6qko",
    etag: str = "d41d8cd98f00b204e9800998ecf8427e",
    size: int = 1024,
) -> dict:
    """One record of S3's notification structure (event version 2.1), as AWS documents it."""
    obj: dict = {"key": key, "size": size, "eTag": etag, "sequencer": "0055AED6DCD90281E5"}
    if version_id is not None:
        obj["versionId"] = version_id
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": "2024-05-01T12:00:00.000Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAJDPLRKLG7UEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "172.16.0.1"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "facegate-uploads",
            "bucket": {
                "name": BUCKET,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{BUCKET}",
            },
            "object": obj,
        },
    }


S3_TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2024-05-01T12:00:00.089Z",
    "Bucket": BUCKET,
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}


def sqs_record(body: str, message_id: str = "059f36b4-87a3-44ab-83d2-661975830a7d") -> dict:
    """One record of the SQS event Lambda receives, as AWS documents it."""
    return {
        "messageId": message_id,
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
        },
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:facegate-ingest",
        "awsRegion": REGION,
    }


def sqs_event(*bodies: str) -> dict:
    return {"Records": [sqs_record(b, message_id=f"m-{i}") for i, b in enumerate(bodies)]}


# --------------------------------------------------------------------------------------
# Events -> object refs
# --------------------------------------------------------------------------------------


def test_encoded_key_is_what_s3_sends():
    assert quote_plus(UNICODE_KEY, safe="/") == ENCODED_UNICODE_KEY


def sqs_refs(event: dict) -> list[ObjectRef]:
    """What the queue handlers do with an SQS event of notifications, record by record."""
    return [
        ref
        for record in SQSEvent(event).records
        for ref in notification_refs(parse_body(record.body))
    ]


def test_s3_event_decodes_key_and_keeps_version():
    event = {"Records": [s3_record(ENCODED_UNICODE_KEY)]}
    assert notification_refs(event) == [
        ObjectRef(
            bucket=BUCKET,
            key=UNICODE_KEY,
            version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
            etag="d41d8cd98f00b204e9800998ecf8427e",
            size=1024,
            uploaded_at="2024-05-01T12:00:00.000000Z",
        )
    ]


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("uploads/g/alice/my+photo.jpg", "uploads/g/alice/my photo.jpg"),
        ("uploads/g/alice/a%2Bb.jpg", "uploads/g/alice/a+b.jpg"),
        ("uploads/g/alice/%E5%86%99%E7%9C%9F.jpg", "uploads/g/alice/写真.jpg"),
        ("uploads/g/alice/100%25.jpg", "uploads/g/alice/100%.jpg"),
        ("uploads%2Fg%2Falice%2F1.jpg", "uploads/g/alice/1.jpg"),  # moto encodes "/" too
    ],
)
def test_keys_are_url_decoded(encoded, decoded):
    (ref,) = notification_refs({"Records": [s3_record(encoded)]})
    assert ref.key == decoded


def test_unversioned_bucket_and_quoted_etag():
    record = s3_record("uploads/g/a/p.jpg", version_id=None, etag='"abc-2"')
    (ref,) = notification_refs({"Records": [record]})
    assert ref.version_id is None
    assert ref.etag == "abc-2"
    suspended = s3_record("uploads/g/a/p.jpg", version_id="null")
    assert notification_refs({"Records": [suspended]})[0].version_id is None


def test_multipart_and_copy_are_created_removals_are_not():
    event = {
        "Records": [
            s3_record("uploads/g/a/1.jpg", event_name="ObjectCreated:CompleteMultipartUpload"),
            s3_record("uploads/g/a/2.jpg", event_name="ObjectCreated:Copy"),
            s3_record("uploads/g/a/3.jpg", event_name="ObjectRemoved:Delete"),
            s3_record("uploads/g/a/4.jpg", event_name="ObjectRestore:Completed"),
        ]
    }
    assert [r.key for r in notification_refs(event)] == ["uploads/g/a/1.jpg", "uploads/g/a/2.jpg"]


def test_sqs_event_of_notifications():
    first = json.dumps({"Records": [s3_record("uploads/g/alice/1.jpg")]})
    second = json.dumps(
        {"Records": [s3_record("uploads/g/bob/1.jpg"), s3_record(ENCODED_UNICODE_KEY)]}
    )
    refs = sqs_refs(sqs_event(first, second))
    assert [r.key for r in refs] == ["uploads/g/alice/1.jpg", "uploads/g/bob/1.jpg", UNICODE_KEY]
    assert all(r.bucket == BUCKET for r in refs)


def test_test_events_are_ignored():
    assert notification_refs(S3_TEST_EVENT) == []
    real = json.dumps({"Records": [s3_record("uploads/g/alice/1.jpg")]})
    refs = sqs_refs(sqs_event(json.dumps(S3_TEST_EVENT), real))
    assert [r.key for r in refs] == ["uploads/g/alice/1.jpg"]


def test_sns_envelope_is_unwrapped():
    notification = json.dumps({"Records": [s3_record("uploads/g/alice/1.jpg")]})
    envelope = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": f"arn:aws:sns:{REGION}:123456789012:facegate-uploads",
        "Subject": "Amazon S3 Notification",
        "Message": notification,
        "Timestamp": "2024-05-01T12:00:00.000Z",
    }
    assert [r.key for r in sqs_refs(sqs_event(json.dumps(envelope)))] == ["uploads/g/alice/1.jpg"]


def test_chunk_messages_are_typed_notifications_are_not():
    chunk = ArchiveChunk(
        BUCKET, "uploads/g/a.zip", "v1", "e", "g", (("alice/1.jpg", "alice"),), 0, 1
    )
    assert message_type(parse_body(chunk.to_message())) == ARCHIVE_CHUNK
    assert message_type(parse_body(json.dumps({"Records": [s3_record("x/1.jpg")]}))) is None
    assert message_type(S3_TEST_EVENT) is None


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"Records": "nope"},
        {"Records": [{"eventSource": "aws:kinesis", "kinesis": {}}]},
        {"no": "records"},
        {"Records": [{"body": "nested"}]},
        {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}}}]},
        {"Records": [s3_record("")]},
        {"Type": "Notification", "Message": "not json"},
    ],
)
def test_malformed_notifications_are_validation_errors(doc):
    with pytest.raises(ValidationError):
        notification_refs(doc)


@pytest.mark.parametrize("body", ["not json", json.dumps(["a", "list"]), "", None])
def test_bodies_that_are_not_json_objects_are_validation_errors(body):
    with pytest.raises(ValidationError):
        parse_body(body)


# --------------------------------------------------------------------------------------
# Batch processing
# --------------------------------------------------------------------------------------


def test_collecting_processor_fails_records_alone_and_by_their_write():
    """Powertools' processor with a flush: a record that raises fails alone, a failed write
    fails the records it held, and the flush sees only records that were collected."""
    flushed = []

    def collect(record):
        if record.body == "retry me":
            raise StorageError("throttled")
        return record.body

    def flush(collected):
        flushed.extend(value for _, value in collected)
        return {r.message_id: StorageError("write failed") for r, v in collected if v == "lost"}

    event = sqs_event("fine", "retry me", "lost", "fine too")
    answer = process_batch(event, collect, processor=CollectingBatchProcessor(flush))
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-2"}]}
    assert flushed == ["fine", "lost", "fine too"]
    everything = process_batch(
        sqs_event("retry me"), collect, processor=CollectingBatchProcessor(flush)
    )
    assert everything == {"batchItemFailures": [{"itemIdentifier": "m-0"}]}  # not raised


def test_only_storage_and_aws_errors_are_retried():
    from botocore.exceptions import ClientError, EndpointConnectionError

    throttled = ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "GetObject")
    for exc in (StorageError("x"), throttled, EndpointConnectionError(endpoint_url="http://s3")):
        assert is_retryable(exc) and not is_permanent(exc)
    for exc in (ValidationError("x"), InvalidImageError("x"), ImageTooLargeError("x")):
        assert is_permanent(exc) and not is_retryable(exc)
    assert not is_permanent(KeyError("a bug")) and not is_retryable(KeyError("a bug"))


# --------------------------------------------------------------------------------------
# Upload layout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("uploads/staff/alice/1.jpg", PhotoUpload("staff", "alice", "1.jpg")),
        (
            "uploads/staff/bob.smith@x/my photo+1.JPG",
            PhotoUpload("staff", "bob.smith@x", "my photo+1.JPG"),
        ),
        ("uploads/staff/batch-1.zip", ArchiveUpload("staff", "batch-1")),
        ("uploads/staff/Batch 2.ZIP", ArchiveUpload("staff", "Batch 2")),
        ("uploads/staff/batch-1.csv", ManifestUpload("staff", "batch-1")),
        ("galleries/staff/part-1.parquet", IgnoredKey("not under uploads/")),
        ("enrolments/default/alice/f1.jpg", IgnoredKey("not under uploads/")),
        ("uploads/staff/alice/", IgnoredKey("a folder marker, not a file")),
        ("uploads/", IgnoredKey("a folder marker, not a file")),
        ("uploads/readme.txt", IgnoredKey("directly under uploads/, outside any gallery folder")),
        ("uploads/staff/alice/.DS_Store", IgnoredKey("a hidden or system file")),
        ("uploads/staff/__MACOSX/._1.jpg", IgnoredKey("a hidden or system file")),
        ("uploads/staff/alice/Thumbs.db", IgnoredKey("a hidden or system file")),
        ("uploads/staff/.zip", IgnoredKey("a hidden or system file")),
    ],
)
def test_classify(key, expected):
    assert classify(key) == expected


@pytest.mark.parametrize(
    ("key", "gallery", "words"),
    [
        (UNICODE_KEY, "g", "subject_id"),
        ("uploads/bad gallery/alice/1.jpg", None, "gallery"),
        ("uploads//alice/1.jpg", None, "gallery"),
        ("uploads/staff//1.jpg", "staff", "subject_id"),
        ("uploads/staff/alice#1/1.jpg", "staff", "subject_id"),
        ("uploads/staff/loose.jpg", "staff", "not inside a <subject_id>/ folder"),
        ("uploads/staff/alice/2024/1.jpg", "staff", "nested too deep"),
    ],
)
def test_invalid_uploads_are_rejects_not_exceptions(key, gallery, words):
    result = classify(key)
    assert isinstance(result, InvalidUpload)
    assert result.key == key
    assert result.gallery == gallery
    assert result.error.code == "validation_error"
    assert words in result.error.message


def test_archive_knows_its_manifest_key():
    upload = classify("uploads/staff/batch-1.zip")
    assert isinstance(upload, ArchiveUpload)
    assert upload.manifest_key == "uploads/staff/batch-1.csv"
    assert classify(upload.manifest_key) == ManifestUpload("staff", "batch-1")


# --------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------


def make_zip(files: dict[str, bytes | str], *, dirs: tuple[str, ...] = (), **kwargs) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in dirs:
            archive.writestr(zipfile.ZipInfo(name), b"")
        for name, data in files.items():
            archive.writestr(name, data, **kwargs)
    return buf.getvalue()


def codes(plan: ArchivePlan) -> dict[str, str]:
    return {path: error.code for path, error in plan.rejects}


def test_folder_per_subject_archive():
    data = make_zip(
        {
            "bob/1.png": PHOTO,
            "alice/2.jpg": PHOTO,
            "alice/1.jpg": PHOTO,
            "José.Ñ/1.jpg": PHOTO,
            ".DS_Store": b"x",
            "alice/.hidden.jpg": PHOTO,
            "__MACOSX/alice/._1.jpg": b"x",
            "bob/Thumbs.db": b"x",
        },
        dirs=("alice/", "bob/", "__MACOSX/"),
    )
    plan = read_archive(data)
    assert plan.layout == "folders"
    assert plan.members == [
        ("alice/1.jpg", "alice"),
        ("alice/2.jpg", "alice"),
        ("bob/1.png", "bob"),
    ]
    assert codes(plan) == {"José.Ñ/1.jpg": "validation_error"}


def test_one_top_folder_is_stripped():
    data = make_zip(
        {"batch/alice/1.jpg": PHOTO, "batch/bob/1.jpg": PHOTO, "batch/notes.txt": b"hi"},
        dirs=("batch/", "batch/alice/"),
    )
    plan = read_archive(io.BytesIO(data))
    assert plan.members == [("batch/alice/1.jpg", "alice"), ("batch/bob/1.jpg", "bob")]
    assert codes(plan) == {"batch/notes.txt": "validation_error"}
    assert "not inside a <subject_id>/ folder" in plan.rejects[0][1].message


def test_archive_of_a_single_subject_folder():
    plan = read_archive(make_zip({"alice/1.jpg": PHOTO, "alice/2.jpg": PHOTO}))
    assert plan.members == [("alice/1.jpg", "alice"), ("alice/2.jpg", "alice")]
    assert plan.rejects == []


def test_folder_archive_rejects_loose_and_nested_files():
    plan = read_archive(
        make_zip(
            {"loose.jpg": PHOTO, "alice/2024/1.jpg": PHOTO, "bob/1.jpg": PHOTO, "a b/1.jpg": PHOTO}
        )
    )
    assert plan.members == [("bob/1.jpg", "bob")]
    assert codes(plan) == {
        "a b/1.jpg": "validation_error",
        "alice/2024/1.jpg": "validation_error",
        "loose.jpg": "validation_error",
    }
    messages = {path: error.message for path, error in plan.rejects}
    assert "nested too deep" in messages["alice/2024/1.jpg"]
    assert "no manifest" in messages["loose.jpg"]


def test_flat_archive_with_manifest_inside():
    manifest = "path,subject_id\n1.jpg,alice\n2.jpg,bob\n./4.jpg,bob\nmissing.jpg,carol\n"
    plan = read_archive(
        make_zip(
            {
                "manifest.csv": manifest,
                "1.jpg": PHOTO,
                "2.jpg": PHOTO,
                "3.jpg": PHOTO,
                "4.jpg": PHOTO,
            }
        )
    )
    assert plan.layout == "manifest"
    assert plan.members == [("1.jpg", "alice"), ("2.jpg", "bob"), ("4.jpg", "bob")]
    assert codes(plan) == {"3.jpg": "validation_error", "missing.jpg": "validation_error"}
    messages = {path: error.message for path, error in plan.rejects}
    assert "not listed in the manifest" in messages["3.jpg"]
    assert "not in the archive" in messages["missing.jpg"]


def test_manifest_inside_a_top_folder_with_relative_paths():
    plan = read_archive(
        make_zip(
            {
                "batch/manifest.csv": "path,subject_id\n1.jpg,alice\nbatch/2.jpg,bob\n",
                "batch/1.jpg": PHOTO,
                "batch/2.jpg": PHOTO,
            }
        )
    )
    assert plan.members == [("batch/1.jpg", "alice"), ("batch/2.jpg", "bob")]
    assert plan.rejects == []


def test_flat_archive_with_manifest_beside():
    beside = "\ufeffsubject_id,notes,path\r\nalice,front,IMG 1.jpg\r\n\r\nbob,,dir/IMG_2.jpg\r\n"
    data = make_zip({"IMG 1.jpg": PHOTO, "dir/IMG_2.jpg": PHOTO})
    plan = read_archive(data, beside)
    assert plan.layout == "manifest"
    assert plan.members == [("IMG 1.jpg", "alice"), ("dir/IMG_2.jpg", "bob")]
    assert plan.rejects == []


def test_manifest_beside_wins_over_the_one_inside():
    data = make_zip({"manifest.csv": "path,subject_id\n1.jpg,alice\n", "1.jpg": PHOTO})
    plan = read_archive(data, "path,subject_id\n1.jpg,bob\n")
    assert plan.members == [("1.jpg", "bob")]
    assert plan.rejects == []


def test_flat_archive_without_manifest_rejects_every_file():
    plan = read_archive(make_zip({"1.jpg": PHOTO, "2.jpg": PHOTO}))
    assert plan.members == []
    assert codes(plan) == {"1.jpg": "validation_error", "2.jpg": "validation_error"}


def test_manifest_rows_with_bad_or_conflicting_subjects():
    manifest = (
        "path,subject_id\n1.jpg,alice\n1.jpg,bob\n2.jpg,not valid\n3.jpg,carol\n3.jpg,carol\n"
    )
    plan = read_archive(make_zip({"1.jpg": PHOTO, "2.jpg": PHOTO, "3.jpg": PHOTO}), manifest)
    assert plan.members == [("3.jpg", "carol")]
    assert codes(plan) == {"1.jpg": "validation_error", "2.jpg": "validation_error"}
    messages = {path: error.message for path, error in plan.rejects}
    assert "different subjects" in messages["1.jpg"]
    assert "subject_id" in messages["2.jpg"]


@pytest.mark.parametrize(
    "manifest",
    ["", "file,subject\n1.jpg,alice\n", "1.jpg,alice\n", 'path,subject_id\n"1.jpg'],
)
def test_manifest_without_usable_header_refuses_the_archive(manifest):
    with pytest.raises(ValidationError, match="manifest"):
        read_archive(make_zip({"1.jpg": PHOTO}), manifest)


def test_parse_manifest_is_lenient_about_shape():
    text = "Path , Subject_ID\n a.jpg , alice \nshort\n\n"
    assert parse_archive_manifest(text) == [("a.jpg", "alice"), ("", "")]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_manifests_are_refused_by_name_beside_or_inside(encoding):
    """Excel's "Unicode text" is UTF-16 with a BOM: say so instead of failing on mojibake."""
    text = "path,subject_id\n1.jpg,alice\n"
    raw = text.encode(encoding)
    if encoding == "utf-16-be":
        raw = b"\xfe\xff" + raw
    name = "UTF-32" if encoding == "utf-32" else "UTF-16"
    with pytest.raises(ValidationError, match=f"is {name} text: save it as CSV UTF-8"):
        read_archive(make_zip({"1.jpg": PHOTO}), raw)
    with pytest.raises(ValidationError, match=f"is {name} text"):
        read_archive(make_zip({"1.jpg": PHOTO, "manifest.csv": raw}))


def test_manifest_bytes_with_a_bom_are_read_like_text():
    raw = "\ufeffpath,subject_id\r\n1.jpg,alice\r\n".encode()
    plan = read_archive(make_zip({"1.jpg": PHOTO, "manifest.csv": raw}))
    assert plan.members == [("1.jpg", "alice")]
    from_bytes = parse_archive_manifest(raw)
    assert from_bytes == parse_archive_manifest(raw.decode("utf-8-sig")) == [("1.jpg", "alice")]


def test_both_manifest_kinds_share_one_reader():
    """The archive manifest and the job manifest refuse the same files in the same words."""
    with pytest.raises(ValidationError, match="the manifest's header repeats path"):
        parse_archive_manifest("path,subject_id,path\n1.jpg,alice,2.jpg\n")
    with pytest.raises(ValidationError, match="larger than"):
        read_manifest(b"x" * (16 * 1024 * 1024 + 1), required=("path",), max_rows=1)
    with pytest.raises(ValidationError, match="more than 1 rows"):
        read_manifest("path\na\nb\n", required=("path",), max_rows=1)


def test_short_manifest_row_is_a_reject_with_its_line():
    plan = read_archive(make_zip({"1.jpg": PHOTO}), "path,subject_id\n1.jpg,alice\nshort\n")
    assert plan.members == [("1.jpg", "alice")]
    assert codes(plan) == {"<manifest line 3>": "validation_error"}


@pytest.mark.parametrize(
    "data",
    [b"", b"definitely not a zip", b"PK\x03\x04" + b"\x00" * 100],
)
def test_corrupt_archive_is_a_validation_error(data):
    with pytest.raises(ValidationError, match="not a readable zip archive"):
        read_archive(data)


def test_truncated_archive_is_a_validation_error():
    data = make_zip({"alice/1.jpg": PHOTO * 100, "bob/1.jpg": PHOTO})
    with pytest.raises(ValidationError, match="not a readable zip archive"):
        read_archive(data[: len(data) // 2])


def test_oversize_member_is_refused_from_the_directory():
    bomb = b"\x00" * (MAX_MEMBER_BYTES + 1)
    data = make_zip({"alice/bomb.jpg": bomb, "alice/ok.jpg": PHOTO})
    assert len(data) < 100_000, "deflated zeros: a decompression bomb in miniature"
    plan = read_archive(data)
    assert plan.members == [("alice/ok.jpg", "alice")]
    assert codes(plan) == {"alice/bomb.jpg": "image_too_large"}
    with open_archive(data) as archive, pytest.raises(ImageTooLargeError):
        read_member(archive, "alice/bomb.jpg")


def test_a_member_declaring_more_compressed_bytes_than_its_limit_needs_is_refused():
    """Its compressed size is what reading it fetches from S3; the directory refuses it."""
    data = bytearray(make_zip({"alice/ok.jpg": PHOTO, "alice/padded.jpg": PHOTO}))
    central = _central_entry(data, "alice/padded.jpg")
    data[central + 20 : central + 24] = (2 * MAX_MEMBER_BYTES).to_bytes(4, "little")
    plan = read_archive(bytes(data))
    assert plan.members == [("alice/ok.jpg", "alice")]
    assert codes(plan) == {"alice/padded.jpg": "image_too_large"}
    with open_archive(bytes(data)) as archive, pytest.raises(ImageTooLargeError, match="compr"):
        read_member(archive, "alice/padded.jpg")


def test_member_limit_is_configurable():
    data = make_zip({"alice/1.jpg": b"x" * 2000, "alice/2.jpg": b"x" * 10})
    plan = read_archive(data, max_member_bytes=1000)
    assert codes(plan) == {"alice/1.jpg": "image_too_large"}


def test_too_many_members_refuses_the_archive():
    data = make_zip({f"alice/{i}.jpg": PHOTO for i in range(4)})
    assert len(read_archive(data, max_members=4).members) == 4
    with pytest.raises(ValidationError, match="more than the limit of 3"):
        read_archive(data, max_members=3)


def test_unsafe_duplicate_encrypted_and_bzip2_members_are_rejects():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("../evil.jpg", PHOTO)
        archive.writestr("alice/enc.jpg", PHOTO)
        archive.writestr("alice/bz.jpg", PHOTO, compress_type=zipfile.ZIP_BZIP2)
        archive.writestr("alice/dup.jpg", b"first")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            archive.writestr("alice/dup.jpg", b"second")
    data = bytearray(buf.getvalue())
    central = _central_entry(data, "alice/enc.jpg")
    data[central + 8] |= 0x1
    plan = read_archive(bytes(data))
    assert plan.members == [("alice/dup.jpg", "alice")]
    assert sorted(plan.rejects, key=lambda r: r[0]) == plan.rejects
    assert [(p, e.code) for p, e in plan.rejects] == [
        ("../evil.jpg", "validation_error"),
        ("alice/bz.jpg", "invalid_image"),
        ("alice/dup.jpg", "validation_error"),
        ("alice/enc.jpg", "invalid_image"),
    ]
    with open_archive(bytes(data)) as archive:
        assert read_member(archive, "alice/dup.jpg") == b"second"


def _central_entry(data: bytearray, name: str) -> int:
    """Offset of the central directory header naming ``name`` (the name starts at +46)."""
    offset = data.find(b"PK\x01\x02")
    while offset >= 0:
        length = int.from_bytes(data[offset + 28 : offset + 30], "little")
        if data[offset + 46 : offset + 46 + length] == name.encode():
            return offset
        offset = data.find(b"PK\x01\x02", offset + 4)
    raise AssertionError(name)


def test_read_member_returns_bytes_and_refuses_unknown_or_damaged_members():
    data = make_zip({"alice/1.jpg": PHOTO * 50})
    with open_archive(data) as archive:
        assert read_member(archive, "alice/1.jpg") == PHOTO * 50
        with pytest.raises(InvalidImageError, match="no member"):
            read_member(archive, "alice/2.jpg")
    damaged = bytearray(data)
    start = data.find(b"PK\x03\x04") + 30 + len("alice/1.jpg")
    damaged[start + 2 : start + 12] = b"\xff" * 10
    with open_archive(bytes(damaged)) as archive, pytest.raises(InvalidImageError):
        read_member(archive, "alice/1.jpg")


# --------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------


ARCHIVE_REF = ObjectRef(BUCKET, "uploads/staff/batch-1.zip", "v-1", "etag-1", 123_456)


def plan_of(n: int) -> ArchivePlan:
    return ArchivePlan(members=[(f"s{i % 3}/{i:03d}.jpg", f"s{i % 3}") for i in range(n)])


def test_chunks_cover_every_member_once_in_order():
    plan = plan_of(10)
    chunks = plan_archive_chunks(ARCHIVE_REF, "staff", plan, chunk_size=3)
    assert [len(c.members) for c in chunks] == [3, 3, 3, 1]
    assert [(c.index, c.count) for c in chunks] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert [m for c in chunks for m in c.members] == plan.members
    for chunk in chunks:
        assert chunk.ref == ARCHIVE_REF
        assert chunk.gallery == "staff"
    assert len({c.member_range for c in chunks}) == 4


def test_one_chunk_when_the_archive_is_small_and_none_when_empty():
    assert len(plan_archive_chunks(ARCHIVE_REF, "staff", plan_of(3), chunk_size=500)) == 1
    assert plan_archive_chunks(ARCHIVE_REF, "staff", ArchivePlan(), chunk_size=500) == []


def test_chunk_messages_round_trip():
    plan = ArchivePlan(members=[("José Ñúñez/ph+oto 1.jpg", "jose"), ("写真/1.jpg", "s2")])
    for chunk in plan_archive_chunks(ARCHIVE_REF, "staff", plan, chunk_size=1):
        body = chunk.to_message()
        assert body.isascii()
        assert message_type(parse_body(body)) == ARCHIVE_CHUNK
        again = ArchiveChunk.from_message(body)
        assert again == chunk
        assert again.member_range == chunk.member_range


def test_unversioned_chunk_round_trips_with_none():
    ref = ObjectRef(BUCKET, "uploads/staff/b.zip", None, "etag-2", 10)
    (chunk,) = plan_archive_chunks(ref, "staff", plan_of(2), chunk_size=5)
    assert ArchiveChunk.from_message(chunk.to_message()).version_id is None


def test_replanning_gives_the_same_chunks_and_another_size_other_ranges():
    first = plan_archive_chunks(ARCHIVE_REF, "staff", plan_of(10), chunk_size=3)
    again = plan_archive_chunks(ARCHIVE_REF, "staff", plan_of(10), chunk_size=3)
    other = plan_archive_chunks(ARCHIVE_REF, "staff", plan_of(10), chunk_size=4)
    assert first == again
    assert {c.member_range for c in first}.isdisjoint({c.member_range for c in other})


def test_messages_stay_under_the_queue_limit():
    long_name = "x" * 900
    plan = ArchivePlan(members=[(f"s/{long_name}-{i}.jpg", "s") for i in range(1000)])
    chunks = plan_archive_chunks(ARCHIVE_REF, "staff", plan, chunk_size=100_000)
    assert len(chunks) > 1
    assert all(len(c.to_message().encode()) <= MAX_MESSAGE_BYTES for c in chunks)
    assert [m for c in chunks for m in c.members] == plan.members


#: A chunk message as version 1 put it on the queue: messages in flight during a deploy
#: must still decode, and encoding must not change under them.
V1_CHUNK = (
    '{"type":"facegate.archive_chunk","version":1,"bucket":"facegate-uploads",'
    '"key":"uploads/staff/batch-1.zip","version_id":"v-1","etag":"etag-1","size":123456,'
    '"gallery":"staff","index":1,"count":2,"members":[["s0/000.jpg","s0"],'
    '["Jos\\u00e9/1.jpg","jose"]]}'
)


def test_version_1_chunk_messages_decode_and_encode_the_same():
    chunk = ArchiveChunk.from_message(V1_CHUNK)
    assert chunk.ref == ARCHIVE_REF and (chunk.index, chunk.count) == (1, 2)
    assert chunk.members == (("s0/000.jpg", "s0"), ("José/1.jpg", "jose"))
    assert chunk.to_message() == V1_CHUNK


@pytest.mark.parametrize("body", ["", "not json", "[]", '{"type": 1}'])
def test_bodies_that_are_no_message_are_validation_errors(body):
    with pytest.raises(ValidationError):
        message_type(parse_body(body))


def test_notification_mentioning_the_type_is_not_a_chunk():
    body = json.dumps({"Records": [s3_record(f"uploads/g/a/{ARCHIVE_CHUNK}.jpg")]})
    assert message_type(parse_body(body)) is None
    assert len(sqs_refs(sqs_event(body))) == 1


def _message(**changes) -> str:
    (chunk,) = plan_archive_chunks(ARCHIVE_REF, "staff", plan_of(2), chunk_size=5)
    doc = json.loads(chunk.to_message())
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        _message(type="something.else"),
        _message(version=2),
        _message(bucket=...),
        _message(members=[]),
        _message(members=[["a.jpg"]]),
        _message(members=[["a.jpg", "bad id"]]),
        _message(members=[[1, "alice"]]),
        _message(index=1, count=1),
        _message(index="0"),
        _message(gallery="bad gallery"),
        _message(etag=5),
    ],
)
def test_bad_chunk_messages_are_validation_errors(body):
    with pytest.raises(ValidationError):
        ArchiveChunk.from_message(body)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_chunk_size_must_be_positive(size):
    with pytest.raises(ValidationError):
        plan_archive_chunks(ARCHIVE_REF, "staff", plan_of(2), chunk_size=size)


def test_plan_chunks_checks_the_gallery():
    with pytest.raises(ValidationError, match="gallery"):
        plan_archive_chunks(ARCHIVE_REF, "no/such", plan_of(2), chunk_size=5)


# --------------------------------------------------------------------------------------
# Source ids and part names
# --------------------------------------------------------------------------------------

PHOTO_REF = ObjectRef(BUCKET, "uploads/staff/alice/1.jpg", "v-1", "etag-1", 1024)


def test_source_id_is_stable_per_version():
    same = IngestLedger.source_id(copy.deepcopy(PHOTO_REF))
    assert IngestLedger.source_id(PHOTO_REF) == same
    assert len(same) == 64
    resized = ObjectRef(BUCKET, PHOTO_REF.key, "v-1", "etag-1", 99)
    assert IngestLedger.source_id(resized) == same
    others = {
        IngestLedger.source_id(ObjectRef(BUCKET, PHOTO_REF.key, "v-2", "etag-1", 1024)),
        IngestLedger.source_id(ObjectRef("other", PHOTO_REF.key, "v-1", "etag-1", 1024)),
        IngestLedger.source_id(ObjectRef(BUCKET, PHOTO_REF.key + "x", "v-1", "etag-1", 1024)),
        IngestLedger.source_id(PHOTO_REF, "1/4:abc"),
    }
    assert same not in others
    assert len(others) == 4


def test_source_id_falls_back_to_the_etag():
    first = ObjectRef(BUCKET, PHOTO_REF.key, None, "etag-1", 10)
    assert IngestLedger.source_id(first) == IngestLedger.source_id(first)
    replaced = ObjectRef(BUCKET, PHOTO_REF.key, None, "etag-2", 10)
    assert IngestLedger.source_id(first) != IngestLedger.source_id(replaced)
    with pytest.raises(ValidationError, match="neither version id nor etag"):
        IngestLedger.source_id(ObjectRef(BUCKET, PHOTO_REF.key, None, None, 10))


def test_part_names_are_deterministic():
    source = IngestLedger.source_id(PHOTO_REF)
    assert safe_part_name(source) == safe_part_name(source) == f"part-{source}"
    with pytest.raises(ValidationError):
        safe_part_name("../../evil")


# --------------------------------------------------------------------------------------
# Ledger on moto
# --------------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The names ``fresh_aws`` (conftest.py) gives moto's table."""
    return Settings(table=TABLE, aws_region=REGION, aws_endpoint_url=None)


@pytest.fixture
def ledger(ddb, settings) -> IngestLedger:
    return IngestLedger.from_settings(settings)


SOURCE = IngestLedger.source_id(PHOTO_REF)
T0 = 1_714_564_800.0


def item(ddb, source_id: str = SOURCE) -> dict | None:
    key = {"pk": {"S": f"INGEST#{source_id}"}, "sk": {"S": "META"}}
    return ddb.get_item(TableName=TABLE, Key=key, ConsistentRead=True).get("Item")


def test_claim_writes_an_in_progress_item(ledger, ddb):
    assert ledger.claim(SOURCE, now=T0, lease_seconds=900)
    stored = item(ddb)
    assert stored["status"] == {"S": "in_progress"}
    assert stored["source_id"] == {"S": SOURCE}
    assert stored["attempts"] == {"N": "1"}
    assert float(stored["lease_until"]["N"]) == T0 + 900
    assert stored["claimed_at"] == {"S": "2024-05-01T12:00:00Z"}
    assert "kind" not in stored and "subject_id" not in stored


def test_duplicate_delivery_is_refused_while_the_lease_lives(ledger, ddb):
    assert ledger.claim(SOURCE, now=T0, lease_seconds=60)
    assert not ledger.claim(SOURCE, now=T0 + 1, lease_seconds=60)
    assert not ledger.claim(SOURCE, now=T0 + 59.9, lease_seconds=60)
    assert item(ddb)["attempts"] == {"N": "1"}


def test_expired_lease_can_be_taken_over(ledger, ddb):
    assert ledger.claim(SOURCE, now=T0, lease_seconds=60)
    assert ledger.claim(SOURCE, now=T0 + 60, lease_seconds=60)
    stored = item(ddb)
    assert stored["attempts"] == {"N": "2"}
    assert float(stored["lease_until"]["N"]) == T0 + 120
    entry = ledger.get(SOURCE)
    assert (entry.status, entry.attempts, entry.lease_until) == ("in_progress", 2, T0 + 120)


def test_completed_source_is_never_claimed_again(ledger, ddb):
    assert ledger.claim(SOURCE, now=T0, lease_seconds=60)
    outputs = [f"galleries/staff/parts/{safe_part_name(SOURCE)}.parquet"]
    ledger.complete(SOURCE, outputs, now=T0 + 5)
    stored = item(ddb)
    assert stored["status"] == {"S": "completed"}
    assert stored["outputs"] == {"L": [{"S": outputs[0]}]}
    assert stored["completed_at"] == {"S": "2024-05-01T12:00:05Z"}
    assert "lease_until" not in stored
    assert not ledger.claim(SOURCE, now=T0 + 10_000)
    assert not ledger.release(SOURCE)
    assert item(ddb)["status"] == {"S": "completed"}
    assert ledger.get(SOURCE).outputs == tuple(outputs)


def test_release_lets_a_retry_run_at_once(ledger, ddb):
    assert ledger.claim(SOURCE, now=T0)
    assert ledger.release(SOURCE)
    assert item(ddb) is None
    assert ledger.get(SOURCE) is None
    assert ledger.claim(SOURCE, now=T0 + 1)
    assert item(ddb)["attempts"] == {"N": "1"}


def test_release_without_a_claim_is_false(ledger, ddb):
    assert not ledger.release(SOURCE)
    assert item(ddb) is None


def test_sources_are_independent(ledger, ddb):
    chunks = plan_archive_chunks(ARCHIVE_REF, "staff", plan_of(6), chunk_size=2)
    ids = [IngestLedger.source_id(c.ref, c.member_range) for c in chunks]
    assert len(set(ids)) == 3
    assert all(ledger.claim(source, now=T0) for source in ids)
    ledger.complete(ids[0], [], now=T0)
    assert [ledger.get(s).status for s in ids] == ["completed", "in_progress", "in_progress"]
    assert ledger.get(ids[0]).outputs == ()


def test_ledger_items_stay_out_of_the_subject_index(ledger, settings):
    assert ledger.claim(SOURCE, now=T0)
    assert SubjectStore.from_settings(settings).list_subjects() == ([], None)


@pytest.mark.parametrize("bad", ["", "INGEST#x", "A" * 64, SOURCE[:-1]])
def test_ledger_refuses_malformed_source_ids(ledger, bad):
    with pytest.raises(ValidationError):
        ledger.claim(bad)


def test_ledger_checks_its_arguments(ledger):
    with pytest.raises(ValidationError):
        ledger.claim(SOURCE, lease_seconds=0)
    with pytest.raises(ValidationError):
        ledger.complete(SOURCE, "not-a-list")
    with pytest.raises(ValidationError):
        ledger.complete(SOURCE, [""])


def test_aws_failures_are_storage_errors(ddb):
    ledger = IngestLedger(ddb, "no-such-table")
    with pytest.raises(StorageError, match="ResourceNotFoundException"):
        ledger.claim(SOURCE, now=T0)
    with pytest.raises(StorageError):
        ledger.complete(SOURCE, [])
    with pytest.raises(StorageError):
        ledger.release(SOURCE)
    with pytest.raises(StorageError):
        ledger.get(SOURCE)


# --------------------------------------------------------------------------------------
# Torch-free
# --------------------------------------------------------------------------------------


def test_ingest_imports_without_torch():
    """Beyond test_torch_free.py: with torch refused, ``classify`` works and the heavy pipeline
    stays out (``run_without_torch`` exits 3 if a network runtime got imported)."""
    code = "import facegate.storage.keys as keys\nprint(keys.classify('uploads/g/alice/1.jpg'))"
    done = run_without_torch(code)
    assert done.returncode == 0, (
        done.stderr or "facegate.storage.keys imported torch or a network runtime"
    )
    assert "PhotoUpload(gallery='g', subject_id='alice', filename='1.jpg')" in done.stdout


# --------------------------------------------------------------------------------------
# facegate upload on moto
# --------------------------------------------------------------------------------------


def test_upload_puts_folders_zips_and_photos_where_classify_reads_them(
    fresh_aws, faces_dir, tmp_path
):
    """Every upload is encrypted (photos of people) and typed, at the key the embedding job
    reads back as the upload it is."""
    s3, bucket = fresh_aws.s3, fresh_aws.settings.bucket
    photo = (faces_dir / "person_a_1.jpg").read_bytes()
    people = tmp_path / "people"
    (people / "alice").mkdir(parents=True)
    (people / "alice" / "1.jpg").write_bytes(photo)
    (people / ".DS_Store").write_bytes(b"finder")
    (tmp_path / "Set 2.ZIP").write_bytes(zip_folder(people))
    (tmp_path / "face.jpg").write_bytes(photo)

    uploaded = [
        upload(s3, bucket, people, "staff"),
        upload(s3, bucket, tmp_path / "Set 2.ZIP", "staff"),
        upload(s3, bucket, tmp_path / "face.jpg", "staff", "alice"),
    ]

    keys = [key for key, _ in uploaded]
    assert keys == [
        "uploads/staff/people.zip",
        "uploads/staff/Set 2.zip",
        "uploads/staff/alice/face.jpg",
    ]
    assert [classify(k) for k in keys] == [
        ArchiveUpload("staff", "people"),
        ArchiveUpload("staff", "Set 2"),
        PhotoUpload("staff", "alice", "face.jpg"),
    ]
    for (key, size), kind in zip(uploaded, ["application/zip"] * 2 + ["image/jpeg"], strict=True):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", key
        assert (head["ContentType"], head["ContentLength"]) == (kind, size)
    zipped = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    assert zipfile.ZipFile(io.BytesIO(zipped)).namelist() == ["alice/1.jpg"]
    assert s3.get_object(Bucket=bucket, Key=keys[2])["Body"].read() == photo


@pytest.mark.parametrize(
    ("name", "gallery", "subject", "words"),
    [
        ("face.jpg", "staff", None, "--subject"),
        ("face.jpg", "staff", "al/ice", "subject_id"),
        ("face.jpg", "../staff", "alice", "gallery"),
        ("missing.zip", "staff", None, "does not exist"),
    ],
)
def test_upload_refuses_what_the_layout_cannot_hold(
    fresh_aws, tmp_path, name, gallery, subject, words
):
    (tmp_path / "face.jpg").write_bytes(PHOTO)
    s3, bucket = fresh_aws.s3, fresh_aws.settings.bucket
    with pytest.raises(ValidationError, match=words):
        upload(s3, bucket, tmp_path / name, gallery, subject)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
