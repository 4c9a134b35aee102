"""The local stack's API Gateway limits: the Lambda event it models and the 413s it gives.

The event must be one Mangum (the API function's adapter) takes as it takes API Gateway's,
and the limits must fall at the byte: an event of exactly the limit passes, one byte more is
refused, and the app never sees a refused request.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from asgi_requests import call, http_scope, status_of
from facegate_local import stack
from facegate_local.config import LocalConfig
from facegate_local.gateway import (
    HTTP_API_BODY_LIMIT,
    LAMBDA_EVENT_LIMIT,
    TIMED_OUT_BODY,
    TOO_LARGE_BODY,
    ApiGatewayLimits,
    RoutedFunction,
    event_size,
    is_text,
    lambda_event,
)
from mangum import Mangum
from tests_support import run_on_private_loop

REPO = Path(__file__).resolve().parents[2]


class Echo:
    """An ASGI app that answers the digest of the body it read (and counts its calls)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = json.dumps(
            {
                "sha256": hashlib.sha256(body).hexdigest(),
                "path": scope["path"],
                "query": scope["query_string"].decode(),
                "content_type": dict(scope["headers"]).get(b"content-type", b"").decode(),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})


def test_limits_are_api_gateway_and_lambda_s() -> None:
    assert HTTP_API_BODY_LIMIT == 10_485_760  # HTTP API payload: 10 MB
    assert LAMBDA_EVENT_LIMIT == 6_291_456  # synchronous invocation request: 6 MB
    assert json.loads(TOO_LARGE_BODY) == {"message": "Request Entity Too Large"}


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("text/plain", True),
        ("application/problem+json", True),
        ("multipart/form-data; boundary=x", False),
        ("image/jpeg", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
    ],
)
def test_only_text_bodies_stay_unencoded(content_type: str, text: bool) -> None:
    assert is_text(content_type) is text


def test_event_has_the_shape_of_api_gateway_s() -> None:
    sample = json.loads((REPO / "events" / "compare-match.json").read_text())
    body = sample["body"].encode()
    event = lambda_event(http_scope(body), body)
    assert set(event) == set(sample)
    assert set(event["requestContext"]) == set(sample["requestContext"])
    assert set(event["requestContext"]["http"]) == set(sample["requestContext"]["http"])
    assert set(sample["headers"]) <= set(event["headers"])
    assert event["body"] == sample["body"] and event["isBase64Encoded"] is False
    size = event_size(http_scope(body), body)
    assert abs(size - len(json.dumps(sample, separators=(",", ":")))) < 100


def test_mangum_reads_the_modelled_event_as_the_request_sent() -> None:
    """Multipart goes base64, JSON as text: the app behind Mangum gets the same bytes."""
    photo = bytes(range(256)) * 40
    multipart = b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + photo
    adapter = Mangum(Echo(), lifespan="off")
    for body, content_type in [
        (b'{"image": "aGVsbG8=", "note": "caf\xc3\xa9 \\"quoted\\""}', "application/json"),
        (multipart + b"\r\n--b--\r\n", "multipart/form-data; boundary=b"),
    ]:
        event = lambda_event(http_scope(body, content_type, query="k=1&k=2"), body)
        assert event["isBase64Encoded"] is (content_type != "application/json")
        echoed = json.loads(adapter(event, object())["body"])
        assert echoed["sha256"] == hashlib.sha256(body).hexdigest()
        assert (echoed["path"], echoed["content_type"]) == ("/compare", content_type)
        assert event["queryStringParameters"] == {"k": "1,2"}


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=b"])
def test_an_event_of_the_limit_passes_one_byte_more_is_refused(content_type: str) -> None:
    body = b"x" * 30_000
    scope = http_scope(body, content_type)
    size = event_size(scope, body)
    assert size > len(body)
    echo = Echo()
    at_limit = call(ApiGatewayLimits(echo, event_limit=size), scope, [body[:1000], body[1000:]])
    status, answer = status_of(at_limit)
    assert status == 200 and json.loads(answer)["sha256"] == hashlib.sha256(body).hexdigest()
    over = call(ApiGatewayLimits(echo, event_limit=size - 1), scope, [body])
    assert status_of(over) == (413, TOO_LARGE_BODY)
    assert echo.calls == 1


