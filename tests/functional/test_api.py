"""The HTTP API on real photos: through FastAPI's TestClient and through the Lambda handler."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.deps import get_pipeline
from app.main import create_app


@pytest.fixture(scope="module")
def client(pipeline):
    app = create_app()
    app.dependency_overrides[get_pipeline] = lambda: pipeline
    return TestClient(app)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def photo(faces_dir):
    return lambda name: (faces_dir / f"{name}.jpg").read_bytes()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_health_names_model_and_threshold(client, pipeline):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model_id"] == "sface"
    assert body["threshold"] == pipeline.threshold


def test_compare_multipart_match(client, photo):
    files = {"image_a": ("a.jpg", photo("person_b_1")), "image_b": ("b.jpg", photo("person_b_2"))}
    answer = client.post("/compare", files=files)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["match"] is True and body["similarity"] > body["threshold"]
    assert len(body["faces"]) == 2 and all(f["score"] > 0.9 for f in body["faces"])


def test_compare_json_non_match(client, photo):
    body = {"image_a": b64(photo("person_a_2")), "image_b": b64(photo("impostor_1"))}
    answer = client.post("/compare", json=body).json()
    assert answer["match"] is False and answer["similarity"] < answer["threshold"]


def test_compare_against_reference_embedding(client, photo):
    extracted = client.post("/embedding", json={"image": b64(photo("person_a_1"))}).json()
    assert extracted["dim"] == 128 and len(extracted["faces"]) == 1
    reference = extracted["faces"][0]["embedding"]
    same = client.post("/compare", json={"image": b64(photo("person_a_2")), "embedding": reference})
    assert same.json()["match"] is True
    other = client.post(
        "/compare", json={"image": b64(photo("impostor_2")), "embedding": reference}
    )
    assert other.json()["match"] is False


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"image_a": b64(b"not a photo"), "image_b": b64(b"x")}, 400, "invalid_image"),
        ({"image_a": "%%%"}, 400, "validation_error"),
        (
            {"image_a": b64(b"\xff" * (5 * 1024 * 1024 + 10)), "image_b": "AA=="},
            413,
            "image_too_large",
        ),
        ({"image": b64(b"x"), "embedding": [0.1] * 12}, 409, "model_mismatch"),
        (
            {"image": b64(b"x"), "embedding": [0.1] * 128, "model_id": "other"},
            409,
            "model_mismatch",
        ),
    ],
)
def test_bad_requests_get_stable_codes(client, body, status, code):
    answer = client.post("/compare", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


def test_missing_field_is_validation_error(client, photo):
    answer = client.post("/compare", json={"image_a": b64(photo("person_a_1"))})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "validation_error"


def test_face_errors_are_422(client, faces_dir, photo):
    clothes = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))[650:, :]
    answer = client.post("/embedding", json={"image": b64(_jpeg(clothes))})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "no_face"
    left = np.asarray(Image.open(faces_dir / "person_a_2.jpg").convert("RGB"))
    right = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))
    height = min(left.shape[0], right.shape[0])
    pair = _jpeg(np.concatenate([left[:height], right[:height]], axis=1))
    answer = client.post("/embedding", json={"image": b64(pair), "multi_face": "reject"})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "multiple_faces"
    both = client.post("/embedding", json={"image": b64(pair), "multi_face": "all"}).json()
    assert len(both["faces"]) == 2


def test_lambda_handler_serves_api_gateway_v2_events(pipeline, photo, monkeypatch):
    """The Mangum handler, as Lambda calls it, with HTTP API payload-2.0 events."""
    import app.deps

    monkeypatch.setattr(app.deps, "get_pipeline", lambda: pipeline)
    import facegate_api

    facegate_api.app.dependency_overrides[get_pipeline] = lambda: pipeline
    body = json.dumps({"image_a": b64(photo("person_a_1")), "image_b": b64(photo("person_a_2"))})
    event = _http_event("POST", "/compare", body)
    response = facegate_api.handler(event, _Context())
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["match"] is True
    missing = facegate_api.handler(_http_event("GET", "/nowhere", ""), _Context())
    assert missing["statusCode"] == 404
    assert json.loads(missing["body"])["error"]["code"] == "not_found"


class _Context:
    function_name = "ApiFunction"
    aws_request_id = "test-request"


def _http_event(method: str, path: str, body: str) -> dict[str, object]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "localhost"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "localhost",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "test",
            },
            "requestId": "id",
            "routeKey": "$default",
            "stage": "$default",
            "time": "22/Nov/2026:00:00:00 +0000",
            "timeEpoch": 0,
        },
        "body": body,
        "isBase64Encoded": False,
    }
