"""Domain errors -> HTTP, in one place. Every error answer is ``{"error": {code, message}}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facegate import errors
from facegate.http_errors import error_body, status_for

UnauthorizedError = errors.UnauthorizedError
#: The code of an answer to an exception no handler took: a bug, never the caller's doing.
INTERNAL_ERROR = "internal_error"
#: Starlette's own HTTP errors by status; 400 is a body FastAPI could not parse.
HTTP_CODES = {400: "validation_error", 404: "not_found", 405: "method_not_allowed"}


class AnswerUnexpectedErrors:
    """ASGI middleware: an exception that no handler took becomes ``500 internal_error``.

    Not ``exception_handler(Exception)``: Starlette runs that handler in its outermost
    middleware and then re-raises the exception, so Mangum (on Lambda) and uvicorn (the local
    stack) log its traceback and text, which can hold subject ids or embeddings. Here the
    exception ends, and only its type is logged. Inside the request logging, so the request
    is still logged and counted, with its 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception as exc:  # the point: no exception leaves the app
            from app.observability import logger, record_reject

            record_reject(INTERNAL_ERROR)
            logger.error(
                "unexpected error", extra={"code": INTERNAL_ERROR, "error_type": type(exc).__name__}
            )
            if not started:  # else the answer is already under way: the server closes it
                answer = JSONResponse(error_body(INTERNAL_ERROR, "internal error"), status_code=500)
                await answer(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.FaceGateError)
    async def facegate_error(_: Request, exc: errors.FaceGateError) -> JSONResponse:
        from app.observability import logger, record_reject

        status = status_for(exc)
        record_reject(exc.code)
        if status >= 500:  # the code and type only: messages name subjects ("reading subject x")
            logger.warning(
                "request failed", extra={"code": exc.code, "error_type": type(exc).__name__}
            )
        extra = {k: v for k, v in exc.to_dict().items() if k not in ("code", "message")}
        return JSONResponse(error_body(exc.code, exc.message, **extra), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return JSONResponse(error_body("validation_error", message), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    app.add_middleware(AnswerUnexpectedErrors)
