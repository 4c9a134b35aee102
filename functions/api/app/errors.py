"""Domain errors -> HTTP, in one place. Every error answer is ``{"error": {code, message}}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from facegate import errors
from facegate.http_errors import error_body, status_for

UnauthorizedError = errors.UnauthorizedError


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.FaceGateError)
    async def facegate_error(_: Request, exc: errors.FaceGateError) -> JSONResponse:
        from app.observability import logger, record_reject

        status = status_for(exc)
        record_reject(exc.code)
        if status >= 500:
            logger.warning("request failed", extra={"code": exc.code, "error": exc.message})
        return JSONResponse(error_body(exc.code, exc.message), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return JSONResponse(error_body("validation_error", message), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)
