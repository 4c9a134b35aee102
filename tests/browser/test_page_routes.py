"""The webcam page's routes, without a browser: the files, their headers, nothing else.

The page is the only thing besides ``/health`` served without an API key, so what it may
serve is checked here exactly: three named files, never a path, and a Content-Security-Policy
that keeps the page from talking to anyone but this origin.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.routers import page

CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)


@pytest.fixture(scope="module")
def client() -> TestClient:
    """No key, no AWS: the page's routes need neither."""
    return TestClient(create_app())


@pytest.mark.parametrize(
    ("path", "media_type", "name"),
    [
        ("/", "text/html", "index.html"),
        ("/app/index.html", "text/html", "index.html"),
        ("/app/app.js", "text/javascript", "app.js"),
        ("/app/app.css", "text/css", "app.css"),
    ],
)
def test_each_file_is_served_without_a_key_with_its_type_and_policy(client, path, media_type, name):
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert answer.content == (page.STATIC / name).read_bytes()
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{32}"', answer.headers["etag"])


def test_an_unchanged_file_is_a_bodyless_304(client):
    first = client.get("/app/app.js")
    again = client.get("/app/app.js", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert client.get("/app/app.js", headers={"if-none-match": '"other"'}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/app/main.py",
        "/app/..%2Fmain.py",
        "/app/%2E%2E%2Frouters%2Fpage.py",
        "/app/static/app.js",
        "/app/../main.py",
        "/app/",
        "/app/APP.JS",
        "/app/app.js%00",
    ],
)
def test_nothing_but_the_named_files_is_served(client, path):
    answer = client.get(path)
    assert answer.status_code == 404
    assert answer.json() == {"error": {"code": "not_found", "message": "Not Found"}}


def test_the_page_is_no_part_of_the_schema(client):
    schema = create_app().openapi()
    assert "/" not in schema["paths"] and "/app/{file}" not in schema["paths"]


def test_the_page_routes_are_the_public_ones_it_names():
    """``page.PUBLIC_ROUTES`` is what key-checking tests leave out: exactly these routes."""
    routes = {
        f"{method} {getattr(route, 'path', '')}"
        for route in page.router.routes
        for method in getattr(route, "methods", ())
    }
    assert routes == page.PUBLIC_ROUTES


def test_the_page_loads_only_relative_same_origin_files():
    """Relative URLs (the page may sit under a stage's path) and no inline script or style,
    which the policy would block; an empty icon, so that no browser asks the function for a
    ``/favicon.ico`` it does not have."""
    html = (page.STATIC / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links == ["data:,", "app/app.css", "app/app.js"]
    assert "<style" not in html and " style=" not in html
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="app/app.js">']
    script = (page.STATIC / "app.js").read_text()
    assert "console." not in script  # frames, ids and answers are never logged
    assert "alert(" not in script
    assert "innerHTML" not in script  # answers are text, never markup
    assert not re.search(r"""fetch\(\s*["'`]/""", script)
    assert not re.search(r"https?://", script + html)
