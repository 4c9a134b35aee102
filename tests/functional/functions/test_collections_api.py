"""``/collections`` on the real app against moto, with real API keys: through FastAPI's
TestClient and once through the Lambda handler with an API Gateway v2 event from events/.

Each answer is checked against the schema the app serves, and, where it matters, against
the item in DynamoDB behind it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app import deps
from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import from_attributes, to_attributes

EVENTS = Path(__file__).resolve().parents[3] / "events"


@pytest.fixture(scope="module")
def keys(aws) -> dict[str, str]:
    store = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)
    return {
        "admin": store.create("ops", ["admin"]),
        "verify": store.create("kiosk", ["verify"]),
        "enrol": store.create("front-desk", ["enrol"]),
    }


@pytest.fixture(scope="module")
def client(api_client, keys):
    return api_client(keys["admin"], raise_server_exceptions=False)


@pytest.fixture(scope="module")
def schema(client) -> dict[str, Any]:
    return client.get("/openapi.json").json()


@pytest.fixture
def clean(client):
    """Every stored collection deleted before the test (the module shares one moto)."""
    for collection in client.get("/collections", params={"limit": 1000}).json()["collections"]:
        if collection["name"] != "default":
            assert client.delete(f"/collections/{collection['name']}").status_code == 200
    return client


def documented(schema: dict[str, Any], method: str, route: str, answer: Any) -> Any:
    """``answer``'s body as the schema documents it for ``route`` and its status."""
    responses = schema["paths"][route][method.lower()]["responses"]
    status = str(answer.status_code)
    assert status in responses, (method, route, status, answer.text[:200])
    body_schema = responses[status]["content"]["application/json"]["schema"]
    jsonschema.validate(answer.json(), {**body_schema, "components": schema["components"]})
    return answer.json()


def error_of(answer: Any, status: int) -> dict[str, str]:
    assert answer.status_code == status, answer.text
    return answer.json()["error"]


def item(aws, name: str) -> dict[str, Any] | None:
    found = (
        aws_client("dynamodb", aws)
        .get_item(
            TableName=aws.table,
            Key=to_attributes({"pk": "COLLECTIONS", "sk": f"COLLECTION#{name}"}),
            ConsistentRead=True,
        )
        .get("Item")
    )
    return None if found is None else from_attributes(found)


def test_create_then_get_answers_the_stored_collection(clean, schema, aws):
    answer = clean.post(
        "/collections",
        json={"name": "lobby", "description": "lobby kiosks", "far": 0.001, "multi_face": "reject"},
    )
    assert answer.status_code == 201, answer.text
    created = documented(schema, "POST", "/collections", answer)
    assert created == {
        "name": "lobby",
        "model_id": aws.model_id,  # the deployment's, when none is named
        "description": "lobby kiosks",
        "threshold": None,
        "far": 0.001,
        "multi_face": "reject",
        "created_at": created["created_at"],
        "galleries": [],
        "deleting": None,
        "subjects": 0,
        "faces": 0,
    }
    stored = item(aws, "lobby")
    assert stored is not None and stored["created_at"] == created["created_at"]
    assert (stored["model_id"], stored["multi_face"], "threshold" in stored) == (
        "sface+dlib",
        "reject",
        False,
    )
    got = clean.get("/collections/lobby")
    assert documented(schema, "GET", "/collections/{collection}", got) == created


def test_names_are_taken_once_and_default_always(clean, schema, aws):
    first = clean.post(
        "/collections", json={"name": "lobby", "threshold": 0.5, "model_id": "sface"}
    )
    assert first.status_code == 201 and first.json()["model_id"] == "sface"
    for body in ({"name": "lobby"}, {"name": "default", "far": 0.01}):
        again = clean.post("/collections", json=body)
        assert error_of(again, 409)["code"] == "collection_exists"
        documented(schema, "POST", "/collections", again)
    assert item(aws, "lobby")["threshold"] == 0.5  # the first create's, untouched
    assert item(aws, "default") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "lobby", "model_id": "resnet9000"}, "model 'resnet9000' is not installed"),
        ({"name": "lobby", "far": 0.05}, "calibrated FARs: 0.001, 0.01"),
        ({"name": "lobby", "far": 0.01, "threshold": 0.5}, "not both"),
        ({"name": "lobby", "threshold": 2}, "threshold"),
        ({"name": "lobby", "multi_face": "biggest"}, "multi_face"),
        ({"name": "lobby", "description": "x" * 257}, "description"),
        ({"name": "lobby", "treshold": 0.5}, "treshold"),
        ({"name": "-lobby"}, "collection must be"),
        ({"description": "no name"}, "name"),
    ],
)
def test_invalid_bodies_are_400_and_store_nothing(clean, schema, aws, body, message):
    """A body FastAPI cannot parse is this app's ``400 validation_error`` (never FastAPI's
    422, which only the photo routes' face errors answer); so is a rule that could not be
    applied (a model not installed, a FAR the card has no calibration for)."""
    answer = clean.post("/collections", json=body)
    error = error_of(answer, 400)
    assert error["code"] == "validation_error" and message in error["message"], error
    documented(schema, "POST", "/collections", answer)
    assert item(aws, "lobby") is None


