"""Keys bound to collections, through HTTP on the real app, real photos and moto.

Two tenants, ``lobby`` and ``office``, each with a subject ``pat`` (two people) and a key
bound to its own collection with every scope; ``default`` holds a third ``pat``, and an
unbound admin key sees everything. Every route of the app is tried with each tenant's key
against the other tenant: a route of a collection (``{collection}``, or ``default`` for the
routes that name none) answers ``404 unknown_collection`` byte for byte as a collection that
does not exist does, a route of the deployment ``403 insufficient_scope``, and nothing
stored changes. The same keys work in their own collection.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from facegate_local.stack import LambdaContext
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from tests_support import repo_root

from app.main import create_app
from app.routers.page import PUBLIC_ROUTES
from facegate.settings import get_settings
from facegate.storage.apikeys import SCOPES, ApiKeyStore
from facegate.storage.clients import aws_client

#: The routes that name no collection and act on ``default`` (written out here, apart from
#: the code's own list, so that a route moved in or out of it is a decision a test sees).
DEFAULT_ROUTES = {
    "POST /compare",
    "POST /identify",
    "POST /embedding",
    "POST /liveness/challenges",
    "POST /liveness/verify",
    "POST /subjects/{subject_id}/faces",
    "POST /enroll",
    "POST /register",
    "GET /subjects",
    "GET /subjects/{subject_id}",
    "DELETE /subjects/{subject_id}",
}
#: The routes that name a collection but belong to the deployment: they write or attach a
#: gallery (written out here too, apart from the code's own list).
GALLERY_ROUTES = {
    "POST /collections/{collection}/export",
    "PUT /collections/{collection}/galleries/{gallery}",
    "DELETE /collections/{collection}/galleries/{gallery}",
}
#: Path parameters other than ``{collection}``: ``pat`` is enrolled in every collection,
#: ``staff`` is the default collection's export, attached to every tenant.
PARAMS = {"subject_id": "pat", "gallery": "staff", "job_id": "job-1", "erasure_id": "erasure-1"}
SCOPE_REFUSAL = {
    "error": {
        "code": "insufficient_scope",
        "message": "this API key is bound to collections; this route belongs to none",
    }
}
TENANTS = ("lobby", "office")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def app_routes() -> list[tuple[str, str]]:
    """Every ``(method, path template)`` of the app but ``GET /health``, found as
    ``test_scopes`` finds them: a new route is tried here without anyone listing it."""
    contexts = [
        c
        for c in iter_route_contexts(create_app().routes)
        if c.path != "/health" and f"GET {c.path}" not in PUBLIC_ROUTES
    ]
    routes = [c.original_route for c in contexts if isinstance(c.original_route, APIRoute)]
    assert len(routes) == len(contexts) and routes
    return sorted((m, r.path) for r in routes for m in r.methods)


def collection_routes() -> list[tuple[str, str]]:
    return [(m, p) for m, p in app_routes() if "{collection}" in p]


def tenant_routes() -> list[tuple[str, str]]:
    """The routes of a collection that a key bound to it may use."""
    return [(m, p) for m, p in collection_routes() if f"{m} {p}" not in GALLERY_ROUTES]


def matches(template: str, path: str) -> bool:
    return re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) is not None


def request_for(
    method: str, template: str, collection: str, photo: Callable[[str], str], model_id: str
) -> tuple[str, dict[str, Any] | None]:
    """A request of the route that would change or reveal something if it were let through
    (an enrolment, an erasure, a new collection, a re-embedding), in ``collection``."""
    path = template.format(collection=collection, **PARAMS)
    if method != "POST":
        return path, None
    if template.endswith("/faces"):
        return path, {"image": photo("person_a_2")}
    if template.endswith("/compare"):
        return path, {"image": photo("person_a_2"), "subject_id": "pat"}
    if template.endswith(("/identify", "/embedding")):
        return path, {"image": photo("person_a_2")}
    if template in ("/enroll", "/register"):
        return path, {"subject_id": "pat", "image": photo("person_a_2")}
    if template == "/collections":
        return path, {"name": "intruder"}
    if template == "/reembed":
        return path, {"target": "stolen", "model_id": model_id}
    if template.endswith("/export"):
        return path, {"gallery": "stolen"}
    return path, None


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def snapshot(aws: Any) -> tuple[list[str], list[tuple[str, str, bool]]]:
    """Everything stored in the subjects table and the bucket (every version and delete
    marker), to show a refused request changed nothing."""
    db, s3 = aws_client("dynamodb", aws), aws_client("s3", aws)
    items: list[str] = []
    kwargs: dict[str, Any] = {"TableName": aws.table, "ConsistentRead": True}
    while True:
        page = db.scan(**kwargs)
        items += [repr(sorted(i.items())) for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    objects = [
        (o["Key"], o["VersionId"], kind == "DeleteMarkers")
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=aws.bucket)
        for kind in ("Versions", "DeleteMarkers")
        for o in page.get(kind, [])
    ]
    return sorted(items), sorted(objects)


@pytest.fixture(scope="module")
def photo(faces_dir) -> Callable[[str], str]:
    return lambda name: b64((faces_dir / f"{name}.jpg").read_bytes())


@pytest.fixture(scope="module")
def store(aws) -> ApiKeyStore:
    return ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)


@pytest.fixture(scope="module")
def clients(api_client, store, photo) -> dict[str, TestClient]:
    """``admin`` (unbound, every scope) and one client per tenant (bound to its collection,
    every scope); ``lobby``'s pat is person A, ``office``'s person B, ``default``'s
    another photo of person B, exported as gallery ``staff`` and attached to both tenants
    (so that a detach, an attach or an export let through would change something)."""
    made = {"admin": api_client(store.create("ops", SCOPES), raise_server_exceptions=False)}
    admin = made["admin"]
    for tenant, face in zip(TENANTS, ("person_a_1", "person_b_1"), strict=True):
        assert admin.post("/collections", json={"name": tenant}).status_code == 201
        enrolled = admin.post(
            f"/collections/{tenant}/subjects/pat/faces", json={"image": photo(face)}
        )
        assert enrolled.status_code == 201, enrolled.text
        key = store.create(f"tenant-{tenant}", SCOPES, collections=[tenant])
        made[tenant] = api_client(key, raise_server_exceptions=False)
    enrolled = admin.post("/subjects/pat/faces", json={"image": photo("person_b_2")})
    assert enrolled.status_code == 201, enrolled.text
    exported = admin.post("/collections/default/export", json={"gallery": "staff"})
    assert exported.status_code == 200 and exported.json()["rows"] == 1, exported.text
    for tenant in TENANTS:
        attached = admin.put(f"/collections/{tenant}/galleries/staff")
        assert attached.json()["galleries"] == ["staff"], attached.text
    return made


def send(client: TestClient, path: str, method: str, body: dict[str, Any] | None) -> Any:
    return client.request(method, path, json=body)


@pytest.mark.parametrize(("tenant", "other"), [TENANTS, TENANTS[::-1]])
def test_every_route_refuses_a_bound_key_outside_its_collection(clients, aws, photo, tenant, other):
    before = snapshot(aws)
    tried = 0
    for method, template in app_routes():
        path, body = request_for(method, template, other, photo, aws.model_id)
        answer = send(clients[tenant], path, method, body)
        where = (tenant, method, path, answer.status_code, answer.text)
        if f"{method} {template}" in GALLERY_ROUTES:
            assert answer.status_code == 403, where
            assert answer.json() == SCOPE_REFUSAL
        elif "{collection}" in template:
            assert answer.status_code == 404, where
            assert answer.json() == error("unknown_collection", f"unknown collection '{other}'")
        elif f"{method} {template}" in DEFAULT_ROUTES:
            # ``default`` always exists, so naming it here says nothing new.
            assert answer.status_code == 404, where
            assert answer.json() == error("unknown_collection", "unknown collection 'default'")
        elif (method, template) == ("GET", "/collections"):
            assert answer.status_code == 200, where
            assert [c["name"] for c in answer.json()["collections"]] == [tenant]
        else:
            assert answer.status_code == 403, where
            assert answer.json() == SCOPE_REFUSAL
        tried += 1
    assert tried == len(app_routes()) > 20
    assert snapshot(aws) == before  # nothing enrolled, erased, created or queued
    # The other tenant's pat is still there, whole, and still the one identify finds.
    admin = clients["admin"]
    shown = admin.get(f"/collections/{other}/subjects/pat")
    assert shown.status_code == 200 and shown.json()["face_count"] == 1
    assert admin.get("/subjects/pat").json()["face_count"] == 1
    assert admin.get("/collections/intruder").json()["error"]["code"] == "unknown_collection"
    assert admin.get(f"/collections/{other}").json()["galleries"] == ["staff"]
    # Health stays open, with a bound key or none.
    assert clients[tenant].get("/health").status_code == 200
    assert TestClient(clients[tenant].app).get("/health").status_code == 200


def test_a_refusal_reads_byte_for_byte_as_a_collection_that_does_not_exist(clients, aws, photo):
    """``annex`` exists, with a subject: the lobby key's answers on it are recorded, then
    ``annex`` is deleted and the unbound admin key asks the same; the two must not differ
    in status, headers or a single byte (nor for ``attic``, never created). The gallery
    routes refuse the lobby key as the deployment's whether ``annex`` exists or not."""
    admin, lobby = clients["admin"], clients["lobby"]
    assert admin.post("/collections", json={"name": "annex"}).status_code == 201
    enrolled = admin.post(
        "/collections/annex/subjects/pat/faces", json={"image": photo("person_a_1")}
    )
    assert enrolled.status_code == 201, enrolled.text

    def answers(
        client: TestClient, collection: str, routes: list[tuple[str, str]] | None = None
    ) -> dict[str, Any]:
        found = {}
        for method, template in tenant_routes() if routes is None else routes:
            path, body = request_for(method, template, collection, photo, aws.model_id)
            answer = send(client, path, method, body)
            found[f"{method} {template}"] = (
                answer.status_code,
                dict(answer.headers),
                answer.content,
            )
        return found

    while_it_exists = answers(lobby, "annex")
    assert {status for status, _, _ in while_it_exists.values()} == {404}
    galleries = [(m, p) for m, p in collection_routes() if f"{m} {p}" in GALLERY_ROUTES]
    assert len(galleries) == len(GALLERY_ROUTES)
    gallery_answers = answers(lobby, "annex", galleries)
    assert {status for status, _, _ in gallery_answers.values()} == {403}
    deleted = admin.delete("/collections/annex")  # with its subject
    assert deleted.status_code == 200 and deleted.json()["subjects_erased"] == 1, deleted.text
    assert answers(admin, "annex") == while_it_exists
    assert answers(lobby, "annex") == while_it_exists
    assert answers(lobby, "attic") == answers(admin, "attic")
    assert answers(lobby, "annex", galleries) == gallery_answers
    assert answers(lobby, "attic", galleries) == gallery_answers


