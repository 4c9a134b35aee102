"""Subject and photo stores on moto: each test checks the answer and the AWS state behind it."""

from __future__ import annotations

import base64

import boto3
import numpy as np
import pytest
from tests_support import unit_rows

from facegate.errors import (
    ImageTooLargeError,
    InvalidImageError,
    ModelMismatchError,
    StorageError,
    UnknownSubjectError,
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage.clients import aws_client
from facegate.storage.photos import PhotoStore
from facegate.storage.subject_items import decode_cursor, encode_cursor
from facegate.storage.subjects import StoredFace, SubjectStore, table_definition

REGION = "eu-west-1"
BUCKET = "facegate-test"
TABLE = "facegate-test-subjects"
DIM = 128
MODEL = "sface"
SHA = "ab" * 32
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4


@pytest.fixture
def settings() -> Settings:
    """The names ``fresh_aws`` (conftest.py) gives moto's bucket and table."""
    return Settings(bucket=BUCKET, table=TABLE, aws_region=REGION, aws_endpoint_url=None)


@pytest.fixture
def store(ddb, settings) -> SubjectStore:
    return SubjectStore.from_settings(settings)


@pytest.fixture
def photos(s3, settings) -> PhotoStore:
    return PhotoStore.from_settings(settings)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def make_faces(rng: np.random.Generator, subject: str, ids: list[str]) -> list[StoredFace]:
    vectors = unit_rows(rng, len(ids), DIM)
    return [
        StoredFace(
            face_id=face_id,
            embedding=vec,
            image_key=f"enrolments/default/{subject}/{face_id}.jpg",
            bbox=(10.5, 20.25, 110.0, 140.75),
            det_score=0.998,
        )
        for face_id, vec in zip(ids, vectors, strict=True)
    ]


def items_of(ddb, subject: str) -> list[dict]:
    pages = ddb.get_paginator("query").paginate(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"SUBJECT#default#{subject}"}},
    )
    return [item for page in pages for item in page["Items"]]


# --------------------------------------------------------------------------------------
# aws_client and the table
# --------------------------------------------------------------------------------------


def test_aws_client_uses_region_and_endpoint_override(fresh_aws):
    local = Settings(aws_region="eu-central-1", aws_endpoint_url="http://127.0.0.1:5000")
    client = aws_client("s3", local)
    assert client.meta.region_name == "eu-central-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:5000"
    assert client.meta.config.s3 == {"addressing_style": "path"}
    plain = aws_client("dynamodb", Settings(aws_region=REGION, aws_endpoint_url=None))
    assert plain.meta.endpoint_url == f"https://dynamodb.{REGION}.amazonaws.com"


def test_create_table_matches_definition(ddb):
    table = ddb.describe_table(TableName=TABLE)["Table"]
    definition = table_definition(TABLE)
    assert table["KeySchema"] == definition["KeySchema"]
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == {
        "pk": "S",
        "sk": "S",
        "kind": "S",
        "subject_id": "S",
        "faces_pk": "S",
        "faces_sk": "S",
    }
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSEDescription"]["Status"] == "ENABLED"
    subjects, faces = table["GlobalSecondaryIndexes"]
    assert subjects["IndexName"] == "subjects"
    assert subjects["KeySchema"] == definition["GlobalSecondaryIndexes"][0]["KeySchema"]
    assert faces["IndexName"] == "faces"
    assert faces["Projection"] == {
        "ProjectionType": "INCLUDE",
        "NonKeyAttributes": ["embedding", "dim"],
    }


# --------------------------------------------------------------------------------------
# SubjectStore
# --------------------------------------------------------------------------------------


