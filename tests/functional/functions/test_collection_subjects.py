"""Subjects within a collection, through HTTP on the real app, real photos and moto: the same
id in two collections is two people, identify in one never sees the other, a delete erases
from its own collection only (with its receipt), deleting a collection erases everyone in it,
and a collection's decision rule applies."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.subjects import SubjectStore


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(api_client, aws):
    admin = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table).create(
        "ops", ["admin", "enrol", "verify"]
    )
    return api_client(admin, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def photo(faces_dir):
    return lambda name: b64((faces_dir / f"{name}.jpg").read_bytes())


def _ok(answer: Any, status: int = 200) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    return answer.json()


def test_two_collections_hold_two_people_of_one_id(client, photo, aws):
    _ok(client.post("/collections", json={"name": "lobby"}), 201)
    lobby = "/collections/lobby"
    enrolled = _ok(
        client.post(f"{lobby}/subjects/pat/faces", json={"image": photo("person_a_1")}), 201
    )
    assert enrolled["accepted"] == 1
    _ok(client.post("/subjects/pat/faces", json={"image": photo("person_b_1")}), 201)

    # Each collection's pat is its own person: compare and identify see only their own.
    match = _ok(
        client.post(f"{lobby}/compare", json={"image": photo("person_a_2"), "subject_id": "pat"})
    )
    assert match["match"] is True
    other = _ok(client.post("/compare", json={"image": photo("person_a_2"), "subject_id": "pat"}))
    assert other["match"] is False
    found = _ok(client.post(f"{lobby}/identify", json={"image": photo("person_a_2")}))
    assert found["best"]["subject_id"] == "pat"
    assert _ok(client.post("/identify", json={"image": photo("person_a_2")}))["match"] is False
    assert (
        _ok(client.post(f"{lobby}/identify", json={"image": photo("person_b_2")}))["match"] is False
    )

    listed = _ok(client.get(f"{lobby}/subjects"))
    assert [s["subject_id"] for s in listed["subjects"]] == ["pat"]
    assert _ok(client.get(f"{lobby}/subjects/pat"))["face_count"] == 1
    shown = _ok(client.get(f"{lobby}"))
    assert (shown["subjects"], shown["faces"]) == (1, 1)
    assert _ok(client.get("/collections/default"))["subjects"] >= 1

    # A subject's delete is an erasure in the collection's own scope, and the default
    # collection's pat stays whole.
    erased = _ok(client.delete(f"{lobby}/subjects/pat"))
    assert erased["scope"] == "collection:lobby" and erased["deleted_faces"] == 1
    assert client.get(f"{lobby}/subjects/pat").json()["error"]["code"] == "unknown_subject"
    assert SubjectStore(aws_client("dynamodb", aws), aws.table).get_subject("pat").face_count == 1
    s3 = aws_client("s3", aws)
    left = s3.list_object_versions(Bucket=aws.bucket, Prefix="enrolments/lobby/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")

    # A collection that holds someone is deleted with them: one erasure receipt each, in its
    # scope; the default collection's pat is untouched again.
    for subject, face in (("kim", "impostor_1"), ("pat", "person_a_1")):
        _ok(client.post(f"{lobby}/subjects/{subject}/faces", json={"image": photo(face)}), 201)
    held = s3.list_object_versions(Bucket=aws.bucket, Prefix="enrolments/lobby/")["Versions"]
    assert len(held) == 2
    deleted = _ok(client.delete(lobby))
    assert (deleted["collection"], deleted["deleted"], deleted["subjects_erased"]) == (
        "lobby",
        True,
        2,
    )
    assert sorted(r["subject_id"] for r in deleted["receipts"]) == ["kim", "pat"]
    assert {r["scope"] for r in deleted["receipts"]} == {"collection:lobby"}
    assert deleted["totals"]["enrolment_photos"]["versions_deleted"] == len(held)
    left = s3.list_object_versions(Bucket=aws.bucket, Prefix="enrolments/lobby/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")
    assert client.get(lobby).json()["error"]["code"] == "unknown_collection"
    assert SubjectStore(aws_client("dynamodb", aws), aws.table).get_subject("pat").face_count == 1
    # Made again, lobby holds nobody: its old subjects are gone, not hidden.
    _ok(client.post("/collections", json={"name": "lobby"}), 201)
    for subject in ("kim", "pat"):
        gone = client.get(f"{lobby}/subjects/{subject}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_subject"
    assert _ok(client.get(f"{lobby}/subjects"))["subjects"] == []
    assert (
        _ok(client.post(f"{lobby}/identify", json={"image": photo("person_a_2")}))["match"] is False
    )
    assert _ok(client.delete(lobby))["subjects_erased"] == 0
    assert _ok(client.delete("/subjects/pat"))["deleted_faces"] == 1


def test_a_collection_decides_at_its_own_rule_and_unknown_ones_are_404(client, photo):
    _ok(client.post("/collections", json={"name": "strict", "threshold": 0.99}), 201)
    _ok(
        client.post("/collections/strict/subjects/ann/faces", json={"image": photo("person_a_1")}),
        201,
    )
    body = {"image": photo("person_a_2"), "subject_id": "ann"}
    strict = _ok(client.post("/collections/strict/compare", json=body))
    assert strict["threshold"] == pytest.approx(0.99) and strict["match"] is False
    relaxed = _ok(client.post("/collections/strict/compare", json={**body, "threshold": 0.6}))
    assert relaxed["match"] is True
    for method, path in (
        ("post", "/collections/nowhere/identify"),
        ("get", "/collections/nowhere/subjects"),
        ("delete", "/collections/nowhere/subjects/ann"),
    ):
        answer = getattr(client, method)(
            path, **({"json": {"image": photo("person_a_2")}} if method == "post" else {})
        )
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_collection"
    _ok(client.delete("/collections/strict/subjects/ann"))
    _ok(client.delete("/collections/strict"))
