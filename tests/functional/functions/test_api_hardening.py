"""Hostile requests through the real app, against moto: each gets a JSON error with a stable
code, nothing is written for it, and no request can stall the others.

The clients here do not re-raise server exceptions, so a request the app fails to answer
shows as the plain-text 500 a caller would see instead of failing inside the test client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import botocore.client
import httpx
import pytest
from fastapi.testclient import TestClient
from mangum import Mangum
from PIL import Image
from tests_support import run_on_private_loop

from app import deps
from app.main import create_app
from facegate.errors import StorageError
from facegate.pipeline import face_pipeline
from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client

EVENTS = Path(__file__).resolve().parents[3] / "events"
#: Far past Python's recursion limit: ``json.loads`` raises ``RecursionError`` on it.
DEEP = 20_000
FORGED_IDS = ("%2E%2E", "%2E", "alice%0A", "-rf", "@home", ".hidden")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def api_key(aws) -> str:
    return ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table).create("hardening")


@pytest.fixture
def app(pipeline, aws):
    """The real app on moto; the stores are cached per settings value, so the clients made
    under another module's moto are dropped first."""
    deps._stores.cache_clear()
    deps._gallery_service.cache_clear()
    app = create_app()
    app.dependency_overrides[deps.get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: aws
    yield app
    deps._stores.cache_clear()
    deps._gallery_service.cache_clear()


@pytest.fixture
def client(app, api_key):
    return TestClient(app, headers={"x-api-key": api_key}, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def photo(faces_dir):
    return lambda name: (faces_dir / f"{name}.jpg").read_bytes()


def server_logs(caplog: pytest.LogCaptureFixture) -> str:
    """Every record the app, Mangum and the libraries logged (not the test client's own),
    with all its attributes: what would reach CloudWatch."""
    records = [r for r in caplog.records if not r.name.startswith("httpx")]
    return " ".join(f"{r.getMessage()} {vars(r)}" for r in records)


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json", answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    return error


# -- ids (fault 9, 10) -------------------------------------------------------------------


def test_forged_ids_are_refused_before_anything_is_written(client, photo, aws):
    image = b64(photo("person_a_1"))
    for forged in FORGED_IDS:
        enrolled = client.post(f"/subjects/{forged}/faces", json={"image": image})
        assert_error(enrolled, 400, "validation_error")
        for path in (f"/subjects/{forged}", f"/galleries/{forged}", f"/jobs/{forged}"):
            assert_error(client.get(path), 400, "validation_error")
        assert_error(client.post(f"/galleries/{forged}/compact"), 400, "validation_error")
    for subject_id in ("..", "alice\n"):
        alias = client.post("/enroll", json={"subject_id": subject_id, "image": image})
        assert_error(alias, 400, "validation_error")
    for body in (
        {"target": "..", "model_id": "sface+dlib"},
        {"target": "ok", "model_id": "sface+dlib", "source_gallery": "."},
    ):
        assert_error(client.post("/reembed", json=body), 400, "validation_error")
    forged = {"..", ".", "alice\n", "-rf", "@home", ".hidden"}
    versions = aws_client("s3", aws).list_object_versions(Bucket=aws.bucket).get("Versions", [])
    keys = [v["Key"].split("/") for v in versions]
    assert [k for k in keys if len(k) > 1 and k[1].removesuffix(".json") in forged] == []
    items = aws_client("dynamodb", aws).scan(TableName=aws.table)["Items"]
    assert {i["pk"]["S"].partition("#")[2] for i in items} & forged == set()


def test_an_e_mail_like_subject_id_is_enrolled(client, photo):
    answer = client.post(
        "/subjects/alice@example.com/faces", json={"image": b64(photo("person_a_1"))}
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["subject_id"] == "alice@example.com"


# -- nested JSON and media types (fault 9, 10) ---------------------------------------------


@pytest.mark.parametrize(
    "path", ["/compare", "/identify", "/embedding", "/subjects/ann/faces", "/enroll", "/reembed"]
)
def test_deeply_nested_json_is_a_validation_error(client, path):
    body = '{"metadata": ' + nested(DEEP) + ', "target": ' + nested(DEEP) + "}"
    answer = client.post(path, content=body, headers={"content-type": "application/json"})
    assert_error(answer, 400, "validation_error")


def test_a_deeply_nested_cursor_is_a_validation_error(client):
    cursor = base64.urlsafe_b64encode(nested(DEEP).encode()).decode().rstrip("=")
    assert_error(client.get("/subjects", params={"cursor": cursor}), 400, "validation_error")


def test_json_without_nan_or_infinity(client, photo):
    """``NaN`` is not JSON; an embedding holding it is a validation error, not a mismatch."""
    embedding = {"image": b64(photo("person_a_1")), "embedding": [0.0] * 256}
    body = json.dumps(embedding).replace("[0.0", "[NaN", 1)
    answer = client.post("/compare", content=body, headers={"content-type": "application/json"})
    assert_error(answer, 400, "validation_error")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_body_must_be_sent_as_json(client, photo, content_type):
    pair = {"image_a": b64(photo("person_b_1")), "image_b": b64(photo("person_b_2"))}
    headers = {"content-type": content_type} if content_type else {}
    answer = client.post("/compare", content=json.dumps(pair), headers=headers)
    error = assert_error(answer, 415, "unsupported_media_type")
    assert "application/json" in error["message"] and "multipart/form-data" in error["message"]
    reembed = client.post(
        "/reembed", content=json.dumps({"target": "t", "model_id": "m"}), headers=headers
    )
    assert_error(reembed, 415, "unsupported_media_type")


def test_json_with_a_charset_is_json(client, photo):
    pair = {"image_a": b64(photo("person_b_1")), "image_b": b64(photo("person_b_2"))}
    answer = client.post(
        "/compare",
        content=json.dumps(pair),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert answer.status_code == 200 and answer.json()["match"] is True


# -- subjects with no faces (fault 9) ----------------------------------------------------


def test_a_subject_with_no_faces_left_is_a_409(client, photo, aws):
    enrolled = client.post("/subjects/halfgone/faces", json={"image": b64(photo("person_a_1"))})
    assert enrolled.status_code == 201, enrolled.text
    face_id = enrolled.json()["photos"][0]["face_id"]
    aws_client("dynamodb", aws).delete_item(
        TableName=aws.table,
        Key={"pk": {"S": "SUBJECT#default#halfgone"}, "sk": {"S": f"FACE#{face_id}"}},
    )
    probe = {"image": b64(photo("person_a_2")), "subject_id": "halfgone"}
    error = assert_error(client.post("/compare", json=probe), 409, "no_enrolled_faces")
    assert "halfgone" in error["message"]


# -- unexpected errors (fault 9) ---------------------------------------------------------


SECRET = "subject alice, embedding [0.125, -0.5]"


def _broken() -> Any:
    raise RuntimeError(SECRET)


def test_an_unexpected_error_is_a_json_500_that_tells_nothing(app, caplog):
    """Answered by the app, not re-raised to the server: Starlette re-raises after its own
    500 handler, and Mangum and uvicorn then log the traceback with the exception's text,
    which may hold biometric data. Only the exception's type is logged."""
    caplog.set_level(logging.INFO)
    app.dependency_overrides[deps.get_pipeline] = _broken
    for raise_server_exceptions in (False, True):
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        error = assert_error(client.get("/health"), 500, "internal_error")
        assert error["message"] == "internal error"
    event = json.loads((EVENTS / "health.json").read_text())
    lambda_answer = Mangum(app, lifespan="off")(event, None)
    assert lambda_answer["statusCode"] == 500
    assert json.loads(lambda_answer["body"])["error"]["code"] == "internal_error"
    failures = [r for r in caplog.records if getattr(r, "error_type", None) == "RuntimeError"]
    assert len(failures) == 3
    logged = server_logs(caplog)
    assert "alice" not in logged and "0.125" not in logged
    assert all(r.exc_info is None for r in caplog.records)


class FailingStore:
    """A service whose storage fails with a message naming the subject, as boto3's do."""

    def describe_subject(self, subject_id: str) -> dict[str, Any]:
        raise StorageError(f"reading subject {subject_id} failed: AccessDenied")


def test_a_storage_failure_is_logged_without_its_message(app, client, caplog):
    caplog.set_level(logging.INFO)
    app.dependency_overrides[deps.get_service] = FailingStore
    error = assert_error(client.get("/subjects/alice"), 503, "storage_error")
    assert "AccessDenied" in error["message"]  # the caller is told, it is their subject
    failures = [r for r in caplog.records if getattr(r, "error_type", None) == "StorageError"]
    assert len(failures) == 1
    assert "alice" not in server_logs(caplog)


# -- the event loop (fault 10) -----------------------------------------------------------


class SlowService:
    """A compare that holds its request until told to go (or 5 s have passed)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.released: bool | None = None

    def compare_photos(self, first: bytes, second: bytes, **rule: Any) -> dict[str, Any]:
        self.entered.set()
        self.released = self.release.wait(timeout=5)
        return {"match": False}


def test_health_answers_while_a_slow_compare_is_in_flight(app, api_key):
    """The pipeline and boto3 are synchronous: run on the event loop, one slow request
    would hold every other request of the process, ``/health`` included."""
    slow = SlowService()
    app.dependency_overrides[deps.get_service] = lambda: slow

    async def scenario() -> tuple[bool, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        headers = {"x-api-key": api_key}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://facegate", headers=headers
        ) as client:
            body = {"image_a": b64(b"first"), "image_b": b64(b"second")}
            compare = asyncio.create_task(client.post("/compare", json=body))
            entered = await asyncio.to_thread(slow.entered.wait, 5)
            health = await client.get("/health")
            slow.release.set()
            return entered, health, await compare

    entered, health, compare = run_on_private_loop(scenario())
    assert entered, "the compare never started"
    assert health.status_code == 200, health.text
    assert slow.released is True, "/health waited for the slow /compare: it ran on the loop"
    assert compare.status_code == 200 and compare.json() == {"match": False}


# -- photos per request (faults 5, 6) ----------------------------------------------------


#: Lambda's 6 MiB event with a multipart body base64-encoded: 3/4 of it for the photos.
REQUEST_INLINE_LIMIT = 4_718_592


def padded(photo: bytes, size: int) -> bytes:
    """``photo`` followed by zeros up to ``size`` bytes (decoders stop at the JPEG's end)."""
    return photo + b"\0" * (size - len(photo))


def blank_png(width: int, height: int) -> bytes:
    """A bilevel PNG of a few KB whose pixels decode to ``width x height`` RGB: what a
    request can use to make the API decode far more than it sent."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.fixture
def s3_calls(monkeypatch) -> list[str]:
    """Every S3 operation any boto3 client makes during the test, by name."""
    calls: list[str] = []
    make_call = botocore.client.BaseClient._make_api_call

    def counting(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if client.meta.service_model.service_name == "s3":
            calls.append(operation)
        return make_call(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counting)
    return calls


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """The byte sizes of the photos the pipeline decodes during the test."""
    sizes: list[int] = []
    decode = face_pipeline.decode_image_reduced

    def counting(data: bytes, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(data))
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(face_pipeline, "decode_image_reduced", counting)
    return sizes


def test_inline_photos_are_limited_together_per_request(client, photo):
    """Each under the old 5 MB per-photo limit, together over what a Lambda event can carry
    (on AWS, API Gateway would refuse the request before the API saw it)."""
    big = padded(photo("person_b_1"), int(2.5 * 1024 * 1024))
    as_json = client.post("/compare", json={"image_a": b64(big), "image_b": b64(big)})
    error = assert_error(as_json, 413, "image_too_large")
    assert str(REQUEST_INLINE_LIMIT) in error["message"] and "request" in error["message"]
    files = [("image_a", ("a.jpg", big, "image/jpeg")), ("image_b", ("b.jpg", big, "image/jpeg"))]
    assert_error(client.post("/compare", files=files), 413, "image_too_large")


def test_one_photo_just_under_the_request_limit_is_used(client, photo):
    """The local stack's payload test sends about 4,712,400 bytes of photo: under the limit."""
    near = padded(photo("person_a_1"), REQUEST_INLINE_LIMIT - 6_000)
    answer = client.post("/embedding", files=[("image", ("a.jpg", near, "image/jpeg"))])
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["faces"]) == 1


def test_more_than_ten_photos_are_refused_before_any_is_fetched(client, photo, aws, s3_calls):
    key = "uploads/staff/probe.jpg"
    aws_client("s3", aws).put_object(Bucket=aws.bucket, Key=key, Body=photo("person_a_1"))
    s3_calls.clear()
    refs = [f"s3://{aws.bucket}/{key}"] * 11
    error = assert_error(
        client.post("/subjects/many/faces", json={"images": refs}), 400, "validation_error"
    )
    assert "10" in error["message"]
    alias = client.post("/enroll", json={"subject_id": "many", "image": refs[0], "images": refs})
    assert_error(alias, 400, "validation_error")
    files = [("images", (f"{i}.jpg", photo("person_a_1"), "image/jpeg")) for i in range(11)]
    assert_error(client.post("/subjects/many/faces", files=files), 400, "validation_error")
    form = [("images", (None, ref)) for ref in refs]
    assert_error(client.post("/subjects/many/faces", files=form), 400, "validation_error")
    assert [c for c in s3_calls if c in ("GetObject", "HeadObject")] == []
    assert client.get("/subjects/many").status_code == 404


def test_photos_decoding_to_too_many_pixels_together_are_refused_undecoded(client, decodes):
    """Four 30 MP PNGs of a few KB each: every one under the 40 MP per-photo limit, together
    360 MB of RGB. The sizes are read from the headers; nothing is decoded."""
    png = blank_png(6000, 5000)
    assert len(png) < 200_000
    answer = client.post("/subjects/bomb/faces", json={"images": [b64(png)] * 4})
    error = assert_error(answer, 413, "image_too_large")
    assert "pixels" in error["message"]
    assert decodes == []


# -- the schema and its pages (fault 12) -------------------------------------------------


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_the_schema_and_docs_need_a_key(app, client, path):
    assert_error(TestClient(app).get(path), 401, "unauthorized")
    assert_error(TestClient(app).get(path, headers={"x-api-key": "nope"}), 401, "unauthorized")
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    if path == "/openapi.json":
        assert "/compare" in answer.json()["paths"]


def test_the_schema_is_served_without_a_key_where_api_gateway_checks_iam(app, aws):
    app.dependency_overrides[get_settings] = lambda: aws.model_copy(update={"auth_mode": "iam"})
    answer = TestClient(app).get("/openapi.json")
    assert answer.status_code == 200 and "/compare" in answer.json()["paths"]
    assert TestClient(app).get("/docs").status_code == 200
