"""The app factory: builds the app and includes the routers; nothing else lives here."""

from __future__ import annotations

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.observability import install_request_logging
from app.openapi import openapi_schema
from app.routers import (
    collection_faces,
    collections,
    docs,
    faces,
    galleries,
    health,
    jobs,
    liveness,
    page,
    subjects,
)
from facegate import __version__


def create_app() -> FastAPI:
    app = FastAPI(
        title="FaceGate",
        version=__version__,
        description="Face enrolment, verification (1:1) and identification (1:N).",
        # FastAPI's own schema and pages answer anyone: app.routers.docs serves them behind
        # the key instead.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    # The error answers as this app gives them, not FastAPI's default 422 (app.openapi).
    app.openapi = openapi_schema(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    install_request_logging(app)
    app.include_router(health.router)
    app.include_router(subjects.router)
    app.include_router(collections.router)
    app.include_router(collection_faces.router)
    app.include_router(faces.router)
    app.include_router(liveness.router)
    app.include_router(galleries.router)
    app.include_router(jobs.router)
    app.include_router(docs.router)
    app.include_router(page.router)
    return app
