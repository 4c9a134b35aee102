"""The request limits API Gateway and Lambda enforce before the API function runs, locally.

On AWS a request reaches the API function as a Lambda event (HTTP API payload format 2.0):
its headers, a request context and the body, base64-encoded unless it is text (JSON,
``text/*``), so a multipart photo grows by a third on the way. API Gateway refuses a body over
10 MiB, and Lambda a synchronous invocation whose event is over 6 MiB: either way the client
gets ``413`` with API Gateway's own JSON body, never the function's error shape. uvicorn
accepts any size, so the local stack wraps the app in :class:`ApiGatewayLimits`, which builds
the event API Gateway would send and answers the same ``413`` when it is too large.

The envelope is modelled on a real event (``events/*.json``): the execute-api host, the
``x-forwarded-*`` and trace headers API Gateway adds, the request context. In ``IAM`` auth
mode the caller's identity adds a few hundred bytes that are not modelled.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

#: API Gateway HTTP API: largest request body (payload) it accepts.
HTTP_API_BODY_LIMIT = 10 * 1024 * 1024
#: Lambda: largest synchronous invocation payload, the event's JSON (6 MiB).
LAMBDA_EVENT_LIMIT = 6 * 1024 * 1024
#: What the client gets for either (API Gateway's body, not the API's error shape).
TOO_LARGE_STATUS = 413
TOO_LARGE_BODY = b'{"message":"Request Entity Too Large"}'
#: What the client gets when the function does not answer in time.
TIMED_OUT_STATUS = 503
TIMED_OUT_BODY = b'{"message":"Service Unavailable"}'
#: What the client gets when the function raised.
FUNCTION_ERROR_BODY = b'{"message":"Internal Server Error"}'

API_ID = "a1b2c3d4e5"
DOMAIN = f"{API_ID}.execute-api.us-east-1.amazonaws.com"
#: Content types API Gateway passes as text; every other body is base64-encoded.
_TEXT_TYPES = ("application/json", "application/javascript", "application/xml")
_TEXT_SUFFIXES = ("+json", "+xml")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_text(content_type: str) -> bool:
    """Whether API Gateway puts a body of this type in the event as it is (else base64)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(_TEXT_SUFFIXES)


def _headers(scope: Scope) -> tuple[dict[str, str], list[str]]:
    """Headers as payload 2.0 has them (lower-case, repeats joined by commas) and cookies."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        else:
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers, cookies


def lambda_event(scope: Scope, body: bytes) -> dict[str, Any]:
    """The event API Gateway (HTTP API, payload 2.0, route ``$default``) would send the
    function for this ASGI request and body."""
    headers, cookies = _headers(scope)
    source_ip = (scope.get("client") or ("127.0.0.1", 0))[0]
    headers.update(
        {
            "host": DOMAIN,
            "x-amzn-trace-id": "Root=1-00000000-000000000000000000000000",
            "x-forwarded-for": source_ip,
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
        }
    )
    query = scope.get("query_string", b"").decode("latin-1")
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": API_ID,
            "domainName": DOMAIN,
            "domainPrefix": API_ID,
            "http": {
                "method": scope["method"],
                "path": scope["path"],
                "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": "AAAAAAAAAAAAAAA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    if body:
        text = _as_text(body) if is_text(headers.get("content-type", "")) else None
        if text is None:
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
        else:
            event["body"] = text
    return event


def _as_text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def event_size(scope: Scope, body: bytes) -> int:
    """Bytes of the invocation payload: the event as compact UTF-8 JSON."""
    event = lambda_event(scope, body)
    return len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass(frozen=True)
class RoutedFunction:
    """A route of the API's own (``GET /jobs/{job_id}``) and the function serving it: its
    process's Lambda Invoke endpoint (``runtime.serve_invocations``) and the integration's
    timeout."""

    method: str
    path: str
    invoke_url: str
    timeout_s: float

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when the request is this route's, else None."""
        if method != self.method:
            return None
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        found = re.fullmatch(pattern, path)
        return found.groupdict() if found else None

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"