def test_put_faces_creates_subject_and_face_items(store, ddb, rng):
    faces = make_faces(rng, "alice", ["f1", "f2"])
    subject = store.put_faces("alice", faces, MODEL, weights_sha256=SHA, metadata={"name": "A"})

    assert subject.subject_id == "alice"
    assert subject.face_count == 2
    assert subject.model_id == MODEL
    assert subject.metadata == {"name": "A"}
    assert subject.created_at == subject.updated_at
    assert subject.created_at.endswith("Z")

    items = {i["sk"]["S"]: i for i in items_of(ddb, "alice")}
    assert set(items) == {"META", "FACE#f1", "FACE#f2"}
    assert items["META"]["face_count"] == {"N": "2"}
    face = items["FACE#f1"]
    assert face["embedding"]["B"] == faces[0].embedding.astype("<f4").tobytes()
    assert face["dim"] == {"N": str(DIM)}
    assert face["model_id"] == {"S": MODEL}
    assert face["weights_sha256"] == {"S": SHA}
    assert face["image_key"] == {"S": "enrolments/default/alice/f1.jpg"}
    assert [float(v["N"]) for v in face["bbox"]["L"]] == [10.5, 20.25, 110.0, 140.75]
    assert float(face["det_score"]["N"]) == 0.998


def test_get_embeddings_round_trips_bit_exact(store, rng):
    faces = make_faces(rng, "alice", ["f2", "f1", "f3"])
    store.put_faces("alice", faces, MODEL, weights_sha256=SHA)

    embeddings, stored = store.get_embeddings("alice")

    assert embeddings.dtype == np.float32
    assert embeddings.shape == (3, DIM)
    assert [f.face_id for f in stored] == ["f1", "f2", "f3"]
    by_id = {f.face_id: f.embedding for f in faces}
    for row, face in zip(embeddings, stored, strict=True):
        np.testing.assert_array_equal(row, by_id[face.face_id])
        assert face.model_id == MODEL
        assert face.weights_sha256 == SHA
        assert face.bbox == (10.5, 20.25, 110.0, 140.75)
        assert face.det_score == pytest.approx(0.998)
        assert face.created_at is not None


def test_second_put_adds_faces_and_keeps_created_at(store, ddb, rng):
    first = store.put_faces("bob", make_faces(rng, "bob", ["a"]), MODEL, weights_sha256=SHA)
    second = store.put_faces("bob", make_faces(rng, "bob", ["b", "c"]), MODEL, weights_sha256=SHA)

    assert second.face_count == 3
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    assert len(items_of(ddb, "bob")) == 4


def test_put_faces_never_overwrites_a_face(store, ddb, rng):
    original = make_faces(rng, "carol", ["f1"])
    store.put_faces("carol", original, MODEL, weights_sha256=SHA)
    again = make_faces(rng, "carol", ["f9", "f1"])

    with pytest.raises(ValidationError, match="f1"):
        store.put_faces("carol", again, MODEL, weights_sha256=SHA)

    items = {i["sk"]["S"]: i for i in items_of(ddb, "carol")}
    assert set(items) == {"META", "FACE#f1"}, "the transaction must write nothing"
    assert items["META"]["face_count"] == {"N": "1"}
    assert items["FACE#f1"]["embedding"]["B"] == original[0].embedding.astype("<f4").tobytes()


def test_put_faces_refuses_another_model(store, ddb, rng):
    store.put_faces("dave", make_faces(rng, "dave", ["f1"]), MODEL, weights_sha256=SHA)

    with pytest.raises(ModelMismatchError, match="sface"):
        store.put_faces("dave", make_faces(rng, "dave", ["f2"]), "arcface", weights_sha256=SHA)

    items = {i["sk"]["S"]: i for i in items_of(ddb, "dave")}
    assert set(items) == {"META", "FACE#f1"}
    assert items["META"]["model_id"] == {"S": MODEL}


def test_put_faces_refuses_faces_stamped_with_another_model(store, ddb, rng):
    (face,) = make_faces(rng, "erin", ["f1"])
    foreign = StoredFace(face.face_id, face.embedding, face.image_key, model_id="arcface")
    with pytest.raises(ModelMismatchError):
        store.put_faces("erin", [foreign], MODEL, weights_sha256=SHA)
    assert items_of(ddb, "erin") == []


