"""Subjects keyed by collection, and the move of a table written before collections.

On moto: the same id in two collections is two people (items, listing, 1:N rows, photos,
deletes); ``migrate_to_collections`` moves legacy subjects, their photos (every version) and
unreferenced legacy photos into ``default``, exactly, resumes after a crash, and a second run
changes nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from tests_support import unit_rows

from facegate.errors import StorageError, UnknownSubjectError
from facegate.settings import Settings
from facegate.storage.migrate import migrate_to_collections
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import StoredFace, SubjectStore

REGION = "eu-west-1"
BUCKET = "facegate-test"
TABLE = "facegate-test-subjects"
SHA = "ab" * 32
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256))


@pytest.fixture
def settings() -> Settings:
    return Settings(bucket=BUCKET, table=TABLE, aws_region=REGION, aws_endpoint_url=None)


@pytest.fixture
def stores(fresh_aws) -> tuple[SubjectStore, PhotoStore]:
    fresh_aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return SubjectStore(fresh_aws.dynamodb, TABLE), PhotoStore(fresh_aws.s3, BUCKET)


def _enrol(subjects: SubjectStore, photos: PhotoStore, subject: str, seed: int) -> np.ndarray:
    key = photos.put(subject, "f1", JPEG + bytes([seed]), "image/jpeg")
    vector = unit_rows(np.random.default_rng(seed), 1, 8)
    face = StoredFace(face_id="f1", embedding=vector[0], image_key=key)
    subjects.put_faces(subject, [face], "sface", weights_sha256=SHA)
    return vector


def _all_keys(s3: Any) -> list[tuple[str, bool]]:
    answer = s3.list_object_versions(Bucket=BUCKET)
    found = [(v["Key"], False) for v in answer.get("Versions", [])]
    return sorted(found + [(m["Key"], True) for m in answer.get("DeleteMarkers", [])])


def _all_items(db: Any) -> list[dict[str, Any]]:
    items = [
        i for page in db.get_paginator("scan").paginate(TableName=TABLE) for i in page["Items"]
    ]
    return sorted(items, key=lambda i: (i["pk"]["S"], i["sk"]["S"]))


def test_the_same_id_in_two_collections_is_two_people(stores, fresh_aws):
    subjects, photos = stores
    lobby_subjects, lobby_photos = subjects.in_collection("lobby"), photos.in_collection("lobby")
    mine = _enrol(subjects, photos, "ann", 1)
    theirs = _enrol(lobby_subjects, lobby_photos, "ann", 2)
    _enrol(lobby_subjects, lobby_photos, "bob", 3)

    assert [s.subject_id for s in subjects.list_subjects()[0]] == ["ann"]
    assert [s.subject_id for s in lobby_subjects.list_subjects()[0]] == ["ann", "bob"]
    assert np.array_equal(subjects.get_embeddings("ann")[0], mine)
    assert np.array_equal(lobby_subjects.get_embeddings("ann")[0], theirs)
    ids, vectors = lobby_subjects.all_embeddings("sface")
    assert ids == ["ann", "bob"] and vectors.shape == (2, 8)
    assert subjects.all_embeddings("sface")[0] == ["ann"]
    assert lobby_subjects.image_keys("ann") == {"enrolments/lobby/ann/f1.jpg"}

    # Deleting lobby's ann leaves default's ann whole.
    assert lobby_subjects.delete_subject("ann") == ["enrolments/lobby/ann/f1.jpg"]
    assert lobby_photos.delete_subject("ann") is not None
    with pytest.raises(UnknownSubjectError):
        lobby_subjects.get_subject("ann")
    assert subjects.get_subject("ann").face_count == 1
    assert ("enrolments/default/ann/f1.jpg", False) in _all_keys(fresh_aws.s3)
    assert not [k for k, _ in _all_keys(fresh_aws.s3) if k.startswith("enrolments/lobby/ann/")]


def _to_legacy(db: Any, s3: Any, subject: str) -> None:
    """Re-key a subject written by this code as the layout before collections wrote it:
    ``SUBJECT#<id>`` items (META ``kind=SUBJECT``), photos at ``enrolments/<id>/``, with an
    older version of the photo kept."""
    pk = f"SUBJECT#default#{subject}"
    answer = db.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": pk}},
    )
    for item in answer["Items"]:
        legacy = {**item, "pk": {"S": f"SUBJECT#{subject}"}}
        if item["sk"]["S"] == "META":
            legacy["kind"] = {"S": "SUBJECT"}
        if "image_key" in item:
            old = item["image_key"]["S"]
            new = old.replace("enrolments/default/", "enrolments/", 1)
            legacy["image_key"] = {"S": new}
            body = s3.get_object(Bucket=BUCKET, Key=old)["Body"].read()
            s3.put_object(Bucket=BUCKET, Key=new, Body=b"an older version")
            s3.put_object(Bucket=BUCKET, Key=new, Body=body, ContentType="image/jpeg")
            for version in s3.list_object_versions(Bucket=BUCKET, Prefix=old)["Versions"]:
                s3.delete_object(Bucket=BUCKET, Key=old, VersionId=version["VersionId"])
        db.put_item(TableName=TABLE, Item=legacy)
        db.delete_item(TableName=TABLE, Key={"pk": item["pk"], "sk": item["sk"]})


def test_a_table_written_before_collections_moves_into_default_exactly_once(
    stores, fresh_aws, monkeypatch
):
    subjects, photos = stores
    db, s3 = fresh_aws.dynamodb, fresh_aws.s3
    vectors = {name: _enrol(subjects, photos, name, n) for n, name in enumerate(["ann", "default"])}
    _enrol(subjects, photos, "bob", 9)  # already in the new layout
    expected_items = _all_items(db)
    for name in ("ann", "default"):
        _to_legacy(db, s3, name)
    s3.put_object(Bucket=BUCKET, Key="enrolments/cat/f9.jpg", Body=JPEG)  # no item names it
    with pytest.raises(UnknownSubjectError):
        subjects.get_subject("ann")

    # A crash after the new items are written, before the legacy ones go: the rerun ends it.
    real_delete = db.delete_item
    monkeypatch.setattr(db, "delete_item", _failing_once(real_delete))
    with pytest.raises(StorageError, match="deleting a legacy item"):
        migrate_to_collections(db, TABLE, s3, BUCKET)
    monkeypatch.setattr(db, "delete_item", real_delete)
    report = migrate_to_collections(db, TABLE, s3, BUCKET)
    assert report.subjects == 2 and report.unreferenced_photos == 1

    assert _all_items(db) == expected_items  # the items as this code writes them, bit for bit
    for name, vector in vectors.items():
        assert np.array_equal(subjects.get_embeddings(name)[0], vector)
        (face,) = subjects.get_embeddings(name)[1]
        assert face.image_key == f"enrolments/default/{name}/f1.jpg"
        assert photos.get(face.image_key) == JPEG + bytes([list(vectors).index(name)])
    assert _all_keys(s3) == sorted(
        [(f"enrolments/default/{n}/f1.jpg", False) for n in ("ann", "bob", "default")]
        + [("enrolments/default/cat/f9.jpg", False)]
    )
    assert [s.subject_id for s in subjects.list_subjects()[0]] == ["ann", "bob", "default"]

    again = migrate_to_collections(db, TABLE, s3, BUCKET)
    assert again.to_dict() == dict.fromkeys(again.to_dict(), 0)
    assert _all_items(db) == expected_items


def _failing_once(real: Any) -> Any:
    calls = {"n": 0}

    def delete_item(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ClientError(
                {
                    "Error": {
                        "Code": "ProvisionedThroughputExceededException",
                        "Message": "throttled",
                    }
                },
                "DeleteItem",
            )
        return real(**kwargs)

    return delete_item
