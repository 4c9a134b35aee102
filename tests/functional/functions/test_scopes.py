"""Scoped API keys and ``s3://`` probes on the real app, real photos and moto (fault 7).

A key holds one or more of ``verify`` (compare, identify, embedding), ``enrol`` (add
subjects and faces) and ``admin`` (read and delete subjects, galleries, jobs, re-embedding,
the schema); a key without the route's scope is ``403 insufficient_scope``, no key, an
unknown or an expired one ``401 unauthorized``. Photos by reference come from ``probes/``
only: a gallery upload named as a probe would give its subject's embedding to anyone who
may verify.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from app import deps
from app.deps import get_pipeline
from app.main import create_app
from app.routers.page import PUBLIC_ROUTES
from facegate.settings import get_settings
from facegate.storage.apikeys import ROUTE_SCOPES, ApiKeyStore, hash_key
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import to_attributes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def keys(aws) -> dict[str, str]:
    store = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)
    made = {
        "verify": store.create("kiosk", ["verify"]),
        "enrol": store.create("front-desk", ["enrol"]),
        "admin": store.create("ops", ["admin"]),
        "expired": store.create("old", ["verify", "enrol", "admin"]),
    }
    past = int((datetime.now(UTC) - timedelta(minutes=1)).timestamp())
    aws_client("dynamodb", aws).update_item(  # as if its expiry had passed, before the TTL
        TableName=aws.keys_table,
        Key=to_attributes({"pk": hash_key(made["expired"])}),
        UpdateExpression="SET expires_at = :t",
        ExpressionAttributeValues=to_attributes({":t": past}),
    )
    return made


@pytest.fixture(scope="module")
def client(pipeline, aws):
    deps._stores.cache_clear()  # clients made under another module's moto
    app = create_app()
    app.dependency_overrides[get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: aws
    yield TestClient(app, raise_server_exceptions=False)
    deps._stores.cache_clear()


@pytest.fixture(scope="module")
def photo(faces_dir):
    return lambda name: (faces_dir / f"{name}.jpg").read_bytes()


def as_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def refused(answer, status: int = 403, code: str = "insufficient_scope") -> bool:
    return answer.status_code == status and answer.json()["error"]["code"] == code


#: One request per route that needs a scope: (method, path, JSON body or None).
REQUESTS = {
    "enrol": [
        ("POST", "/subjects/newcomer/faces", {"image": "PHOTO"}),
        ("POST", "/enroll", {"subject_id": "newcomer", "image": "PHOTO"}),
        ("POST", "/register", {"subject_id": "newcomer", "image": "PHOTO"}),
        ("POST", "/collections/lobby/subjects/newcomer/faces", {"image": "PHOTO"}),
    ],
    "admin": [
        ("GET", "/subjects", None),
        ("GET", "/subjects/resident", None),
        ("DELETE", "/subjects/resident", None),
        ("GET", "/subjects/resident/export", None),
        ("POST", "/collections", {"name": "lobby"}),
        ("GET", "/collections", None),
        ("GET", "/collections/lobby", None),
        ("DELETE", "/collections/lobby", None),
        ("GET", "/collections/lobby/subjects", None),
        ("GET", "/collections/lobby/subjects/resident", None),
        ("DELETE", "/collections/lobby/subjects/resident", None),
        ("POST", "/collections/lobby/export", {"gallery": "lobby-export"}),
        ("PUT", "/collections/lobby/galleries/staff", None),
        ("DELETE", "/collections/lobby/galleries/staff", None),
        ("GET", "/galleries/staff", None),
        ("DELETE", "/galleries/staff/subjects/resident", None),
        ("POST", "/galleries/staff/compact", None),
        ("POST", "/galleries/staff/backfill", {"prefix": "archive/"}),
        ("POST", "/reembed", {"target": "staff-v2", "model_id": "sface"}),
        ("GET", "/galleries/staff-v2/reembed", None),
        ("GET", "/jobs/job-1", None),
        ("GET", "/erasures/erasure-1", None),
        ("GET", "/openapi.json", None),
        ("GET", "/docs", None),
        ("GET", "/redoc", None),
    ],
    "verify": [
        ("POST", "/compare", {"image_a": "PHOTO", "image_b": "PHOTO"}),
        ("POST", "/identify", {"image": "PHOTO"}),
        ("POST", "/embedding", {"image": "PHOTO"}),
        ("POST", "/collections/lobby/compare", {"image_a": "PHOTO", "image_b": "PHOTO"}),
        ("POST", "/collections/lobby/identify", {"image": "PHOTO"}),
        ("POST", "/liveness/challenges", None),
        (
            "POST",
            "/liveness/verify",
            {"challenge_id": "0" * 32, "subject_id": "resident", "frames": []},
        ),
    ],
}


def send(client, key: str, method: str, path: str, body, photo_b64: str):
    if body is not None:
        body = {k: photo_b64 if v == "PHOTO" else v for k, v in body.items()}
    return client.request(method, path, json=body, headers=as_key(key))


def test_every_route_but_health_needs_a_listed_scope():
    """One mapping says what each route needs; a route left out of it would be refused to
    every key, so the mapping and the app's routes must be the same set, and the requests
    below exercise each route under the scope the mapping gives it."""
    contexts = [
        c
        for c in iter_route_contexts(create_app().routes)
        if c.path != "/health" and f"GET {c.path}" not in PUBLIC_ROUTES
    ]
    # The dependency reads the matched route's own path: no router may add a prefix to it.
    assert all(c.path == c.original_route.path for c in contexts)
    routes = [c.original_route for c in contexts if isinstance(c.original_route, APIRoute)]
    assert len(routes) == len(contexts)
    assert {f"{m} {r.path}" for r in routes for m in r.methods} == set(ROUTE_SCOPES)
    exercised = {}
    for scope, rows in REQUESTS.items():
        for method, path, _ in rows:
            (route,) = [r for r in routes if method in r.methods and r.path_regex.match(path)]
            exercised[f"{method} {route.path}"] = scope
    assert exercised == ROUTE_SCOPES


@pytest.mark.parametrize("holder", ["verify", "enrol", "admin"])
def test_a_key_is_refused_every_route_of_the_other_scopes(client, keys, photo, holder):
    """403 before the route runs: nothing is enrolled, deleted, queued or described."""
    image = b64(photo("person_b_1"))
    for scope, rows in REQUESTS.items():
        if scope == holder:
            continue
        for method, path, body in rows:
            answer = send(client, keys[holder], method, path, body, image)
            assert refused(answer), (holder, method, path, answer.status_code, answer.text)
            assert f"'{scope}' scope" in answer.json()["error"]["message"]


def test_each_scope_opens_its_own_routes(client, keys, photo):
    enrolled = client.post(
        "/subjects/resident/faces",
        json={"image": b64(photo("person_a_1"))},
        headers=as_key(keys["enrol"]),
    )
    assert enrolled.status_code == 201, enrolled.text

    verify = as_key(keys["verify"])
    pair = {"image_a": b64(photo("person_b_1")), "image_b": b64(photo("person_b_2"))}
    compared = client.post("/compare", json=pair, headers=verify)
    assert compared.status_code == 200 and compared.json()["match"] is True
    found = client.post("/identify", json={"image": b64(photo("person_a_2"))}, headers=verify)
    assert found.status_code == 200 and found.json()["best"]["subject_id"] == "resident"

    admin = as_key(keys["admin"])
    assert client.get("/subjects/resident", headers=admin).status_code == 200
    assert client.get("/openapi.json", headers=admin).json()["info"]["title"] == "FaceGate"
    assert client.delete("/subjects/resident", headers=admin).status_code == 200
    assert refused(client.get("/subjects/resident", headers=admin), 404, "unknown_subject")


def test_missing_unknown_and_expired_keys_are_401(client, keys, photo):
    pair = {"image_a": b64(photo("person_b_1")), "image_b": b64(photo("person_b_2"))}
    for headers in ({}, as_key(""), as_key("fg_not-a-key"), as_key(keys["expired"])):
        for method, path, body in (("POST", "/compare", pair), ("GET", "/subjects", None)):
            answer = client.request(method, path, json=body, headers=headers)
            assert refused(answer, 401, "unauthorized"), (headers, path, answer.text)
    assert client.get("/health").status_code == 200  # no key needed


def test_probes_by_reference_come_from_the_probes_prefix_only(client, keys, aws, photo):
    """``POST /embedding`` of a gallery upload by reference gave that subject's embedding to
    any key; now only ``probes/`` may be named, in JSON and in multipart alike."""
    s3 = aws_client("s3", aws)
    for key in ("uploads/staff/alice/1.jpg", "probes/alice.jpg"):
        s3.put_object(Bucket=aws.bucket, Key=key, Body=photo("person_a_1"))
    verify = as_key(keys["verify"])
    gallery_photo = f"s3://{aws.bucket}/uploads/staff/alice/1.jpg"
    for answer in (
        client.post("/embedding", json={"image": gallery_photo}, headers=verify),
        client.post(  # multipart: a file part makes httpx send the form as multipart
            "/embedding", data={"image": gallery_photo}, files={"x": ("x", b"")}, headers=verify
        ),
        client.post(
            "/subjects/alice/faces",
            json={"images": [gallery_photo]},
            headers=as_key(keys["enrol"]),
        ),
    ):
        assert refused(answer, 400, "validation_error"), answer.text
        assert f"s3://{aws.bucket}/probes/" in answer.json()["error"]["message"]
    probe = client.post(
        "/embedding", json={"image": f"s3://{aws.bucket}/probes/alice.jpg"}, headers=verify
    )
    assert probe.status_code == 200, probe.text
    assert len(probe.json()["faces"]) == 1