@pytest.mark.parametrize("subject_id", ["", "x" * 129, "a/b", "a b", "a#b", "é", None])
def test_subject_ids_are_validated(store, ddb, rng, subject_id):
    with pytest.raises(ValidationError):
        store.put_faces(subject_id, make_faces(rng, "x", ["f1"]), MODEL, weights_sha256=SHA)
    with pytest.raises(ValidationError):
        store.get_subject(subject_id)
    assert ddb.scan(TableName=TABLE)["Count"] == 0


def test_longest_valid_subject_id_is_accepted(store, rng):
    subject_id = "A-z_0.9@" * 16
    assert len(subject_id) == 128
    subject = store.put_faces(subject_id, make_faces(rng, "x", ["f"]), MODEL, weights_sha256=SHA)
    assert subject.subject_id == subject_id


def _bad_batches(rng: np.random.Generator) -> dict[str, list[StoredFace]]:
    (face,) = make_faces(rng, "x", ["f1"])
    other_dim = StoredFace("f2", unit_rows(rng, 1, 64)[0], face.image_key)
    return {
        "not unit length": [StoredFace("f1", face.embedding * 3, face.image_key)],
        "not finite": [StoredFace("f1", np.full(DIM, np.nan, np.float32), face.image_key)],
        "mixed dims": [face, other_dim],
        "duplicate ids": [face, face],
        "bad face id": [StoredFace("f/1", face.embedding, face.image_key)],
        "no image key": [StoredFace("f1", face.embedding, "")],
        "no faces": [],
        "too many faces": make_faces(rng, "x", [f"f{i}" for i in range(100)]),
    }


@pytest.mark.parametrize("case", list(_bad_batches(np.random.default_rng(0))))
def test_put_faces_validates_faces(store, ddb, rng, case):
    faces = _bad_batches(rng)[case]
    with pytest.raises(ValidationError):
        store.put_faces("frank", faces, MODEL, weights_sha256=SHA)
    assert ddb.scan(TableName=TABLE)["Count"] == 0


@pytest.mark.parametrize("sha", ["not-a-hash", "AB" * 32, ""])
def test_put_faces_validates_weights_sha256(store, ddb, rng, sha):
    with pytest.raises(ValidationError):
        store.put_faces("frank", make_faces(rng, "frank", ["f1"]), MODEL, weights_sha256=sha)
    assert ddb.scan(TableName=TABLE)["Count"] == 0


def test_unknown_subject(store, rng):
    store.put_faces("known", make_faces(rng, "known", ["f1"]), MODEL, weights_sha256=SHA)
    with pytest.raises(UnknownSubjectError):
        store.get_subject("ghost")
    with pytest.raises(UnknownSubjectError):
        store.get_embeddings("ghost")
    with pytest.raises(UnknownSubjectError):
        store.delete_subject("ghost")


def test_list_subjects_pages_through_every_subject_once(store, rng):
    ids = [f"s{i:02d}" for i in range(7)]
    for subject_id in reversed(ids):
        store.put_faces(
            subject_id, make_faces(rng, subject_id, ["a", "b"]), MODEL, weights_sha256=SHA
        )

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page, cursor = store.list_subjects(limit=3, cursor=cursor)
        assert len(page) <= 3
        seen += [s.subject_id for s in page]
        if cursor is None:
            break
    assert seen == ids, "only META items, sorted by id, each once"
    assert all(s.face_count == 2 for s in store.list_subjects(limit=100)[0])


def test_list_subjects_of_an_empty_table(store):
    assert store.list_subjects() == ([], None)


@pytest.mark.parametrize("cursor", ["", "not base64!", "e30", encode_cursor({"pk": {"S": "x"}})])
def test_list_subjects_refuses_forged_cursors(store, cursor):
    with pytest.raises(ValidationError, match="cursor"):
        store.list_subjects(cursor=cursor)


