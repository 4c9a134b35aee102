"""The webcam page (``GET /`` and ``GET /app/{file}``): register, log in, identify.

Served by the API function itself, from the same origin as the API: the page's requests
need no CORS, and the strict Content-Security-Policy below can allow ``'self'`` and nothing
else, so the page loads no script, style or font from anyone else and sends the camera's
frames nowhere but here. Plain files, no build step: ``app/static/``.

These are the only routes besides ``/health`` that answer without an API key: a browser
cannot add the ``x-api-key`` header to a page load, and the files hold no data, only the
code that asks for the key and then sends it with every API request. They are left out of
the schema (they are no part of the API) and out of ``ROUTE_SCOPES`` (no key is checked).

Only the files of :data:`FILES` are served: the name is looked up, never joined to a path,
so no request reaches another file of the function's image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
#: The page's files and their media types: the whole of what ``/app/{file}`` serves.
FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: The routes here, as ``METHOD path`` like ``ROUTE_SCOPES``: tests that check every other
#: route needs a key leave these out, as they leave out ``GET /health``.
PUBLIC_ROUTES = frozenset({"GET /", "GET /app/{file}"})

#: ``'self'`` only: no third-party request of any kind. ``blob:``/``data:`` images are the
#: page's own thumbnails, ``mediastream:`` the camera's preview; ``frame-ancestors 'none'``
#: keeps another site from framing the page to click its buttons (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)
#: ``no-cache``: a browser may keep the files but asks (``If-None-Match``) before each use,
#: so a deployment's new page and script are never mixed with the old ones; the answer to
#: that question is a body-less 304.
CACHE_CONTROL = "no-cache"
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # The page's URL names no one, but the API's paths do (subject ids): send no referrer.
    "Referrer-Policy": "no-referrer",
    # The camera for this page only; no other powerful feature at all.
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str


@lru_cache(maxsize=len(FILES))
def static_file(name: str) -> StaticFile:
    """One of :data:`FILES`, read once per process (the image's files never change)."""
    body = (STATIC / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return StaticFile(body, FILES[name], etag)


def _answer(name: str, request: Request) -> Response:
    found = static_file(name)
    headers = {**SECURITY_HEADERS, "Cache-Control": CACHE_CONTROL, "ETag": found.etag}
    if found.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.get("/")
def index(request: Request) -> Response:
    return _answer("index.html", request)


@router.get("/app/{file}")
def asset(file: str, request: Request) -> Response:
    if file not in FILES:
        # Word for word an unknown route's answer: the name is not echoed back.
        raise HTTPException(404, "Not Found")
    return _answer(file, request)