def test_a_bound_key_works_in_its_own_collection(clients, photo, aws):
    lobby = clients["lobby"]
    exercised = []

    def call(method: str, path: str, body: dict[str, Any] | None = None, status: int = 200):
        answer = lobby.request(method, path, json=body)
        assert answer.status_code == status, (method, path, answer.text)
        if status == 403:
            assert answer.json() == SCOPE_REFUSAL
        (route,) = [f"{m} {p}" for m, p in app_routes() if m == method and matches(p, path)]
        exercised.append(route)
        return answer.json()

    home = "/collections/lobby"
    new = call("POST", f"{home}/subjects/newcomer/faces", {"image": photo("impostor_1")}, 201)
    assert new["accepted"] == 1
    listed = call("GET", f"{home}/subjects")
    assert sorted(s["subject_id"] for s in listed["subjects"]) == ["newcomer", "pat"]
    assert call("GET", f"{home}/subjects/pat")["face_count"] == 1
    assert call("POST", f"{home}/compare", {"image": photo("person_a_2"), "subject_id": "pat"})[
        "match"
    ]
    found = call("POST", f"{home}/identify", {"image": photo("person_a_2")})
    assert found["best"]["subject_id"] == "pat"
    assert call("GET", home)["subjects"] == 2
    page = call("GET", "/collections")
    assert [c["name"] for c in page["collections"]] == ["lobby"] and page["next_cursor"] is None
    assert call("DELETE", f"{home}/subjects/newcomer")["scope"] == "collection:lobby"
    # The gallery routes are the deployment's, even in its own collection: refused, and
    # lobby's attachment stays.
    call("POST", f"{home}/export", {"gallery": "lobby-export"}, status=403)
    call("PUT", f"{home}/galleries/staff", status=403)
    call("DELETE", f"{home}/galleries/staff", status=403)
    assert call("GET", home)["galleries"] == ["staff"]
    gallery = aws_client("s3", aws).list_object_versions(
        Bucket=aws.bucket, Prefix="galleries/lobby-export/"
    )
    assert not gallery.get("Versions")
    # It deletes its own collection, and everyone in it, with the receipt.
    deleted = call("DELETE", home)
    assert (deleted["collection"], deleted["subjects_erased"]) == ("lobby", 1)
    assert [(r["subject_id"], r["scope"]) for r in deleted["receipts"]] == [
        ("pat", "collection:lobby")
    ]
    assert sorted(set(exercised)) == sorted(
        {f"{m} {p}" for m, p in collection_routes()} | {"GET /collections"}
    )
    # Made again by the admin, lobby is the key's again, and holds nobody.
    assert clients["admin"].post("/collections", json={"name": "lobby"}).status_code == 201
    gone = lobby.get(f"{home}/subjects/pat")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_subject"
    assert lobby.get(home).json()["subjects"] == 0


