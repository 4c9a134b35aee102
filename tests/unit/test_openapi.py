"""The committed OpenAPI schema is the one the app serves (regenerate: ``make openapi``)."""

from __future__ import annotations

import json
from pathlib import Path

from app.main import create_app
from app.openapi import ID, MEANINGS, error_codes
from facegate import errors
from facegate.http_errors import status_for

COMMITTED = Path(__file__).resolve().parents[2] / "functions" / "api" / "openapi.json"


def test_committed_schema_matches_the_app():
    assert json.loads(COMMITTED.read_text()) == create_app().openapi()


def test_every_route_is_documented_with_its_body():
    paths = json.loads(COMMITTED.read_text())["paths"]
    for route in ("/compare", "/identify", "/embedding", "/subjects/{subject_id}/faces", "/enroll"):
        body = paths[route]["post"]["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= body.keys(), route
    assert {"get", "delete"} <= paths["/subjects/{subject_id}"].keys()


SCHEMA = json.loads(COMMITTED.read_text())
OPERATIONS = [
    (method, path, operation)
    for path, methods in SCHEMA["paths"].items()
    for method, operation in methods.items()
]
PHOTO_ROUTES = {
    "/compare",
    "/identify",
    "/embedding",
    "/subjects/{subject_id}/faces",
    "/enroll",
    "/collections/{collection}/compare",
    "/collections/{collection}/identify",
    "/collections/{collection}/subjects/{subject_id}/faces",
    "/liveness/verify",
}


def _error_class(code: str) -> type[errors.FaceGateError] | None:
    found = [c for c in vars(errors).values() if isinstance(c, type) and getattr(c, "code", 0)]
    return next((c for c in found if c.code == code), None)


def test_every_error_answer_is_documented_in_the_error_shape():
    """Each documented 4xx/5xx names a component whose ``code`` is one the app gives with that
    status (as http_errors maps the classes), and never FastAPI's own 422 body."""
    components = SCHEMA["components"]["schemas"]
    assert "HTTPValidationError" not in components
    for method, path, operation in OPERATIONS:
        for status, answer in operation["responses"].items():
            if int(status) < 400:
                continue
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/Error{status}", (method, path, status)
    for name, schema in components.items():
        if not name.startswith("Error"):
            continue
        status = int(name.removeprefix("Error"))
        app_body = schema["anyOf"][0] if "anyOf" in schema else schema
        if "$ref" in app_body:  # API Gateway's answer only (429)
            continue
        for code in app_body["properties"]["error"]["properties"]["code"]["enum"]:
            cls = _error_class(code)
            if cls is not None:
                assert status_for(cls("x")) == status, (code, status)
    gateway = {"$ref": "#/components/schemas/GatewayError"}
    assert gateway in components["Error413"]["anyOf"] and components["Error429"] == gateway


def test_every_status_the_app_can_answer_is_described():
    """A new error class whose status no route could document fails here first."""
    statuses = {status_for(cls("x")) for cls in vars(errors).values() if _is_error(cls)}
    assert statuses <= set(MEANINGS), statuses - set(MEANINGS)
    for status in statuses:
        assert error_codes(status), status


def _is_error(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, errors.FaceGateError)


def test_routes_document_what_they_answer():
    """Every route behind the key can be refused (401, 403) or throttled (429); only the photo
    routes answer 422 (a face error) and 415; ids are documented with the app's pattern."""
    for method, path, operation in OPERATIONS:
        documented = set(operation["responses"])
        if path != "/health":
            assert {"400", "401", "403", "429", "500", "503"} <= documented, (method, path)
        assert ("422" in documented) == (path in PHOTO_ROUTES | {"/register"}), (method, path)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                assert parameter["schema"]["pattern"] == ID["pattern"], (method, path)
    compare = SCHEMA["paths"]["/compare"]["post"]["requestBody"]["content"]["application/json"]
    assert {"required": ["image_a", "image_b"]} in compare["schema"]["anyOf"]
