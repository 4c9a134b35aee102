"""The schema and its pages (``/openapi.json``, ``/docs``, ``/redoc``), behind the API key.

FastAPI serves all three to anyone; in ``api_key`` mode that tells an unauthenticated caller
every route and field, and each request still starts the 3 GB function. Here they need the
key like every route but ``/health`` (IAM mode leaves auth to API Gateway, as everywhere).
A browser sends no ``x-api-key`` of its own, so the pages need a header extension there;
``functions/api/openapi.json`` is the same schema, committed, for reading offline.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from app.deps import require_api_key

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_api_key)])
SCHEMA = "/openapi.json"


def _schema_url(request: Request) -> str:
    """The schema's URL under the stage's root path, as FastAPI's own pages link it."""
    return request.scope.get("root_path", "").rstrip("/") + SCHEMA


@router.get(SCHEMA)
def schema(request: Request) -> dict[str, object]:
    return request.app.openapi()


@router.get("/docs")
def swagger(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=_schema_url(request), title="FaceGate - Swagger UI")


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=_schema_url(request), title="FaceGate - ReDoc")
