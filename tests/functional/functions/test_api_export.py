"""``GET /subjects/{id}/export``, the data-subject access route, on real photos and moto: an
enrolled subject's faces and photos, a subject known only to a batch gallery, the tombstone
left by a DELETE, embeddings only when asked, and the key's scope. Each answer is checked
against the schema the app serves."""

from __future__ import annotations

import base64
from typing import Any

import jsonschema
import numpy as np
import pytest

from facegate.gallery.format import GalleryMeta, build_gallery_table, build_rejects_table
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.subjects import SubjectStore

ROUTE = "/subjects/{subject_id}/export"


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
        assert face["image_key"].startswith("enrolments/dsar.alice@example.org/")
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
