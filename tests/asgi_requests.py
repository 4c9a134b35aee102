"""One ASGI request run through an app (the local stack's gateway middleware): its scope,
the messages the app sent, and the status and body they make."""

from __future__ import annotations

from typing import Any

from tests_support import run_on_private_loop


def http_scope(
    body: bytes, content_type: str = "application/json", path: str = "/compare", query: str = ""
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"curl/8.5.0"),
            (b"accept", b"application/json"),
            (b"x-api-key", b"fg_test"),
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def call(app: Any, scope: dict[str, Any], chunks: list[bytes]) -> list[dict[str, Any]]:
    """Run one request through ``app``; the messages it sent."""
    sent: list[dict[str, Any]] = []
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run_on_private_loop(app(scope, receive, send))
    return sent


def status_of(sent: list[dict[str, Any]]) -> tuple[int, bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])