def test_a_key_bound_to_default_opens_the_routes_that_name_no_collection(
    api_client, store, clients, photo
):
    key = api_client(store.create("kiosk", SCOPES, collections=["default"]))
    compared = key.post("/compare", json={"image": photo("person_b_1"), "subject_id": "pat"})
    assert compared.status_code == 200 and compared.json()["match"] is True
    found = key.post("/identify", json={"image": photo("person_b_1")})
    assert found.json()["best"]["subject_id"] == "pat"
    assert key.get("/subjects/pat").json()["face_count"] == 1
    assert [c["name"] for c in key.get("/collections").json()["collections"]] == ["default"]
    assert key.get("/collections/default").json()["subjects"] >= 1
    assert key.get("/collections/lobby").json() == error(
        "unknown_collection", "unknown collection 'lobby'"
    )
    assert key.get("/galleries/staff").status_code == 403
    assert key.post("/collections", json={"name": "mine"}).status_code == 403


def test_listing_pages_through_a_bound_keys_own_collections_only(
    api_client, store, clients, monkeypatch
):
    """A bound key's pages hold its collections that exist, in the store's order; its
    cursors name nothing but those (the store's cursor would name the last item read). The
    route narrows by the record the auth dependency read: one key read per request."""
    admin = clients["admin"]
    assert admin.post("/collections", json={"name": "mezzanine"}).status_code == 201
    bound = ["default", "lobby", "office", "nowhere"]
    key = api_client(store.create("auditor", ["admin"], collections=bound))
    reads: list[str] = []
    lookup = ApiKeyStore.lookup

    def counted(self: ApiKeyStore, key: str | None) -> Any:
        reads.append("read")
        return lookup(self, key)

    monkeypatch.setattr(ApiKeyStore, "lookup", counted)
    assert key.get("/collections").status_code == 200 and len(reads) == 1
    for limit in (1, 2, 3):
        names, cursor, pages = [], None, 0
        while True:
            params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
            page = key.get("/collections", params=params)
            assert page.status_code == 200, page.text
            names += [c["name"] for c in page.json()["collections"]]
            cursor, pages = page.json()["next_cursor"], pages + 1
            if cursor is None:
                break
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            named = json.loads(raw)["sk"]["S"].removeprefix("COLLECTION#")
            assert named in {"", *bound}, named
            assert pages < 10
        assert names == ["default", "lobby", "office"], limit
    everything = [c["name"] for c in admin.get("/collections").json()["collections"]]
    assert {"default", "lobby", "office", "mezzanine"} <= set(everything)
    # Either listing's cursor reads in the other; a forged one is the caller's 400.
    first = admin.get("/collections", params={"limit": 2}).json()
    assert [c["name"] for c in first["collections"]] == ["default", "lobby"]
    after = key.get("/collections", params={"cursor": first["next_cursor"]}).json()
    assert [c["name"] for c in after["collections"]] == ["office"]
    assert after["next_cursor"] is None
    forged = key.get("/collections", params={"cursor": "bm90LWEta2V5"})
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "validation_error"


