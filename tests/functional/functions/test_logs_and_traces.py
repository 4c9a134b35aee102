"""What the API function emits (log lines, EMF metrics, X-Ray segments) names no subject and
holds no embedding, score list or photo.

The request log is checked through the real app; the traces through the real Lambda handler
with tracing on as on Lambda, in an interpreter of its own: X-Ray patches libraries for the
whole process, which must not reach the other tests. There every sample event of ``events/``
(every route, in the order of ``events/expected.json``) goes through the handler, with the
Powertools settings that would log events and trace answers and errors switched on: the code
must not let a deployment setting put photos or subject ids in CloudWatch or X-Ray.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from tests_support import FAKE_CREDENTIALS, REAL_AWS_POINTERS, biometric_leaks, repo_root

from app import deps
from app.main import create_app
from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client

REPO = repo_root()
SUBJECT = "alice@example.com"
#: The subject ids of the sample events (``events/``), and the sample photos' names, which
#: the photos' keys hold (``probes/samples/person_a_1.jpg``).
EVENT_SUBJECTS = ("person_a", "person_b", "impostor_1", "impostor_2")


@pytest.fixture
def client(aws):
    deps._stores.cache_clear()
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: aws
    key = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table).create("logs")
    yield TestClient(app, headers={"x-api-key": key}, raise_server_exceptions=False)
    deps._stores.cache_clear()


def test_requests_are_logged_by_route_template_never_by_path(client, caplog):
    """A path names its subject; a path no route matched is logged without a route."""
    caplog.set_level(logging.INFO)
    assert client.get(f"/subjects/{SUBJECT}").status_code == 404  # unknown subject
    assert client.get(f"/subjects/{SUBJECT}/no-such-thing").status_code == 404  # no route
    requests = [r for r in caplog.records if r.getMessage() == "request"]
    assert [r.route for r in requests] == ["/subjects/{subject_id}", None]
    server = [r for r in caplog.records if not r.name.startswith("httpx")]  # not the client's
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in server)
    assert biometric_leaks(logged.encode(), [SUBJECT]) == []


def test_the_access_log_holds_the_route_key_never_the_path():
    """API Gateway's access log format (template.yaml): ``$context.path`` would name the
    subject of every request; the route key is the route's template."""
    from facegate_local.config import LocalConfig

    stage = LocalConfig.load(REPO).template().resources["HttpApiStage"]["Properties"]
    fields = json.loads(stage["AccessLogSettings"]["Format"])
    assert fields["routeKey"] == "$context.routeKey"
    assert not [v for v in fields.values() if "$context.path" in v or "rawPath" in v]


#: Runs in a fresh interpreter that looks like the API function's Lambda environment (see
#: ``_lambda_environment``): moto's AWS, the sample photos under ``probes/samples/``, then
#: every sample event through ``facegate_api.handler``. The X-Ray emitter keeps what it would
#: send to the daemon; the answers' status codes and the segments go to the file in argv[1].
TRACED_EVENTS = """
import json, sys
from pathlib import Path
from aws_xray_sdk.core import xray_recorder
from aws_xray_sdk.core.emitters.udp_emitter import UDPEmitter

class KeptEmitter(UDPEmitter):
    sent = []
    def send_entity(self, entity):
        self.sent.append(entity.serialize())

xray_recorder.configure(emitter=KeptEmitter())

class Context:
    function_name = "ApiFunction"
    memory_limit_in_mb = 3008
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    def __init__(self, request_id):
        self.aws_request_id = request_id

from moto import mock_aws
with mock_aws():
    from facegate.settings import get_settings
    from facegate.storage.apikeys import ApiKeyStore, create_keys_table
    from facegate.storage.clients import aws_client
    from facegate.storage.subjects import create_table
    settings = get_settings()
    create_table(aws_client("dynamodb", settings), settings.table)
    create_keys_table(aws_client("dynamodb", settings), settings.keys_table)
    aws_client("secretsmanager", settings).create_secret(
        Name=settings.erasure_key_secret, SecretString="a test erasure key, 32 bytes long"
    )
    s3 = aws_client("s3", settings)
    s3.create_bucket(Bucket=settings.bucket)
    for photo in sorted(Path(sys.argv[2]).glob("*.jpg")):
        s3.put_object(Bucket=settings.bucket, Key="probes/samples/" + photo.name,
                      Body=photo.read_bytes(), ContentType="image/jpeg")
    key = ApiKeyStore(aws_client("dynamodb", settings), settings.keys_table).create("traces")
    import facegate_api
    events = Path("events")
    statuses = []
    for entry in json.loads((events / "expected.json").read_text())["events"]:
        text = (events / entry["event"]).read_text().replace("LOCAL_API_KEY", key)
        answer = facegate_api.handler(json.loads(text), Context(entry["event"]))
        statuses.append([entry["event"], answer["statusCode"], entry["statusCode"]])
Path(sys.argv[1]).write_text(json.dumps({"statuses": statuses, "sent": KeptEmitter.sent}))
"""


def _lambda_environment() -> dict[str, str]:
    """The API function's environment on Lambda as X-Ray and Powertools see it (tracing on,
    one sampled trace), moto's fake keys, and every Powertools switch that would log or trace
    events, answers or errors turned on."""
    env = {k: v for k, v in os.environ.items() if k not in REAL_AWS_POINTERS}
    env.update(FAKE_CREDENTIALS)
    env.update(
        {
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONPATH": str(REPO / "functions" / "api"),
            "LAMBDA_TASK_ROOT": str(REPO / "functions" / "api"),
            "AWS_LAMBDA_FUNCTION_NAME": "ApiFunction",
            "_X_AMZN_TRACE_ID": "Root=1-6921de1b-6fb4bc6a087d36c19b349503;"
            "Parent=53995c3f42cd8ad8;Sampled=1",
            "FACEGATE_AUTH_MODE": "api_key",
            "POWERTOOLS_LOGGER_LOG_EVENT": "true",
            "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "true",
            "POWERTOOLS_TRACER_CAPTURE_ERROR": "true",
        }
    )
    for name in ("POWERTOOLS_TRACE_DISABLED", "AWS_SAM_LOCAL", "FACEGATE_AWS_ENDPOINT_URL"):
        env.pop(name, None)
    return env


@pytest.mark.slow
def test_the_sample_events_leave_no_biometric_data_in_logs_metrics_or_traces(tmp_path, faces_dir):
    out = tmp_path / "traced.json"
    done = subprocess.run(
        [sys.executable, "-c", TRACED_EVENTS, str(out), str(faces_dir)],
        capture_output=True,
        env=_lambda_environment(),
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:].decode(errors="replace")
    traced = json.loads(out.read_text())
    assert [s[1] for s in traced["statuses"]] == [s[2] for s in traced["statuses"]]
    handlers = [s for s in map(json.loads, traced["sent"]) if s["name"] == "## handler"]
    assert len(handlers) == len(traced["statuses"])  # tracing was on: one per invocation
    emitted = done.stdout + done.stderr + "\n".join(traced["sent"]).encode()
    assert b'"message":"request"' in done.stdout and b'"_aws":' in done.stdout
    assert biometric_leaks(emitted, EVENT_SUBJECTS) == []
