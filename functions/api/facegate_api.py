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


@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False
)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Events hold photos and subject ids, answers embeddings, scores and subject ids, and
    exception messages name subjects: none of them is logged or traced, whatever the
    ``POWERTOOLS_LOGGER_LOG_EVENT`` and ``POWERTOOLS_TRACER_CAPTURE_*`` settings say (the
    arguments win over the environment)."""
    return _asgi(event, context)
