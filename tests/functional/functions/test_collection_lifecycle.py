"""A collection's life past its subjects, on the real app, real photos and moto: deleted with
everyone in it (a receipt; ``202`` and the jobs worker for a large one, every route of it
``409 collection_deleting`` meanwhile), exported as a Parquet gallery, and searching
galleries attached to it.

Each test runs twice: through FastAPI's TestClient (HTTP) and through the Lambda handler
(``facegate_api.handler``: Mangum, Powertools and the app) with API Gateway v2 events built
from ``events/delete-collection.json``. Names carry the transport, so the two runs share the
module's moto without meeting.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json import dumps, loads
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from facegate_local.stack import LambdaContext
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from tests_support import clear_app_caches, drain_queue

from app import deps
from app.main import create_app
from facegate.batch import wiring
from facegate.gallery.table import gallery_meta_from_schema
from facegate.settings import Settings, get_settings
from facegate.storage import keys as layout
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore

EVENTS = Path(__file__).resolve().parents[3] / "events"
TRANSPORTS = ("http", "lambda")


@dataclass(frozen=True)
class Answer:
    """What the handler answered, read as a TestClient response is."""

    status_code: int
    text: str

    def json(self) -> Any:
        return loads(self.text)


class Gateway:
    """Requests as API Gateway hands them to the API function: the sample event of
    ``DELETE /collections/lobby`` rewritten to another method, path and JSON body."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.sample = loads((EVENTS / "delete-collection.json").read_text())
        self.sent = 0

    def request(self, method: str, path: str, json: dict[str, Any] | None = None) -> Answer:
        import facegate_api

        self.sent += 1
        event = copy.deepcopy(self.sample)
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["requestContext"]["http"]["method"] = method
        event["requestContext"]["requestId"] = f"lifecycle-{self.sent}"
        event["headers"]["x-api-key"] = self.key
        if json is not None:
            event["body"] = dumps(json)
            event["headers"]["content-type"] = "application/json"
        answer = facegate_api.handler(event, LambdaContext("ApiFunction", "us-east-1"))
        assert answer["headers"]["content-type"] == "application/json", answer
        return Answer(answer["statusCode"], answer["body"])

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, json: dict[str, Any] | None = None) -> Answer:
        return self.request("POST", path, json)

    def put(self, path: str) -> Answer:
        return self.request("PUT", path)

    def delete(self, path: str) -> Answer:
        return self.request("DELETE", path)


@pytest.fixture(scope="module")
def stack(aws: Settings) -> Settings:
    """The module's settings with a jobs queue (where large deletions go)."""
    sqs = aws_client("sqs", aws)
    return aws.model_copy(
        update={"jobs_queue_url": sqs.create_queue(QueueName="facegate-jobs")["QueueUrl"]}
    )


@pytest.fixture(scope="module")
def admin_key(aws: Settings) -> str:
    store = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)
    return store.create("ops", ["admin", "enrol", "verify"])


@pytest.fixture
def connect(pipeline: Any, admin_key: str, request: Any) -> Iterator[Callable[[Settings], Any]]:
    """``connect(settings)``: an admin client of the app on ``settings``, over the test's
    transport (``request.param``)."""
    import facegate_api

    transport = request.param
    clear_app_caches()
    overrides = facegate_api.app.dependency_overrides

    def make(settings: Settings) -> Any:
        if transport == "lambda":
            overrides[deps.get_pipeline] = lambda: pipeline
            overrides[get_settings] = lambda: settings
            return Gateway(admin_key)
        app = create_app()
        app.dependency_overrides[deps.get_pipeline] = lambda: pipeline
        app.dependency_overrides[get_settings] = lambda: settings
        return TestClient(app, headers={"x-api-key": admin_key}, raise_server_exceptions=False)

    yield make
    overrides.clear()
    clear_app_caches()


@pytest.fixture(scope="module")
def photo(faces_dir: Path) -> Callable[[str], str]:
    return lambda name: base64.b64encode((faces_dir / f"{name}.jpg").read_bytes()).decode()