def test_a_body_that_is_not_json_is_415(clean, schema):
    answer = clean.post(
        "/collections", content=b'{"name": "lobby"}', headers={"content-type": "text/plain"}
    )
    assert error_of(answer, 415)["code"] == "unsupported_media_type"
    documented(schema, "POST", "/collections", answer)


def test_unknown_collections_are_404(clean, schema):
    for method in ("GET", "DELETE"):
        answer = clean.request(method, "/collections/nothing")
        error = error_of(answer, 404)
        assert error == {"code": "unknown_collection", "message": "unknown collection 'nothing'"}
        documented(schema, method, "/collections/{collection}", answer)
    assert error_of(clean.get("/collections/-x"), 400)["code"] == "validation_error"


def test_list_pages_default_first_with_the_enrolled_counts(
    api_client, clean, schema, keys, faces_dir
):
    photo = base64.b64encode((faces_dir / "person_a_1.jpg").read_bytes()).decode()
    enrolled = api_client(keys["enrol"]).post("/subjects/counted/faces", json={"image": photo})
    assert enrolled.status_code == 201, enrolled.text
    try:
        names = ["garage", "Annex", "lobby", "b2"]
        for name in names:
            assert clean.post("/collections", json={"name": name}).status_code == 201
        listed, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = documented(
                schema, "GET", "/collections", clean.get("/collections", params=params)
            )
            assert len(page["collections"]) <= 2
            listed += page["collections"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [c["name"] for c in listed] == ["default", *sorted(names)]
        default = listed[0]
        assert (default["subjects"], default["faces"], default["created_at"]) == (1, 1, None)
        assert all((c["subjects"], c["faces"]) == (0, 0) for c in listed[1:])
        described = clean.get("/collections/default").json()
        assert described == default
        assert error_of(clean.get("/collections", params={"cursor": "e30"}), 400)["code"] == (
            "validation_error"
        )
        assert error_of(clean.get("/collections", params={"limit": 0}), 400)["code"] == (
            "validation_error"
        )
    finally:
        assert clean.delete("/subjects/counted").status_code == 200


def test_delete_answers_a_receipt_and_never_deletes_default(clean, schema, aws):
    assert clean.post("/collections", json={"name": "lobby"}).status_code == 201
    deleted = documented(
        schema, "DELETE", "/collections/{collection}", clean.delete("/collections/lobby")
    )
    assert (deleted["collection"], deleted["deleted"], deleted["subjects_erased"]) == (
        "lobby",
        True,
        0,
    )
    assert deleted["receipts"] == [] and deleted["galleries_destroyed"] == []
    assert item(aws, "lobby") is None
    assert error_of(clean.get("/collections/lobby"), 404)["code"] == "unknown_collection"
    refused = clean.delete("/collections/default")
    assert error_of(refused, 409)["code"] == "default_collection"
    documented(schema, "DELETE", "/collections/{collection}", refused)
    assert clean.get("/collections/default").status_code == 200


@pytest.mark.parametrize("holder", ["verify", "enrol"])
def test_keys_without_the_admin_scope_can_neither_create_nor_read(
    api_client, clean, keys, aws, holder
):
    other = api_client(keys[holder], raise_server_exceptions=False)
    for method, path, body in (
        ("POST", "/collections", {"name": "lobby"}),
        ("GET", "/collections", None),
        ("GET", "/collections/default", None),
        ("DELETE", "/collections/default", None),
    ):
        answer = other.request(method, path, json=body)
        error = error_of(answer, 403)
        assert error["code"] == "insufficient_scope" and "'admin' scope" in error["message"]
    assert item(aws, "lobby") is None
    no_key = api_client("", raise_server_exceptions=False).get("/collections")
    assert error_of(no_key, 401)["code"] == "unauthorized"


@dataclass(frozen=True)
class LambdaContext:
    """What Powertools' ``inject_lambda_context`` reads from the real context."""

    aws_request_id: str
    function_name: str = "facegate-dev-ApiFunction"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:facegate-dev-ApiFunction"
    )


def test_the_sample_events_through_the_lambda_handler(clean, pipeline, aws, keys):
    """``events/create-collection.json`` and its companions as API Gateway hands them to
    the function: Mangum, Powertools and the app, as on Lambda."""
    import facegate_api

    overrides = facegate_api.app.dependency_overrides
    overrides[deps.get_pipeline] = lambda: pipeline
    overrides[get_settings] = lambda: aws
    answers = {}
    try:
        for name in (
            "create-collection.json",
            "list-collections.json",
            "get-collection-unknown.json",
            "delete-collection.json",
        ):
            event = json.loads((EVENTS / name).read_text())
            event["headers"]["x-api-key"] = keys["admin"]
            answer = facegate_api.handler(event, LambdaContext(aws_request_id=f"req-{name}"))
            answers[name] = (answer["statusCode"], json.loads(answer["body"]))
    finally:
        overrides.clear()
    created = answers["create-collection.json"]
    assert created[0] == 201 and (created[1]["name"], created[1]["far"]) == ("lobby", 0.001)
    listed = answers["list-collections.json"]
    assert listed[0] == 200 and [c["name"] for c in listed[1]["collections"]] == [
        "default",
        "lobby",
    ]
    assert answers["get-collection-unknown.json"] == (
        404,
        {"error": {"code": "unknown_collection", "message": "unknown collection 'nothing'"}},
    )
    assert answers["delete-collection.json"][0] == 200 and item(aws, "lobby") is None
