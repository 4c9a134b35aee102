"""The parts of the schema FastAPI cannot infer: photo request bodies and error answers.

The photo routes read their bodies themselves (JSON with base64 / s3:// strings, or multipart
files), so FastAPI cannot infer a schema; these ``openapi_extra`` blocks state it.

Every error answer is ``{"error": {code, message}}`` (:mod:`app.errors`); API Gateway's own
refusals (413 over its payload limits, 429 throttled) are ``{"message"}``. The routers
declare the statuses they can answer with :func:`error_responses`, each with the codes
:mod:`facegate.http_errors` maps to it, so a client (and ``make fuzz``, which checks every
answer against this schema) knows exactly what may come back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Path

from app.errors import HTTP_CODES, INTERNAL_ERROR
from facegate import errors
from facegate.common import ID_PATTERN
from facegate.http_errors import STATUS

if TYPE_CHECKING:
    from fastapi import FastAPI

PHOTO = {
    "type": "string",
    "description": "base64 image (JPEG, PNG, WebP, BMP, TIFF, GIF) or an "
    "s3://<stack bucket>/<key> URI (at most 15 MB). A request takes at most 10 photos, "
    "4,718,592 bytes (4.5 MiB) of inline photos together and 100 MP of decoded pixels.",
}
UPLOAD = {"type": "string", "format": "binary"}
#: An id (subject, gallery, job) as :func:`facegate.common.validate_id` accepts it. Documented
#: only: FastAPI does not check it, so a bad id gets the app's own ``400 validation_error``.
ID: dict[str, Any] = {
    "type": "string",
    "pattern": "^" + ID_PATTERN.pattern.removesuffix(r"\Z") + "$",
    "minLength": 1,
    "maxLength": 128,
}
IdPath = Annotated[str, Path(json_schema_extra=ID)]


def photo_body(
    photos: dict[str, str],
    extra: dict[str, Any] | None = None,
    required: list[str] | None = None,
    many: tuple[str, ...] = (),
    one_of: list[list[str]] | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` for a route taking the named photo fields plus ``extra`` fields;
    in JSON, the fields named in ``many`` are lists of photos (in a form, repeated files).
    ``one_of``: the sets of fields a request must hold one of (``/compare``'s three forms)."""
    extra = extra or {}
    as_json: dict[str, Any] = {
        name: {**PHOTO, "description": f"{text}: {PHOTO['description']}"}
        for name, text in photos.items()
    }
    for name in many:
        as_json[name] = {"type": "array", "items": as_json[name]}
    as_form = {name: {**UPLOAD, "description": text} for name, text in photos.items()}
    forms = {"anyOf": [{"required": fields} for fields in one_of]} if one_of else {}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {**as_json, **extra},
                        "required": required or [],
                        **forms,
                    }
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {**as_form, **extra},
                        "required": required or [],
                        **forms,
                    }
                },
            },
        }
    }


#: Codes the app answers outside :data:`facegate.http_errors.STATUS`: Starlette's own HTTP
#: errors (a path that matches no route is a 404 ``not_found``) and the catch-all for a bug.
APP_CODES: dict[int, tuple[str, ...]] = {
    **{status: (code,) for status, code in HTTP_CODES.items()},
    500: (INTERNAL_ERROR,),
}
#: What each status means to a caller; the codes come from the error classes.
MEANINGS: dict[int, str] = {
    400: "the request is malformed or a value is out of range",
    401: "no x-api-key, or one that is unknown or expired",
    403: "the key lacks the scope this route needs",
    404: "the subject, gallery, job, liveness challenge or s3:// object named does not exist "
    "(a used challenge no longer does)",
    409: "the request conflicts with what is stored (another model, no faces left, a "
    "subject being deleted)",
    413: "the photos are too large (bytes or decoded pixels); API Gateway answers "
    '{"message": "Request Entity Too Large"} to a request over its own limits',
    410: "the liveness challenge expired: ask for a new one",
    415: "the body is neither application/json nor multipart/form-data",
    422: "a photo has no usable face (none, several where one is needed, or too small), or "
    "the frames of a liveness challenge do not show a live person doing what it asked "
    "(liveness_failed, with its reason)",
    429: 'API Gateway\'s stage throttling: {"message": "Too Many Requests"}',
    500: "an unexpected error (a bug): no details",
    503: "S3 or DynamoDB failed, or the model is not installed: retry later",
}
#: Statuses that API Gateway, not the app, may answer, in its own shape.
GATEWAY_STATUSES = frozenset({413, 429})
#: What every route behind the key can answer (401/403: the key; 429: the gateway; 503: the
#: key lookup itself is a DynamoDB read).
KEYED = (400, 401, 403, 429, 500, 503)
#: What a route that reads photos adds (404: an ``s3://`` photo that is not there).
PHOTOS = (404, 413, 415, 422)


