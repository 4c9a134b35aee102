"""``GET /jobs/{job_id}`` straight from API Gateway: a light zip function (no torch).

Polling a job's progress is frequent and cheap; it should not wake the API's container image
(and pay its cold start) to read one DynamoDB item. The HTTP API routes this one path here,
to Powertools' ``APIGatewayHttpResolver``; auth and error answers are the same as the API's
(x-api-key against stored hashes, holding the scope :data:`facegate.storage.apikeys.ROUTE_SCOPES`
names for this route; ``{"error": {code, message}}`` with the status mapping of
``facegate.http_errors``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.common import validate_id
from facegate.errors import FaceGateError
from facegate.http_errors import error_body, status_for
from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore, route_scope
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore

logger = Logger(service="facegate")
settings = get_settings()
_dynamodb = aws_client("dynamodb", settings)
jobs = JobStore(_dynamodb, settings.table)
keys = ApiKeyStore(_dynamodb, settings.keys_table)
app = APIGatewayHttpResolver()


def _error(status: int, code: str, message: str) -> Response[dict[str, Any]]:
    return Response(status, content_types.APPLICATION_JSON, error_body(code, message))


#: This function answers one route; any other path it is sent needs the same scope (so a
#: key without it learns nothing from a 404 either).
SCOPE = route_scope("GET", "/jobs/{job_id}")


def require_api_key(router: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response:
    """The API's rule: with ``auth_mode=api_key`` every route needs a stored, unexpired key
    with the route's scope (401 without one, 403 when it lacks the scope)."""
    if settings.auth_mode == "api_key":
        keys.authorize(router.current_event.headers.get("x-api-key"), SCOPE)
    return next_middleware(router)


app.use(middlewares=[require_api_key])


@app.get("/jobs/<job_id>")
def get_job(job_id: str) -> dict[str, Any]:
    return jobs.get(validate_id(job_id, "job_id")).to_dict()


@app.exception_handler(FaceGateError)
def on_error(exc: FaceGateError) -> Response[dict[str, Any]]:
    return _error(status_for(exc), exc.code, exc.message)


@app.not_found
def on_unknown_route(_: NotFoundError) -> Response[dict[str, Any]]:
    return _error(404, "not_found", "Not Found")


# Never the event, whatever POWERTOOLS_LOGGER_LOG_EVENT says: events can carry photo keys
# (which name subjects), subject ids or API keys.
@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
