"""The committed OpenAPI schema is the one the app serves (regenerate: ``make openapi``)."""

from __future__ import annotations

import json
from pathlib import Path

from app.main import create_app

COMMITTED = Path(__file__).resolve().parents[2] / "functions" / "api" / "openapi.json"


def test_committed_schema_matches_the_app():
    assert json.loads(COMMITTED.read_text()) == create_app().openapi()


def test_every_route_is_documented_with_its_body():
    paths = json.loads(COMMITTED.read_text())["paths"]
    for route in ("/compare", "/identify", "/embedding", "/subjects/{subject_id}/faces", "/enroll"):
        body = paths[route]["post"]["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= body.keys(), route
    assert {"get", "delete"} <= paths["/subjects/{subject_id}"].keys()