def _error_classes() -> list[type[errors.FaceGateError]]:
    """The error vocabulary: every class of :mod:`facegate.errors` (subclasses elsewhere,
    such as a retry marker, carry their base's code)."""
    found, stack = [], [errors.FaceGateError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(c for c in cls.__subclasses__() if c.__module__ == errors.__name__)
    return found


def _status_of(cls: type[errors.FaceGateError]) -> int:
    """:func:`facegate.http_errors.status_for`, for a class rather than an instance."""
    return next((status for base, status in STATUS if issubclass(cls, base)), 500)


def error_codes(status: int) -> list[str]:
    """Every ``code`` the app may answer with ``status``: those of the error classes
    :data:`facegate.http_errors.STATUS` maps to it, plus :data:`APP_CODES`."""
    codes = {cls.code for cls in _error_classes() if _status_of(cls) == status}
    return sorted(codes | set(APP_CODES.get(status, ())))


def _error_schema(status: int) -> dict[str, Any]:
    """The body of an error answer with ``status``: the app's shape, ``code`` one of that
    status's codes; or API Gateway's, for the statuses it answers itself."""
    codes = error_codes(status)
    app_body: dict[str, Any] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string"},
                    **(
                        {
                            "reason": {
                                "type": "string",
                                "enum": list(errors.LivenessFailedError.REASONS),
                            }
                        }
                        if errors.LivenessFailedError.code in codes
                        else {}
                    ),
                },
            }
        },
    }
    if status not in GATEWAY_STATUSES:
        return app_body
    gateway = {"$ref": f"{COMPONENTS}{GATEWAY_ERROR}"}
    return {"anyOf": [app_body, gateway]} if codes else gateway


COMPONENTS = "#/components/schemas/"
GATEWAY_ERROR = "GatewayError"


def _component(status: int) -> str:
    return f"Error{status}"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a router or route: each status with its meaning, its codes and
    its body (a component :func:`openapi_schema` adds)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = error_codes(status)
        listed = f" ({', '.join(codes)})" if codes else ""
        schema = {"$ref": f"{COMPONENTS}{_component(status)}"}
        out[status] = {
            "description": MEANINGS[status] + listed,
            "content": {"application/json": {"schema": schema}},
        }
    return out


#: The body of FastAPI's own 422, which this app never answers (app.errors makes a request
#: FastAPI cannot parse a ``400 validation_error``).
_FASTAPI_422 = f"{COMPONENTS}HTTPValidationError"


def openapi_schema(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: FastAPI's schema with the error answers this app really gives.

    It adds the error bodies :func:`error_responses` refers to, and drops the 422 FastAPI
    documents on every route with parameters unless the route declares its own: here only
    the photo routes answer 422 (a face error, in the error shape). The others' would tell
    clients, and a schema checker, to expect a body this app never sends.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for methods in schema.get("paths", {}).values():
                for operation in methods.values():
                    answers = operation.get("responses", {})
                    body = answers.get("422", {}).get("content", {}).get("application/json", {})
                    if body.get("schema", {}).get("$ref") == _FASTAPI_422:
                        del answers["422"]
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            components[GATEWAY_ERROR] = {
                "type": "object",
                "description": "API Gateway's own answer to a request it refuses",
                "required": ["message"],
                "properties": {"message": {"type": "string"}},
            }
            components.update({_component(status): _error_schema(status) for status in MEANINGS})
        return app.openapi_schema or {}

    return openapi