def test_base64_makes_a_multipart_photo_a_third_larger_than_json_text() -> None:
    """The same bytes as a binary body cost 4/3 of themselves in the event."""
    body = b"a" * 300_000
    as_text = event_size(http_scope(body), body)
    as_binary = event_size(http_scope(body, "image/jpeg"), body)
    assert as_binary - as_text == pytest.approx(100_000, abs=200)


def test_a_body_over_api_gateway_s_limit_is_refused_before_it_is_read() -> None:
    echo = Echo()
    gateway = ApiGatewayLimits(echo, body_limit=1000)
    declared = http_scope(b"y" * 1001)
    assert status_of(call(gateway, declared, [])) == (413, TOO_LARGE_BODY)
    chunked = http_scope(b"")
    chunked["headers"] = [h for h in chunked["headers"] if h[0] != b"content-length"]
    assert status_of(call(gateway, chunked, [b"y" * 600, b"y" * 600])) == (413, TOO_LARGE_BODY)
    assert echo.calls == 0


def test_a_client_gone_mid_body_reaches_nothing() -> None:
    echo = Echo()
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"z" * 50, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run_on_private_loop(ApiGatewayLimits(echo)(http_scope(b"z" * 100), receive, send))
    assert echo.calls == 0 and sent == []


def test_invoke_refuses_an_event_over_lambda_s_limit(tmp_path: Path) -> None:
    event = tmp_path / "big.json"
    event.write_text(json.dumps({"body": "x" * LAMBDA_EVENT_LIMIT}))
    config = LocalConfig(root=REPO, state_dir=tmp_path / "state")
    with pytest.raises(stack.StackError, match="payload limit"):
        stack.invoke(config, "ApiFunction", event)


class Invocations:
    """A stand-in for a function's Invoke endpoint: records the events, answers ``answer``."""

    def __init__(self, answer: Any, error: bool = False) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.events: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.events.append(
                    json.loads(self.rfile.read(int(self.headers["content-length"])))
                )
                body = json.dumps(answer).encode()
                self.send_response(200)
                if error:
                    self.send_header("X-Amz-Function-Error", "Unhandled")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self) -> RoutedFunction:
        port = self.server.server_address[1]
        return RoutedFunction("GET", "/jobs/{job_id}", f"http://127.0.0.1:{port}/invoke", 5.0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _get(path: str) -> dict[str, Any]:
    scope = http_scope(b"", path=path)
    scope["method"] = "GET"
    return scope


def test_a_route_of_another_function_is_invoked_with_api_gateway_s_event() -> None:
    function = Invocations(
        {"statusCode": 404, "headers": {"Content-Type": "application/json"}, "body": '{"e":1}'}
    )
    app = Echo()
    try:
        gateway = ApiGatewayLimits(app, routes=(function.route(),))
        assert status_of(call(gateway, _get("/jobs/job-1"), [b""])) == (404, b'{"e":1}')
        (event,) = function.events
        assert event["routeKey"] == event["requestContext"]["routeKey"] == "GET /jobs/{job_id}"
        assert event["pathParameters"] == {"job_id": "job-1"}
        assert event["rawPath"] == "/jobs/job-1" and event["headers"]["x-api-key"] == "fg_test"
        assert app.calls == 0
        for other in ("/jobs/job-1/results", "/jobs"):  # not the route: the API's own
            assert status_of(call(gateway, _get(other), [b""]))[0] == 200
        assert app.calls == 2 and len(function.events) == 1
    finally:
        function.close()


def test_a_failing_or_absent_routed_function_is_api_gateway_s_5xx() -> None:
    failing = Invocations({"errorType": "KeyError"}, error=True)
    try:
        gateway = ApiGatewayLimits(Echo(), routes=(failing.route(),))
        sent = call(gateway, _get("/jobs/x"), [b""])
        assert status_of(sent) == (500, b'{"message":"Internal Server Error"}')
    finally:
        failing.close()
    gone = ApiGatewayLimits(Echo(), routes=(failing.route(),))  # nothing listens there now
    assert status_of(call(gone, _get("/jobs/x"), [b""])) == (503, TIMED_OUT_BODY)