class FunctionError(Exception):
    """The invoked function raised (Lambda's ``X-Amz-Function-Error``)."""


def invoke_function(url: str, event: dict[str, Any], timeout: float) -> Any:
    """A synchronous Lambda invocation over the Invoke API: the function's answer."""
    request = urllib.request.Request(
        url,
        data=json.dumps(event).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        if answer.headers.get("X-Amz-Function-Error"):
            raise FunctionError(answer.headers["X-Amz-Function-Error"])
        return json.loads(answer.read())


class _Unread(enum.Enum):
    """Why a body was not read whole."""

    TOO_LARGE = "too large"
    GONE = "client disconnected"


class ApiGatewayLimits:
    """ASGI middleware: refuse what API Gateway or Lambda would refuse, pass the rest on.

    The body is read whole first (API Gateway buffers it too) and handed on unchanged. With
    ``timeout``, a request the app has not begun to answer by then gets API Gateway's 503 (the
    function's own ``Timeout``, at most the HTTP API's 30 s integration timeout).
    """

    def __init__(
        self,
        app: App,
        *,
        body_limit: int = HTTP_API_BODY_LIMIT,
        event_limit: int = LAMBDA_EVENT_LIMIT,
        timeout: float | None = None,
        routes: tuple[RoutedFunction, ...] = (),
    ) -> None:
        self.app, self.body_limit, self.event_limit = app, body_limit, event_limit
        self.timeout, self.routes = timeout, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await self._read(scope, receive)
        if body is _Unread.GONE:
            return
        if body is _Unread.TOO_LARGE or event_size(scope, body) > self.event_limit:
            await _too_large(send)
            return
        for route in self.routes:
            parameters = route.match(scope["method"], scope["path"])
            if parameters is not None:
                await _forward(route, parameters, lambda_event(scope, body), send)
                return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        if self.timeout is None:
            await self.app(scope, replay, send)
            return
        started = False

        async def send_once_started(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, replay, send_once_started), self.timeout)
        except TimeoutError:
            if not started:
                await _answer(send, TIMED_OUT_STATUS, TIMED_OUT_BODY)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | _Unread:
        """The whole body; ``TOO_LARGE`` once it is over the body limit (by its declared
        length, or as it arrives when chunked)."""
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.body_limit:
            return _Unread.TOO_LARGE
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _Unread.GONE
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.body_limit:
                return _Unread.TOO_LARGE
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _forward(
    route: RoutedFunction, parameters: dict[str, str], event: dict[str, Any], send: Send
) -> None:
    """Invoke the route's function with API Gateway's event; answer what it returns, as the
    payload 2.0 integration does (a dict with ``statusCode``, else a JSON body of 200)."""
    event["routeKey"] = event["requestContext"]["routeKey"] = route.route_key
    event["pathParameters"] = parameters
    try:
        answer = await asyncio.to_thread(invoke_function, route.invoke_url, event, route.timeout_s)
    except FunctionError:
        await _answer(send, 500, FUNCTION_ERROR_BODY)
        return
    except (OSError, urllib.error.URLError, json.JSONDecodeError):
        await _answer(send, TIMED_OUT_STATUS, TIMED_OUT_BODY)
        return
    if not (isinstance(answer, dict) and "statusCode" in answer):
        await _answer(send, 200, json.dumps(answer).encode())
        return
    body = answer.get("body") or ""
    raw = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode()
    headers = [(k.lower().encode(), str(v).encode()) for k, v in answer.get("headers", {}).items()]
    headers += [(b"set-cookie", c.encode()) for c in answer.get("cookies", [])]
    headers.append((b"content-length", str(len(raw)).encode()))
    await send(
        {"type": "http.response.start", "status": int(answer["statusCode"]), "headers": headers}
    )
    await send({"type": "http.response.body", "body": raw})


async def _too_large(send: Send) -> None:
    await _answer(send, TOO_LARGE_STATUS, TOO_LARGE_BODY)


async def _answer(send: Send, status: int, body: bytes) -> None:
    """API Gateway's own answer: a small JSON body, never the function's error shape."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