@pytest.mark.parametrize("depth", [40, 100_000])
def test_a_deeply_nested_cursor_is_a_validation_error(depth):
    """A cursor is caller input: JSON nested past Python's recursion limit must not escape
    as a ``RecursionError`` (a 500), nor nested JSON under it reach the shape checks."""
    raw = ("[" * depth + "]" * depth).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(ValidationError, match="invalid cursor"):
        decode_cursor(cursor)


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.5])
def test_list_subjects_validates_limit(store, limit):
    with pytest.raises(ValidationError):
        store.list_subjects(limit=limit)


def test_cursor_round_trip():
    key = {"pk": {"S": "SUBJECT#default#a"}, "sk": {"S": "META"}, "kind": {"S": "SUBJECT"}}
    key["subject_id"] = {"S": "a"}
    cursor = encode_cursor(key)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor
    assert decode_cursor(cursor) == key


def test_all_embeddings_returns_one_row_per_face_of_the_model(store, rng):
    alice = make_faces(rng, "alice", ["f1", "f2"])
    bob = make_faces(rng, "bob", ["f1"])
    store.put_faces("alice", alice, MODEL, weights_sha256=SHA)
    store.put_faces("bob", bob, MODEL, weights_sha256=SHA)
    store.put_faces("zed", make_faces(rng, "zed", ["f1"]), "arcface", weights_sha256=SHA)

    subject_ids, embeddings = store.all_embeddings(MODEL)

    assert sorted(subject_ids) == ["alice", "alice", "bob"]
    assert embeddings.shape == (3, DIM) and embeddings.dtype == np.float32
    expected = {("alice", f.embedding.tobytes()) for f in alice}
    expected |= {("bob", f.embedding.tobytes()) for f in bob}
    got = {(s, row.tobytes()) for s, row in zip(subject_ids, embeddings, strict=True)}
    assert got == expected
    assert store.all_embeddings("unknown-model")[0] == []
    assert store.all_embeddings("unknown-model")[1].shape == (0, 0)


def test_delete_subject_removes_every_item(store, ddb, rng):
    faces = make_faces(rng, "gina", [f"f{i}" for i in range(30)])
    store.put_faces("gina", faces, MODEL, weights_sha256=SHA)
    store.put_faces("gina2", make_faces(rng, "gina2", ["f1"]), MODEL, weights_sha256=SHA)

    image_keys = store.delete_subject("gina")

    assert sorted(image_keys) == sorted(f.image_key for f in faces)
    assert items_of(ddb, "gina") == []
    assert len(items_of(ddb, "gina2")) == 2, "other subjects are untouched"
    with pytest.raises(UnknownSubjectError):
        store.get_subject("gina")
    assert [s.subject_id for s in store.list_subjects()[0]] == ["gina2"]


def test_botocore_errors_become_storage_errors(fresh_aws, settings):
    store = SubjectStore(aws_client("dynamodb", settings), "no-such-table")
    with pytest.raises(StorageError, match="ResourceNotFoundException"):
        store.get_subject("alice")
    with pytest.raises(StorageError):
        store.list_subjects()


# --------------------------------------------------------------------------------------
# PhotoStore
# --------------------------------------------------------------------------------------


def test_put_stores_encrypted_photo_under_private_prefix(photos, s3):
    key = photos.put("alice", "f1", JPEG, "image/jpeg; charset=binary")

    assert key == "enrolments/default/alice/f1.jpg"
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "image/jpeg"
    assert head["ContentLength"] == len(JPEG)
    assert photos.get(key) == JPEG


def test_put_validates_input(photos, s3):
    with pytest.raises(ValidationError):
        photos.put("alice", "f1", JPEG, "text/plain")
    with pytest.raises(ValidationError):
        photos.put("a/b", "f1", JPEG, "image/jpeg")
    with pytest.raises(ValidationError):
        photos.put("alice", "..", b"", "image/png")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_get_missing_photo_is_invalid_image(photos):
    with pytest.raises(InvalidImageError):
        photos.get("enrolments/default/alice/none.jpg")


def _versions_under(s3, prefix: str) -> list[str]:
    listing = s3.list_object_versions(Bucket=BUCKET, Prefix=prefix)
    return [v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])]


