"""The sample API Gateway events in ``events/`` through the real Lambda handler, against moto.

The events are the ones users run with ``sam local invoke`` and ``facegate local invoke``;
``events/expected.json`` gives their order and expected answers. Here they go, in that order,
through ``facegate_api.handler`` (Mangum, Powertools) in-process: the sample photos are
uploaded under ``probes/samples/`` and the ``LOCAL_API_KEY`` placeholder becomes a real key, as the
local stack does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app import deps
from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client

EVENTS = Path(__file__).resolve().parents[3] / "events"
PLACEHOLDER = "LOCAL_API_KEY"
SAMPLES = ("person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2")
MISSING = object()


def _expected() -> list[dict[str, Any]]:
    return json.loads((EVENTS / "expected.json").read_text())["events"]


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def _dig(body: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(body, dict) or part not in body:
            return MISSING
        body = body[part]
    return body


@dataclass(frozen=True)
class LambdaContext:
    """What Powertools' ``inject_lambda_context`` reads from the real context."""

    aws_request_id: str
    function_name: str = "facegate-dev-ApiFunction"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:facegate-dev-ApiFunction"
    )


@pytest.fixture(scope="module")
def invoke(aws, pipeline, faces_dir):
    """Call the handler with an event file: the placeholder key replaced, the answer's body
    parsed from JSON."""
    import facegate_api

    s3 = aws_client("s3", aws)
    for name in SAMPLES:
        s3.put_object(
            Bucket=aws.bucket,
            Key=f"probes/samples/{name}.jpg",
            Body=(faces_dir / f"{name}.jpg").read_bytes(),
            ContentType="image/jpeg",
        )
    key = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table).create("events")

    # The stores are cached per settings value: drop clients made under another module's moto.
    deps._stores.cache_clear()
    overrides = facegate_api.app.dependency_overrides
    overrides[deps.get_pipeline] = lambda: pipeline
    overrides[get_settings] = lambda: aws

    def call(name: str) -> tuple[dict[str, Any], Any]:
        event = _event(name)
        headers = event.get("headers") or {}
        for header, value in headers.items():
            if value == PLACEHOLDER:
                headers[header] = key
        context = LambdaContext(aws_request_id=f"req-{name}")
        answer = facegate_api.handler(event, context)
        return answer, json.loads(answer["body"])

    yield call
    overrides.clear()
    deps._stores.cache_clear()


def test_every_event_file_is_in_expected_json():
    files = {p.name for p in EVENTS.glob("*.json")} - {"expected.json"}
    listed = [e["event"] for e in _expected()]
    assert len(listed) == len(set(listed)), "an event is listed twice"
    assert set(listed) == files


def test_events_are_api_gateway_v2_with_the_conventions():
    for entry in _expected():
        event = _event(entry["event"])
        context = event["requestContext"]
        assert event["version"] == "2.0" and event["routeKey"] == "$default"
        assert context["stage"] == "$default" and context["requestId"]
        assert context["http"]["path"] == event["rawPath"]
        assert entry["request"].split("?")[0] == f"{context['http']['method']} {event['rawPath']}"
        assert event["isBase64Encoded"] is False
        headers = event["headers"]
        assert headers.get("x-api-key", PLACEHOLDER) == PLACEHOLDER
        if "body" in event:
            assert headers["content-type"] == "application/json"
            body = json.loads(event["body"])
            for name, value in body.items():
                if name.startswith("image") and entry["statusCode"] < 400:
                    values = value if isinstance(value, list) else [value]
                    assert all(
                        v.startswith("s3://facegate-local/probes/samples/")
                        or entry["event"] == "compare-inline.json"
                        for v in values
                    )
    assert "x-api-key" not in _event("compare-missing-api-key.json")["headers"]


def test_every_route_is_exercised():
    """Every (method, path) of the served OpenAPI schema is hit by at least one event."""
    import re

    import facegate_api

    declared = {
        (method.upper(), path)
        for path, methods in facegate_api.app.openapi()["paths"].items()
        for method in methods
    }
    assert len(declared) >= 12, declared  # the schema really lists the routes

    def matches(template: str, path: str) -> bool:
        return re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), path) is not None

    covered = set()
    for entry in _expected():
        event = _event(entry["event"])
        method, path = event["requestContext"]["http"]["method"], event["rawPath"]
        found = [(m, t) for m, t in declared if m == method and matches(t, path)]
        if entry.get("error") == "not_found":
            assert not found, f"{entry['event']} hits {found}"
        covered.update(found)
    assert declared - covered == set()


def test_events_in_order_through_the_lambda_handler(invoke):
    answers: dict[str, dict[str, Any]] = {}
    for entry in _expected():
        name = entry["event"]
        answer, body = invoke(name)
        assert answer["statusCode"] == entry["statusCode"], (name, body)
        assert answer["headers"]["content-type"] == "application/json"
        if "error" in entry:
            assert body["error"]["code"] == entry["error"], (name, body)
        for dotted, value in entry.get("body", {}).items():
            assert _dig(body, dotted) == value, (name, dotted, body)
        answers[name] = body

    assert answers["health.json"]["model_id"] == "sface+dlib"
    assert answers["enrol-subject.json"]["accepted"] == 1
    assert answers["register-alias.json"]["face_count"] == 2
    listed = {s["subject_id"] for s in answers["list-subjects.json"]["subjects"]}
    assert listed == {"person_a", "person_b"}
    assert len(answers["get-subject.json"]["faces"]) == 1
    for name in ("compare-match.json", "compare-inline.json", "compare-subject.json"):
        assert answers[name]["similarity"] >= answers[name]["threshold"], name
    non_match = answers["compare-non-match.json"]
    assert non_match["match"] is False and non_match["similarity"] < non_match["threshold"]
    assert answers["identify-hit.json"]["best"]["subject_id"] == "person_a"
    miss = answers["identify-no-match.json"]
    assert miss["match"] is False and miss["best"] is None and miss["candidates"] == []
    faces = answers["embedding.json"]["faces"]
    assert len(faces) == 1 and len(faces[0]["embedding"]) == 256

    gone, body = invoke("get-subject.json")
    assert gone["statusCode"] == 404 and body["error"]["code"] == "unknown_subject"
    again, body = invoke("delete-subject.json")
    assert again["statusCode"] == 404 and body["error"]["code"] == "unknown_subject"
