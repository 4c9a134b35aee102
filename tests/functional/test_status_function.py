"""The light job-status function answers API Gateway like the API does (auth, errors)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from facegate_local.stack import LambdaContext
from tests_support import repo_root

from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client
from facegate.storage.jobs import JobStore


@pytest.fixture(scope="module")
def status_module(aws):
    path = repo_root() / "functions" / "status" / "facegate_status.py"
    spec = importlib.util.spec_from_file_location("facegate_status", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(job_id: str, key: str | None) -> dict[str, object]:
    headers = {"host": "api"} | ({"x-api-key": key} if key else {})
    return {
        "version": "2.0",
        "routeKey": "GET /jobs/{job_id}",
        "rawPath": f"/jobs/{job_id}",
        "headers": headers,
        "pathParameters": {"job_id": job_id},
        "requestContext": {"http": {"method": "GET", "path": f"/jobs/{job_id}"}},
    }


def test_status_auth_and_errors(aws, status_module):
    key = ApiKeyStore(aws_client("dynamodb", aws), aws.table).create("status")
    JobStore(aws_client("dynamodb", aws), aws.table).create("poll", rows=4, chunks=2, failed_rows=0)
    context = LambdaContext("JobStatusFunction", "us-east-1")

    def call(job_id, api_key=key):
        answer = status_module.handler(_event(job_id, api_key), context)
        return answer["statusCode"], json.loads(answer["body"])

    status, body = call("poll")
    assert status == 200 and body["status"] == "running" and body["chunks"] == 2
    assert call("ghost")[0] == 404 and call("ghost")[1]["error"]["code"] == "unknown_job"
    assert call("poll", None) == (
        401,
        {"error": {"code": "unauthorized", "message": "missing or unknown x-api-key"}},
    )
    assert call("bad id!")[1]["error"]["code"] == "validation_error"
