"""``GET /jobs/{job_id}`` straight from API Gateway: a light zip function (no torch).

Polling a job's progress is frequent and cheap; it should not wake the API's container image
(and pay its cold start) to read one DynamoDB item. The HTTP API routes this one path here;
auth and error answers are the same as the API's (x-api-key against stored hashes;
``{"error": {code, message}}`` with the shared status mapping).
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.common import validate_id
from facegate.errors import FaceGateError, UnauthorizedError
from facegate.http_errors import error_body, status_for
from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore

logger = Logger(service="facegate")
settings = get_settings()
_dynamodb = aws_client("dynamodb", settings)
jobs = JobStore(_dynamodb, settings.table)
keys = ApiKeyStore(_dynamodb, settings.table)


def _answer(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        if settings.auth_mode == "api_key":
            headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
            if not keys.is_valid(headers.get("x-api-key")):
                raise UnauthorizedError("missing or unknown x-api-key")
        job_id = validate_id((event.get("pathParameters") or {}).get("job_id"), "job_id")
        return _answer(200, jobs.get(job_id).to_dict())
    except FaceGateError as exc:
        return _answer(status_for(exc), error_body(exc.code, exc.message))
