"""Powertools Logger, Metrics and Tracer, shared by the app and the Lambda handler.

Each request is logged once as structured JSON (route, status, latency, error code) with the
API Gateway request id as correlation id; metrics go out as CloudWatch EMF lines, flushed per
request so the local stack and Lambda behave the same. Tracing switches itself off outside
Lambda (Powertools' own rule).

Nothing biometric leaves through these: the route is the route's template
(``/subjects/{subject_id}``), never the path, which names the subject (ids may be e-mail
addresses); metric names and dimensions are fixed words and error codes. The tracer patches no
library: X-Ray's botocore patch records each S3 call's object key (``enrolments/<subject>/...``)
and its HTTP patches record URLs, so a trace holds the handler's timing, cold start and fault
status only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from fastapi import FastAPI, Request, Response

SERVICE = "facegate"
logger = Logger(service=SERVICE)
metrics = Metrics(namespace="FaceGate", service=SERVICE)
tracer = Tracer(service=SERVICE, auto_patch=False)


def record_faces(detected: int) -> None:
    metrics.add_metric(name="FacesDetected", unit=MetricUnit.Count, value=detected)


def record_reject(code: str) -> None:
    metrics.add_metric(name=f"Rejected_{code}", unit=MetricUnit.Count, value=1)


def install_request_logging(app: FastAPI) -> None:
    @app.middleware("http")
    async def log_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        event = request.scope.get("aws.event") or {}
        correlation = (event.get("requestContext") or {}).get("requestId") or request.headers.get(
            "x-request-id"
        )
        if correlation:
            logger.set_correlation_id(correlation)
        response = await call_next(request)
        millis = (time.perf_counter() - started) * 1000
        # None for a path no route matched: its text may name a subject, as any path may.
        route = getattr(request.scope.get("route"), "path", None)
        logger.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "latency_ms": round(millis, 1),
            },
        )
        metrics.add_metric(name="LatencyMs", unit=MetricUnit.Milliseconds, value=millis)
        metrics.add_metric(
            name=f"Status{response.status_code // 100}xx", unit=MetricUnit.Count, value=1
        )
        metrics.flush_metrics()
        return response