def ok(answer: Any, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


SCHEMA = create_app().openapi()


def documented(method: str, route: str, answer: Any) -> Any:
    """``answer``'s body, checked against the schema the app serves for ``route``."""
    responses = SCHEMA["paths"][route][method.lower()]["responses"]
    body_schema = responses[str(answer.status_code)]["content"]["application/json"]["schema"]
    jsonschema.validate(answer.json(), {**body_schema, "components": SCHEMA["components"]})
    return answer.json()


def refused(answer: Any, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code, answer.text
    message: str = answer.json()["error"]["message"]
    return message


def versions(settings: Settings, prefix: str) -> list[str]:
    """Every object version and delete marker under ``prefix``."""
    pages = aws_client("s3", settings).get_paginator("list_object_versions")
    return sorted(
        o["Key"]
        for page in pages.paginate(Bucket=settings.bucket, Prefix=prefix)
        for kind in ("Versions", "DeleteMarkers")
        for o in page.get(kind, [])
    )


def subject_items(settings: Settings, collection: str) -> list[str]:
    """The keys of every item of a subject of ``collection`` in the table."""
    db = aws_client("dynamodb", settings)
    found: list[str] = []
    kwargs: dict[str, Any] = {
        "TableName": settings.table,
        "FilterExpression": "begins_with(pk, :pk)",
        "ExpressionAttributeValues": {":pk": {"S": f"SUBJECT#{collection}#"}},
        "ConsistentRead": True,
    }
    while True:
        page = db.scan(**kwargs)
        found += [f"{i['pk']['S']} {i['sk']['S']}" for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return found
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def gallery_rows(settings: Settings, gallery: str) -> tuple[list[str], str | None]:
    """The subject ids of a built gallery's rows and the scope its footer gives them."""
    body = aws_client("s3", settings).get_object(
        Bucket=settings.bucket, Key=layout.gallery_key(gallery)
    )["Body"]
    table = pq.read_table(pa.BufferReader(body.read()))
    return sorted(table.column("subject_id").to_pylist()), gallery_meta_from_schema(
        table.schema
    ).subject_scope


def enrol(client: Any, collection: str, subject: str, *photos: str) -> None:
    answer = client.post(
        f"/collections/{collection}/subjects/{subject}/faces", json={"images": list(photos)}
    )
    assert ok(answer, 201)["accepted"] == len(photos)


def identify(client: Any, collection: str, image: str, **fields: Any) -> dict[str, Any]:
    found: dict[str, Any] = ok(
        client.post(f"/collections/{collection}/identify", json={"image": image, **fields})
    )
    return found


def best(found: dict[str, Any]) -> str | None:
    return None if found["best"] is None else found["best"]["subject_id"]


def collection_subroutes() -> list[tuple[str, str]]:
    """Every ``(method, path)`` of the app under ``/collections/{collection}/``: a new one is
    tried without anyone listing it."""
    contexts = iter_route_contexts(create_app().routes)
    routes = [c.original_route for c in contexts if isinstance(c.original_route, APIRoute)]
    found = sorted(
        (m, r.path) for r in routes for m in r.methods if r.path.startswith("/collections/{")
    )
    return [(m, p) for m, p in found if p != "/collections/{collection}"]


def request_of(template: str, collection: str, image: str) -> tuple[str, dict[str, Any] | None]:
    """A request of the route that would change or reveal something if let through."""
    path = template.format(collection=collection, subject_id="ann", gallery="spare")
    if template.endswith("/faces"):
        return path, {"image": image}
    if template.endswith("/compare"):
        return path, {"image": image, "subject_id": "ann"}
    if template.endswith("/identify"):
        return path, {"image": image}
    if template.endswith("/export"):
        return path, {"gallery": "spare"}
    return path, None


@pytest.mark.parametrize("connect", TRANSPORTS, indirect=True)
def test_deleting_a_collection_erases_everyone_in_it_with_a_receipt(connect, stack, photo, request):
    t = request.node.callspec.params["connect"]
    client = connect(stack)
    hall, yard = f"hall-{t}", f"yard-{t}"
    for name in (hall, yard):
        ok(client.post("/collections", json={"name": name}), 201)
    enrol(client, hall, "ann", photo("person_a_1"))
    enrol(client, hall, "bob", photo("person_b_1"), photo("person_b_2"))
    enrol(client, yard, "ann", photo("person_a_2"))
    held = versions(stack, layout.collection_prefix(hall))
    assert len(held) == 3
    items = subject_items(stack, hall)

    answer = client.delete(f"/collections/{hall}")
    receipt = documented("DELETE", "/collections/{collection}", answer)
    assert answer.status_code == 200, answer.text
    assert (receipt["collection"], receipt["deleted"], receipt["subjects_erased"]) == (
        hall,
        True,
        2,
    )
    assert receipt["galleries_destroyed"] == []
    # Done in the request: nothing to poll, and no null fields saying so.
    assert "erasure_id" not in receipt and "status" not in receipt
    assert sorted(r["subject_id"] for r in receipt["receipts"]) == ["ann", "bob"]
    assert {r["scope"] for r in receipt["receipts"]} == {f"collection:{hall}"}
    assert all(r["found"] for r in receipt["receipts"])
    # Each receipt names the subject's photo prefix with every version the bucket held
    # there, and every item of theirs; the totals add the receipts up.
    for r in receipt["receipts"]:
        prefix = f"{layout.collection_prefix(hall)}{r['subject_id']}/"
        photos = [x for x in r["removed"] if x["kind"] == "enrolment_photos"]
        assert [x["key"] for x in photos] == [prefix], r["removed"]
        assert photos[0]["versions_deleted"] == len([k for k in held if k.startswith(prefix)])
        rows = [x["rows_removed"] for x in r["removed"] if x["kind"] == "subject_items"]
        mine = [i for i in items if i.startswith(f"SUBJECT#{hall}#{r['subject_id']} ")]
        assert rows == [len(mine)], (r["removed"], items)
    for kind, total in receipt["totals"].items():
        for field, value in total.items():
            assert value == sum(
                r["totals"].get(kind, {}).get(field, 0) for r in receipt["receipts"]
            )
    assert receipt["remaining"]

    assert versions(stack, layout.collection_prefix(hall)) == []
    assert subject_items(stack, hall) == []
    refused(client.get(f"/collections/{hall}"), 404, "unknown_collection")
    refused(client.get(f"/collections/{hall}/subjects/ann"), 404, "unknown_collection")
    refused(client.delete(f"/collections/{hall}"), 404, "unknown_collection")
    # The other collection's ann is someone else, and is whole.
    assert ok(client.get(f"/collections/{yard}/subjects/ann"))["face_count"] == 1
    assert len(versions(stack, layout.collection_prefix(yard))) == 1

    # A collection of the same name made again holds nobody, and takes new enrolments.
    again = ok(client.post("/collections", json={"name": hall}), 201)
    assert (again["subjects"], again["faces"], again["deleting"]) == (0, 0, None)
    for subject in ("ann", "bob"):
        refused(client.get(f"/collections/{hall}/subjects/{subject}"), 404, "unknown_subject")
    assert ok(client.get(f"/collections/{hall}/subjects"))["subjects"] == []
    assert identify(client, hall, photo("person_b_2"))["match"] is False
    enrol(client, hall, "ann", photo("person_a_1"))
    assert best(identify(client, hall, photo("person_a_2"))) == "ann"
    ok(client.delete(f"/collections/{hall}"))
    ok(client.delete(f"/collections/{yard}"))
    refused(client.delete("/collections/default"), 409, "default_collection")


@pytest.mark.parametrize("connect", TRANSPORTS, indirect=True)
def test_a_large_collection_is_deleted_by_the_jobs_worker_and_refuses_every_route_meanwhile(
    connect, stack, photo, pipeline, request
):
    """Over ``collection_delete_inline_max`` the DELETE answers 202 with the collection
    marked; until the worker is done every route of it is ``409 collection_deleting`` and
    nothing is enrolled; the worker erases a batch a message and leaves the receipt at
    ``GET /erasures/{id}``."""
    t = request.node.callspec.params["connect"]
    small = stack.model_copy(
        update={"collection_delete_inline_max": 1, "collection_delete_batch": 1}
    )
    client = connect(small)
    vault = f"vault-{t}"
    ok(client.post("/collections", json={"name": vault}), 201)
    enrol(client, vault, "ann", photo("person_a_1"))
    enrol(client, vault, "bob", photo("person_b_1"))
    held = versions(small, layout.collection_prefix(vault))

    queued = ok(client.delete(f"/collections/{vault}"), 202)
    assert (queued["collection"], queued["deleted"], queued["status"]) == (vault, False, "queued")
    assert queued["subjects"] == 2 and queued["erasure_id"]
    state = ok(client.get(f"/erasures/{queued['erasure_id']}"))
    assert (state["status"], state["collection"]) == ("queued", vault)
    marked = ok(client.get(f"/collections/{vault}"))
    assert marked["deleting"] is not None and marked["subjects"] == 2

    tried = []
    for method, template in collection_subroutes():
        path, body = request_of(template, vault, photo("impostor_1"))
        message = refused(client.request(method, path, json=body), 409, "collection_deleting")
        assert vault in message
        tried.append(f"{method} {template}")
    assert {
        "POST /collections/{collection}/export",
        "POST /collections/{collection}/identify",
    } < set(tried)
    assert versions(small, layout.collection_prefix(vault)) == held  # nothing enrolled
    assert ok(client.get(f"/collections/{vault}"))["subjects"] == 2  # nor erased

    worker = wiring.job_worker(small, lambda settings, **_: pipeline)
    sqs = aws_client("sqs", small)
    assert worker.handle(drain_queue(sqs, small.jobs_queue_url)) == {"batchItemFailures": []}
    running = ok(client.get(f"/erasures/{queued['erasure_id']}"))
    assert (running["status"], running["subjects_erased"], running["subjects_left"]) == (
        "running",
        1,
        1,
    )
    assert ok(client.get(f"/collections/{vault}"))["subjects"] == 1
    assert worker.handle(drain_queue(sqs, small.jobs_queue_url)) == {"batchItemFailures": []}
    assert drain_queue(sqs, small.jobs_queue_url) == {"Records": []}
    done = ok(client.get(f"/erasures/{queued['erasure_id']}"))
    assert done["status"] == "done", done
    receipt = done["receipt"]
    assert (receipt["collection"], receipt["deleted"], receipt["subjects_erased"]) == (
        vault,
        True,
        2,
    )
    removed = receipt["totals"]["enrolment_photos"]
    assert (removed["versions_deleted"], removed["rows_removed"]) == (len(held), len(held))
    assert versions(small, layout.collection_prefix(vault)) == []
    assert subject_items(small, vault) == []
    refused(client.get(f"/collections/{vault}"), 404, "unknown_collection")


@pytest.mark.parametrize("connect", TRANSPORTS, indirect=True)
def test_export_attach_identify_detach(connect, stack, photo, request):
    """``east`` is exported as a gallery and attached to ``west``: identify in west finds
    east's people through it, and its own people still; an erasure in east reaches the
    gallery at once, a re-export brings newcomers; detached, east's people are gone from
    west; deleting east destroys its export."""
    t = request.node.callspec.params["connect"]
    client = connect(stack)
    east, west, void = f"east-{t}", f"west-{t}", f"void-{t}"
    gallery = f"east-x-{t}"
    for name in (east, west, void):
        ok(client.post("/collections", json={"name": name}), 201)
    enrol(client, east, "ann", photo("person_a_1"))
    enrol(client, east, "obi", photo("impostor_1"))
    enrol(client, west, "bea", photo("person_b_1"))

    answer = client.post(f"/collections/{east}/export", json={"gallery": gallery})
    assert answer.status_code == 200, answer.text
    exported = documented("POST", "/collections/{collection}/export", answer)
    assert exported == {
        "collection": east,
        "gallery": gallery,
        "model_id": stack.model_id,
        "key": layout.gallery_key(gallery),
        "rows": 2,
        "subjects": 2,
        "erased_dropped": 0,
        "exported_at": exported["exported_at"],
    }
    assert gallery_rows(stack, gallery) == (["ann", "obi"], f"collection:{east}")

    # Only a new name or the collection's own export; never an empty collection.
    refused(
        client.post(f"/collections/{west}/export", json={"gallery": gallery}),
        409,
        "gallery_exists",
    )
    aws_client("s3", stack).put_object(
        Bucket=stack.bucket, Key=f"uploads/staff-{t}/kim/1.jpg", Body=b"a photo"
    )
    refused(
        client.post(f"/collections/{west}/export", json={"gallery": f"staff-{t}"}),
        409,
        "gallery_exists",
    )
    refused(
        client.post(f"/collections/{void}/export", json={"gallery": f"void-x-{t}"}),
        409,
        "no_enrolled_faces",
    )
    refused(
        client.post("/collections/nowhere/export", json={"gallery": f"nowhere-x-{t}"}),
        404,
        "unknown_collection",
    )
    assert gallery_rows(stack, gallery)[0] == ["ann", "obi"]  # untouched by the refusals

    # Before it is attached west neither finds east's people nor may name the gallery.
    assert identify(client, west, photo("person_a_2"))["match"] is False
    refused(
        client.post(
            f"/collections/{west}/identify", json={"image": photo("person_a_2"), "gallery": gallery}
        ),
        404,
        "unknown_gallery",
    )
    refused(client.put(f"/collections/{west}/galleries/nothing-{t}"), 404, "unknown_gallery")
    refused(client.put(f"/collections/nowhere/galleries/{gallery}"), 404, "unknown_collection")
    ok(client.post("/collections", json={"name": f"old-{t}", "model_id": "sface"}), 201)
    refused(client.put(f"/collections/old-{t}/galleries/{gallery}"), 409, "model_mismatch")

    answer = client.put(f"/collections/{west}/galleries/{gallery}")
    assert answer.status_code == 200, answer.text
    attached = documented("PUT", "/collections/{collection}/galleries/{gallery}", answer)
    assert (attached["name"], attached["galleries"], attached["subjects"]) == (west, [gallery], 1)
    assert ok(client.put(f"/collections/{west}/galleries/{gallery}"))["galleries"] == [gallery]
    assert ok(client.get(f"/collections/{west}"))["galleries"] == [gallery]
    assert best(identify(client, west, photo("person_a_2"))) == "ann"  # through the gallery
    assert best(identify(client, west, photo("person_b_2"))) == "bea"  # its own subject
    assert best(identify(client, west, photo("impostor_1"))) == "obi"
    only = identify(client, west, photo("person_b_2"), gallery=gallery, subjects=False)
    assert only["match"] is False  # bea is not in east's export
    assert best(identify(client, west, photo("person_a_2"), gallery=gallery)) == "ann"
    # Attached to west, not to east: east may not name it.
    refused(
        client.post(
            f"/collections/{east}/identify", json={"image": photo("person_a_2"), "gallery": gallery}
        ),
        404,
        "unknown_gallery",
    )

    # Erasing obi in east erases him from the export, and so from west's identify.
    ok(client.delete(f"/collections/{east}/subjects/obi"))
    assert gallery_rows(stack, gallery)[0] == ["ann"]
    assert identify(client, west, photo("impostor_1"))["match"] is False
    # A newcomer of east is in west once east is exported again.
    enrol(client, east, "ivy", photo("impostor_2"))
    assert identify(client, west, photo("impostor_2"))["match"] is False
    again = ok(client.post(f"/collections/{east}/export", json={"gallery": gallery}))
    assert (again["rows"], again["subjects"]) == (2, 2)
    assert gallery_rows(stack, gallery)[0] == ["ann", "ivy"]
    assert best(identify(client, west, photo("impostor_2"))) == "ivy"
    # The part a re-export writes keeps no older version (it held obi).
    part = versions(stack, f"{layout.gallery_prefix(gallery)}parts/")
    assert len(part) == 1, part

    answer = client.delete(f"/collections/{west}/galleries/{gallery}")
    assert answer.status_code == 200, answer.text
    detached = documented("DELETE", "/collections/{collection}/galleries/{gallery}", answer)
    assert (detached["name"], detached["galleries"]) == (west, [])
    assert ok(client.delete(f"/collections/{west}/galleries/{gallery}"))["galleries"] == []
    assert identify(client, west, photo("person_a_2"))["match"] is False
    assert best(identify(client, west, photo("person_b_2"))) == "bea"
    assert gallery_rows(stack, gallery)[0] == ["ann", "ivy"]  # the gallery itself stays

    deleted = ok(client.delete(f"/collections/{east}"))
    assert (deleted["subjects_erased"], deleted["galleries_destroyed"]) == (2, [gallery])
    assert versions(stack, layout.gallery_prefix(gallery)) == []
    assert versions(stack, layout.export_lineage_key(gallery)) == []
    refused(client.put(f"/collections/{west}/galleries/{gallery}"), 404, "unknown_gallery")
    for name in (west, void, f"old-{t}"):
        ok(client.delete(f"/collections/{name}"))


@pytest.mark.parametrize("connect", TRANSPORTS, indirect=True)
def test_a_collection_is_not_deleted_under_a_job_running_on_its_export(
    connect, stack, photo, request
):
    t = request.node.callspec.params["connect"]
    client = connect(stack)
    dock, gallery = f"dock-{t}", f"dock-x-{t}"
    ok(client.post("/collections", json={"name": dock}), 201)
    enrol(client, dock, "ann", photo("person_a_1"))
    ok(client.post(f"/collections/{dock}/export", json={"gallery": gallery}))
    jobs = JobStore.from_settings(stack)
    assert jobs.create(f"job-{t}", 1, 1, 0, galleries=[gallery])

    refused(client.delete(f"/collections/{dock}"), 409, "collection_busy")
    shown = ok(client.get(f"/collections/{dock}"))
    assert (shown["deleting"], shown["subjects"]) == (None, 1)  # not even marked
    assert best(identify(client, dock, photo("person_a_2"))) == "ann"
    assert gallery_rows(stack, gallery)[0] == ["ann"]

    jobs.finish(f"job-{t}", f"jobs/job-{t}/summary.json", f"jobs/job-{t}/results.parquet", {})
    deleted = ok(client.delete(f"/collections/{dock}"))
    assert (deleted["subjects_erased"], deleted["galleries_destroyed"]) == (1, [gallery])
    assert versions(stack, layout.gallery_prefix(gallery)) == []