@pytest.mark.parametrize("versioned", [True, False])
def test_delete_subject_removes_every_version(photos, s3, versioned):
    if versioned:
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    photos.put("al", "f1", JPEG, "image/jpeg")
    photos.put("al", "f1", JPEG[::-1], "image/jpeg")
    photos.put("al", "f2", JPEG, "image/png")
    photos.put("alice", "f1", JPEG, "image/jpeg")
    if versioned:
        s3.delete_object(Bucket=BUCKET, Key="enrolments/default/al/f2.png")
        assert len(_versions_under(s3, "enrolments/default/al/")) == 4

    removed = photos.delete_subject("al")
    assert removed is not None and removed.rows_removed == 2

    assert _versions_under(s3, "enrolments/default/al/") == []
    assert _versions_under(s3, "enrolments/default/alice/") == ["enrolments/default/alice/f1.jpg"]
    assert photos.delete_subject("al") is None


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        (f"s3://{BUCKET}/uploads/p.jpg", "uploads/p.jpg"),
        (f"s3://{BUCKET}/a/b/c.png", "a/b/c.png"),
        (f"s3://{BUCKET}/", None),
        (f"s3://{BUCKET}", None),
        ("s3://other-bucket/uploads/p.jpg", None),
        (f"s3://{BUCKET}-evil/p.jpg", None),
        (f"https://{BUCKET}.s3.amazonaws.com/p.jpg", None),
        ("", None),
    ],
)
def test_is_own_uri(uri, key):
    photos = PhotoStore(boto3.client("s3", region_name=REGION), BUCKET)
    assert photos.is_own_uri(uri) == key


def test_fetch(photos, s3):
    s3.put_object(Bucket=BUCKET, Key="probes/p.jpg", Body=JPEG)
    uri = f"s3://{BUCKET}/probes/p.jpg"

    assert photos.fetch(uri, max_bytes=len(JPEG)) == JPEG
    with pytest.raises(ImageTooLargeError):
        photos.fetch(uri, max_bytes=len(JPEG) - 1)
    with pytest.raises(InvalidImageError):
        photos.fetch(f"s3://{BUCKET}/probes/missing.jpg", max_bytes=1024)
    with pytest.raises(ValidationError):
        photos.fetch("s3://other-bucket/probes/p.jpg", max_bytes=1024)
    with pytest.raises(ValidationError):
        photos.fetch(f"s3://{BUCKET}/enrolments/default/alice/f1.jpg", max_bytes=1024)


@pytest.mark.parametrize(
    "key",
    [
        "uploads/staff/alice/1.jpg",  # a gallery subject's photo (fault 7)
        "enrolments/default/alice/f1.jpg",
        "jobs/j1/probe.jpg",
        "samples/p.jpg",
        "probes",
        "probes/",
        "probes//p.jpg",
        "probes/./p.jpg",
        "probes/../uploads/staff/alice/1.jpg",
        "Probes/p.jpg",
    ],
)
def test_fetch_reads_the_probes_prefix_only(photos, s3, key):
    """Every other prefix holds photos of enrolled or gallery subjects: naming one as a probe
    would hand their embeddings to any key that may verify."""
    s3.put_object(Bucket=BUCKET, Key=key, Body=JPEG)
    with pytest.raises(ValidationError, match=f"s3://{BUCKET}/probes/") as refused:
        photos.fetch(f"s3://{BUCKET}/{key}", max_bytes=len(JPEG))
    assert refused.value.code == "validation_error"
    s3.put_object(Bucket=BUCKET, Key="probes/staff/alice/1.jpg", Body=JPEG)
    assert photos.fetch(f"s3://{BUCKET}/probes/staff/alice/1.jpg", max_bytes=len(JPEG)) == JPEG


def test_s3_errors_become_storage_errors(fresh_aws):
    photos = PhotoStore(boto3.client("s3", region_name=REGION), "no-such-bucket")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        photos.put("alice", "f1", JPEG, "image/jpeg")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        photos.delete_subject("alice")