@pytest.fixture
def status_call(aws, store) -> Iterator[Callable[[str], tuple[int, dict[str, Any]]]]:
    """``GET /jobs/{id}`` through the job-status function's real handler (as
    ``test_status_function`` calls it), with a given key."""
    get_settings.cache_clear()
    path = repo_root() / "functions" / "status" / "facegate_status.py"
    spec = importlib.util.spec_from_file_location("facegate_status_tenancy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sample = json.loads((repo_root() / "events" / "get-job-unknown.json").read_text())
    context = LambdaContext("JobStatusFunction", "us-east-1")

    def call(key: str) -> tuple[int, dict[str, Any]]:
        event = copy.deepcopy(sample)
        event["headers"]["x-api-key"] = key
        answer = module.handler(event, context)
        return answer["statusCode"], json.loads(answer["body"])

    yield call
    get_settings.cache_clear()


def test_identify_with_a_key_bound_to_default_searches_defaults_galleries_only(
    api_client, store, clients, photo
):
    """``POST /identify`` names a gallery from one namespace: a key bound to ``default``
    may name only a gallery attached to ``default`` (an unattached one reads as one that
    does not exist), and searches those by default, as ``/collections/default/identify``."""
    kiosk = api_client(store.create("kiosk-galleries", SCOPES, collections=["default"]))
    admin = clients["admin"]
    probe = {"image": photo("person_b_1")}
    refused = kiosk.post("/identify", json={**probe, "gallery": "staff", "subjects": False})
    missing = kiosk.post("/identify", json={**probe, "gallery": "nowhere", "subjects": False})
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "unknown_gallery")
    assert (
        refused.json()["error"]["message"].replace("staff", "nowhere")
        == missing.json()["error"]["message"]
    )
    # The deployment's key may name any gallery, as before collections.
    wide = admin.post("/identify", json={**probe, "gallery": "staff", "subjects": False})
    assert wide.status_code == 200 and wide.json()["best"]["subject_id"] == "pat"
    assert admin.put("/collections/default/galleries/staff").status_code == 200
    try:
        named = kiosk.post("/identify", json={**probe, "gallery": "staff", "subjects": False})
        assert named.status_code == 200 and named.json()["best"]["subject_id"] == "pat"
        by_default = kiosk.post("/identify", json={**probe, "subjects": False})
        assert by_default.json() == named.json()
        assert (
            by_default.json()
            == admin.post("/collections/default/identify", json={**probe, "subjects": False}).json()
        )
    finally:
        assert admin.delete("/collections/default/galleries/staff").status_code == 200


def test_the_job_status_function_refuses_a_bound_key(status_call, store):
    """That function checks keys without saying what a request acts on: a job is the
    deployment's, so a bound key is refused there too, and an unbound one is not."""
    status, body = status_call(store.create("tenant-ops", ["admin"], collections=["lobby"]))
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    status, body = status_call(store.create("ops-2", ["admin"]))
    assert (status, body["error"]["code"]) == (404, "unknown_job")
