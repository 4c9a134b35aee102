"""The light job-status function answers API Gateway like the API does (auth, errors).

Requests are the sample event ``events/get-job-unknown.json`` (an HTTP API payload 2.0
event, as ``sam local invoke`` sends it) with its path and key swapped, through the real
handler module on moto.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from datetime import UTC, datetime, timedelta

import pytest
from facegate_local.stack import LambdaContext
from tests_support import repo_root

from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore, hash_key
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import to_attributes
from facegate.storage.jobs import JobStore

SAMPLE = json.loads((repo_root() / "events" / "get-job-unknown.json").read_text())


@pytest.fixture(scope="module")
def status_module(aws):
    get_settings.cache_clear()
    path = repo_root() / "functions" / "status" / "facegate_status.py"
    spec = importlib.util.spec_from_file_location("facegate_status_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    get_settings.cache_clear()


def _event(path: str, key: str | None, method: str = "GET") -> dict[str, object]:
    event = copy.deepcopy(SAMPLE)
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    if key is None:
        del event["headers"]["x-api-key"]
    else:
        event["headers"]["x-api-key"] = key
    return event


@pytest.fixture(scope="module")
def call(aws, status_module):
    key = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table).create("status")
    context = LambdaContext("JobStatusFunction", "us-east-1")

    def call(path: str, api_key: str | None = key, method: str = "GET"):
        answer = status_module.handler(_event(path, api_key, method), context)
        assert answer["headers"]["Content-Type"] == "application/json"
        return answer["statusCode"], json.loads(answer["body"])

    return call


def test_status_of_a_job(aws, call):
    JobStore(aws_client("dynamodb", aws), aws.table).create("poll", rows=4, chunks=2, failed_rows=0)
    status, body = call("/jobs/poll")
    assert status == 200 and body["status"] == "running" and body["chunks"] == 2
    assert body["job_id"] == "poll" and body["chunks_done"] == 0


def test_errors_have_the_api_body_and_status(call):
    assert call("/jobs/nothing") == (
        404,
        {"error": {"code": "unknown_job", "message": "unknown job 'nothing'"}},
    )
    assert call("/jobs/poll", None) == (
        401,
        {"error": {"code": "unauthorized", "message": "missing x-api-key header"}},
    )
    assert call("/jobs/poll", "not-a-key")[0] == 401
    status, body = call("/jobs/bad id!")
    assert status == 400 and body["error"]["code"] == "validation_error"
    status, body = call("/jobs", method="GET")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert call("/jobs/poll", method="DELETE")[1]["error"]["code"] == "not_found"


def test_job_status_needs_an_unexpired_key_with_the_admin_scope(aws, call):
    """The status function checks scopes as the API does: ``GET /jobs/{id}`` is ``admin``."""
    store = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)
    JobStore(aws_client("dynamodb", aws), aws.table).create(
        "scoped", rows=1, chunks=1, failed_rows=0
    )
    for scopes in (["verify"], ["enrol"], ["verify", "enrol"]):
        status, body = call("/jobs/scoped", store.create("not-admin", scopes))
        assert (status, body["error"]["code"]) == (403, "insufficient_scope"), scopes
        assert "'admin' scope" in body["error"]["message"]
    status, body = call("/jobs/scoped", store.create("ops", ["admin"]))
    assert status == 200 and body["job_id"] == "scoped"
    expired = store.issue("old", ["admin"], datetime.now(UTC) + timedelta(days=1))
    aws_client("dynamodb", aws).update_item(  # as if its expiry had passed, before the TTL
        TableName=aws.keys_table,
        Key=to_attributes({"pk": hash_key(expired.key)}),
        UpdateExpression="SET expires_at = :t",
        ExpressionAttributeValues=to_attributes({":t": int(datetime.now(UTC).timestamp()) - 60}),
    )
    status, body = call("/jobs/scoped", expired.key)
    assert (status, body["error"]["code"]) == (401, "unauthorized")


def test_the_sample_event_as_sam_sends_it(aws, status_module):
    """``events/get-job-unknown.json`` unchanged but for its key placeholder."""
    event = copy.deepcopy(SAMPLE)
    keys = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)
    event["headers"]["x-api-key"] = keys.create("s")
    answer = status_module.handler(event, LambdaContext("JobStatusFunction", "us-east-1"))
    assert answer["statusCode"] == 404
    assert json.loads(answer["body"])["error"]["code"] == "unknown_job"
