"""The app's real answers are the ones its served schema documents: status and body.

``make fuzz`` checks this with schemathesis against the local stack; here a fixed set of
requests (real photos, moto) reaches every error status a client can cause, so a route that
starts answering something its schema does not list fails in ``make test`` too. Each answer
is validated with jsonschema against the schema the app itself serves at ``/openapi.json``.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import jsonschema
import pytest
from PIL import Image

from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def keys(aws) -> dict[str, str]:
    store = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)
    return {"all": store.create("schema"), "verify": store.create("kiosk", ["verify"])}


@pytest.fixture(scope="module")
def client(api_client, keys):
    return api_client(keys["all"], raise_server_exceptions=False)


@pytest.fixture(scope="module")
def schema(client) -> dict[str, Any]:
    return client.get("/openapi.json").json()


@pytest.fixture(scope="module")
def photo(faces_dir):
    return lambda name: b64((faces_dir / f"{name}.jpg").read_bytes())


def _blank_jpeg() -> str:
    """A real JPEG with nothing in it: decodes fine, has no face."""
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, format="JPEG")
    return b64(buffer.getvalue())


def check_documented(schema: dict[str, Any], method: str, route: str, answer: Any) -> None:
    """``answer``'s status is documented for the route and its body is valid for it."""
    responses = schema["paths"][route][method.lower()]["responses"]
    status = str(answer.status_code)
    assert status in responses, (method, route, status, answer.text[:200])
    body_schema = responses[status]["content"]["application/json"]["schema"]
    jsonschema.validate(answer.json(), {**body_schema, "components": schema["components"]})


#: (method, route as documented, path sent, request keyword arguments, expected status)
CASES = [
    ("POST", "/compare", "/compare", {"json": {"image_a": "PHOTO"}}, 400),
    ("POST", "/compare", "/compare", {"json": {"image_a": "%%%", "image_b": "PHOTO"}}, 400),
    ("POST", "/compare", "/compare", {"json": {"image": "PHOTO", "subject_id": "nobody"}}, 404),
    ("POST", "/compare", "/compare", {"json": {"image_a": "PHOTO", "image_b": "PHOTO"}}, 200),
    ("POST", "/compare", "/compare", {"headers": {"x-api-key": "fg_unknown"}}, 401),
    (
        "POST",
        "/embedding",
        "/embedding",
        {"content": b"{}", "headers": {"content-type": "text/plain"}},
        415,
    ),
    ("POST", "/embedding", "/embedding", {"json": {"image": "BLANK"}}, 422),
    ("POST", "/identify", "/identify", {"json": {"image": "PHOTO", "top_k": 0}}, 400),
    ("POST", "/identify", "/identify", {"json": {"image": "PHOTO", "gallery": "none_yet"}}, 404),
    ("GET", "/subjects", "/subjects", {"params": {"limit": 0}}, 400),
    ("GET", "/subjects", "/subjects", {"headers": {"x-api-key": "VERIFY"}}, 403),
    ("GET", "/subjects/{subject_id}", "/subjects/-dash", {}, 400),
    ("GET", "/subjects/{subject_id}", "/subjects/nobody", {}, 404),
    ("DELETE", "/subjects/{subject_id}", "/subjects/nobody", {}, 404),
    ("POST", "/subjects/{subject_id}/faces", "/subjects/alice/faces", {"json": {}}, 400),
    (
        "POST",
        "/subjects/{subject_id}/faces",
        "/subjects/alice/faces",
        {"json": {"image": "BLANK"}},
        201,
    ),
    ("POST", "/register", "/register", {"json": {"image": "PHOTO"}}, 400),
    ("GET", "/galleries/{gallery}", "/galleries/none_yet", {}, 404),
    ("POST", "/galleries/{gallery}/compact", "/galleries/none_yet/compact", {}, 404),
    ("GET", "/galleries/{gallery}/reembed", "/galleries/none_yet/reembed", {}, 404),
    (
        "POST",
        "/galleries/{gallery}/backfill",
        "/galleries/old/backfill",
        {"json": {"prefix": "not-a-folder"}},
        400,
    ),
    (
        "POST",
        "/reembed",
        "/reembed",
        {"content": b"{}", "headers": {"content-type": "text/plain"}},
        415,
    ),
    ("POST", "/reembed", "/reembed", {"json": {"target": ".."}}, 400),
    ("GET", "/jobs/{job_id}", "/jobs/nobody", {}, 404),
    ("GET", "/health", "/health", {}, 200),
]


def _fill(value: Any, photo: str, keys: dict[str, str]) -> Any:
    """The placeholders of a case: a real photo, a blank one, the verify-only key."""
    if isinstance(value, dict):
        return {k: _fill(v, photo, keys) for k, v in value.items()}
    return {"PHOTO": photo, "BLANK": _blank_jpeg(), "VERIFY": keys["verify"]}.get(value, value)


@pytest.mark.parametrize(("method", "route", "path", "kwargs", "status"), CASES)
def test_answers_are_documented(client, schema, photo, keys, method, route, path, kwargs, status):
    answer = client.request(method, path, **_fill(kwargs, photo("person_a_1"), keys))
    assert answer.status_code == status, answer.text[:300]
    check_documented(schema, method, route, answer)
