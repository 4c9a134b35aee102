"""Lambda entry point of the API function: Mangum adapts API Gateway (HTTP API, payload 2.0).

The pipeline is loaded at module scope, during the Lambda init phase, so no request pays for
model loading. Powertools adds the Lambda context to every log line and traces the handler.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from mangum import Mangum

from app.deps import get_pipeline
from app.main import create_app
from app.observability import logger, tracer

get_pipeline()
app = create_app()
_asgi = Mangum(app, lifespan="off")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _asgi(event, context)
