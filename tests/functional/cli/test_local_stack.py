"""The local stack: the template's resources on moto, its function served and invoked.

The demo test runs `facegate local demo` as `make demo` does, on free ports and a private
state directory, and checks that nothing is left running afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
from facegate_local.config import LocalConfig
from facegate_local.resources import create_resources, table_kwargs
from facegate_local.roles import permission_usage, read_authorisations

from facegate.storage.subjects import table_definition

REPO = Path(__file__).resolve().parents[3]
FACEGATE = Path(sys.executable).parent / "facegate"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_template_table_and_bucket_is_created(aws):
    from facegate.storage.clients import aws_client

    config = LocalConfig.load(REPO)
    template = config.template()
    dynamodb, s3 = aws_client("dynamodb", aws), aws_client("s3", aws)
    renamed = LocalConfig(root=REPO, resources={k: f"copy-{k.lower()}" for k in template.resources})
    created = create_resources(renamed.template(), dynamodb, s3)
    declared = set(template.of_type("AWS::DynamoDB::Table")) | set(
        template.of_type("AWS::S3::Bucket")
    )
    assert set(created) == declared and declared
    tables = set(dynamodb.list_tables()["TableNames"])
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    for logical, name in created.items():
        assert name in tables | buckets, logical
    photo_bucket = created["PhotoBucket"]
    assert s3.get_bucket_versioning(Bucket=photo_bucket)["Status"] == "Enabled"
    assert s3.get_bucket_encryption(Bucket=photo_bucket)["ServerSideEncryptionConfiguration"]
    ttl = dynamodb.describe_time_to_live(TableName=created["ApiKeysTable"])
    assert ttl["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "expires_at",
    }


def test_template_table_is_the_one_the_store_expects():
    """One definition, two places: the template's table and stores.table_definition agree."""
    template = LocalConfig.load(REPO).template()
    props = template.resources["SubjectsTable"]["Properties"]
    from_template = table_kwargs("t", props)
    expected = table_definition("t")
    for key in ("KeySchema", "BillingMode", "GlobalSecondaryIndexes", "SSESpecification"):
        assert from_template[key] == expected[key], key
    assert sorted(map(str, from_template["AttributeDefinitions"])) == sorted(
        map(str, expected["AttributeDefinitions"])
    )


def test_function_environment_resolves_the_template():
    config = LocalConfig.load(REPO)
    env = config.template().environment("ApiFunction")
    assert env["FACEGATE_BUCKET"] == "facegate-local"
    assert env["FACEGATE_TABLE"] == "facegate-subjects"
    assert env["FACEGATE_AUTH_MODE"] == "api_key"
    assert "FACEGATE_THRESHOLD" not in env  # !If [HasThreshold, ..., AWS::NoValue]


KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, {"SSEAlgorithm": "AES256"}),
        ({"PhotoKmsKeyArn": KEY}, {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": KEY}),
    ],
)
def test_local_bucket_encryption_follows_the_template_conditions(aws, parameters, expected):
    """The encryption is an ``Fn::If`` on the key parameter, ``AWS::NoValue`` dropping the
    key id without one."""
    from facegate.storage.clients import aws_client

    names = {
        "PhotoBucket": f"kms-{len(parameters)}-photos",
        "SubjectsTable": f"kms-{len(parameters)}",
        "ApiKeysTable": f"kms-{len(parameters)}-keys",
    }
    template = LocalConfig(root=REPO, resources=names, parameters=parameters).template()
    s3 = aws_client("s3", aws)
    create_resources(template, aws_client("dynamodb", aws), s3)
    (rule,) = s3.get_bucket_encryption(Bucket=names["PhotoBucket"])[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == expected
    assert rule.get("BucketKeyEnabled", False) is bool(parameters)


def test_local_event_sources_resolve_their_scaling_config():
    """The local poller reads each SQS event source's properties, nested maps included."""
    template = LocalConfig(root=REPO, parameters={"BatchMaxConcurrency": "4"}).template()
    sources = {function: props for function, _, props in template.sqs_sources()}
    assert set(sources) == {"EmbedFunction", "JobFunction", "AggregateFunction", "CompactFunction"}
    for props in sources.values():
        assert props["ScalingConfig"] == {"MaximumConcurrency": "4"}


def _stack_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FACEGATE_LOCAL_API_PORT": str(_free_port()),
        "FACEGATE_LOCAL_MOTO_PORT": str(_free_port()),
        "FACEGATE_LOCAL_STATE_DIR": str(tmp_path / "state"),
    }


def _survivors(tmp_path: Path) -> str:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return "\n".join(line for line in ps.splitlines() if str(tmp_path) in line)


def _first_part(cli, gallery: str) -> dict | None:
    """``facegate gallery show`` once the embedding function has written a part (2 minutes
    at most), else None."""
    for _ in range(240):
        attempt = cli("gallery", "show", gallery, "--local", "--json")
        if attempt.returncode == 0 and json.loads(attempt.stdout)["parts"]:
            return json.loads(attempt.stdout)
        time.sleep(0.5)
    return None


@pytest.mark.slow
def test_up_invoke_upload_down(tmp_path, faces_dir):
    env = _stack_env(tmp_path)
    cli = lambda *a: subprocess.run(  # noqa: E731
        [str(FACEGATE), *map(str, a)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    run = lambda *a: cli("local", *a)  # noqa: E731
    started = run("up")
    try:
        assert started.returncode == 0, started.stderr
        assert "API key  fg_" in started.stdout
        event = tmp_path / "health.json"
        event.write_text(json.dumps(_event("GET", "/health")))
        invoked = run("invoke", "ApiFunction", "-e", event)
        assert invoked.returncode == 0, invoked.stderr
        answer = json.loads(invoked.stdout.strip().splitlines()[-1])
        assert (
            answer["statusCode"] == 200 and json.loads(answer["body"])["model_id"] == "sface+dlib"
        )
        shown_status = run("status")
        assert shown_status.returncode == 0
        running = json.loads(shown_status.stdout)
        assert set(running["functions"]) == {
            "ApiFunction",
            "EmbedFunction",
            "JobFunction",
            "AggregateFunction",
            "CompactFunction",  # the compaction queue's consumer
            "JobStatusFunction",  # GET /jobs/{job_id}: its own route, its own process
        }
        for function, figures in running["memory"].items():
            assert 0 < figures["peak_mib"] < figures["limit_mb"], function

        # A function whose environment dies (out of memory, timed out) gets a new one, as on
        # Lambda: the upload below still goes through the embedding function.
        old_pid = running["functions"]["EmbedFunction"]
        os.kill(old_pid, signal.SIGKILL)
        for _ in range(100):
            now = json.loads(run("status").stdout)["functions"]["EmbedFunction"]
            if now != old_pid:
                break
            time.sleep(0.1)
        assert now != old_pid
        # The dead process's last long poll (1 s) may still be open in moto: a message that
        # arrived now would go to it and stay invisible for the queue's visibility timeout, as
        # on AWS. Upload once the new environment polls and that poll has surely ended.
        log = tmp_path / "state" / "stack.log"
        for _ in range(900):
            if log.read_text().count("EmbedFunction: ready") >= 2:
                break
            time.sleep(0.1)
        else:
            os.kill(now, signal.SIGUSR1)  # its threads' stacks, into the log
            time.sleep(1)
            pytest.fail("the new EmbedFunction never got ready:\n" + log.read_text()[-6000:])
        time.sleep(3)

        people = tmp_path / "people"
        for subject, name in [("ardern", "person_b_1"), ("sunak", "impostor_2")]:
            (people / subject).mkdir(parents=True)
            (people / subject / f"{name}.jpg").write_bytes((faces_dir / f"{name}.jpg").read_bytes())
        uploaded = cli("upload", people, "--gallery", "cli", "--local")
        assert uploaded.returncode == 0 and "uploads/cli/people.zip" in uploaded.stdout
        shown = _first_part(cli, "cli")
        assert shown is not None and shown["rows"] == 2 and shown["subjects"] == 2
        compacted = cli("gallery", "compact", "cli", "--local")
        assert compacted.returncode == 0 and json.loads(compacted.stdout)["rows_out"] == 2

        # Photos already in the bucket, which no notification announced: `facegate backfill`
        # queues them on the ingest queue and the same embedding function makes them rows.
        state = json.loads((tmp_path / "state" / "stack.json").read_text())
        s3 = boto3.client(
            "s3",
            endpoint_url=state["endpoint_url"],
            region_name=state["region"],
            **state["credentials"]["operator"],
        )
        bucket = state["resources"]["PhotoBucket"]
        for subject, name in [("ardern", "person_b_2"), ("sunak", "impostor_2")]:
            s3.put_object(
                Bucket=bucket,
                Key=f"archive/{subject}/{name}.jpg",
                Body=(faces_dir / f"{name}.jpg").read_bytes(),
            )
        queued = cli("backfill", f"s3://{bucket}/archive/", "--gallery", "old", "--local")
        assert queued.returncode == 0, queued.stderr
        assert json.loads(queued.stdout)["objects"] == 2
        backfilled = _first_part(cli, "old")
        assert backfilled is not None and backfilled["rows"] == 2

        job = tmp_path / "job"
        job.mkdir()
        (job / "probe.jpg").write_bytes((faces_dir / "person_b_2.jpg").read_bytes())
        (job / "manifest.csv").write_text(
            "probe,claimed_subject,gallery,mode\n"
            "probe.jpg,ardern,cli,verify\n"
            "probe.jpg,sunak,cli,verify\n"
            "probe.jpg,,cli,identify\n"
        )
        submitted = cli("jobs", "submit", job / "manifest.csv", "--job-id", "clijob", "--local")
        assert submitted.returncode == 0 and submitted.stdout.strip() == "clijob"
        watched = cli("jobs", "watch", "clijob", "--timeout", "240", "--local")
        assert watched.returncode == 0, watched.stderr[-2000:]
        status = json.loads(watched.stdout.strip().splitlines()[-1])
        assert status["status"] == "succeeded"
        counts = {k: v for k, v in status["counts"].items() if v}
        assert counts == {"match": 1, "no_match": 1, "identified": 1}
    finally:
        stopped = run("down")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert run("status").returncode == 1
    assert _survivors(tmp_path) == ""


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_nothing_behind(tmp_path):
    done = subprocess.run(
        [str(FACEGATE), "local", "demo"],
        capture_output=True,
        text=True,
        env=_stack_env(tmp_path),
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["enrolled"] == 2 and summary["compared"] == 15 and summary["matches"] == 2
    assert summary["identified"] == 2 and summary["deleted"] == 1 and summary["erased"] == 1
    assert summary["gallery_rows"] == 6 and summary["rejects"] == 1
    assert summary["job_rows"] == 6 and summary["job_correct"] == 6
    assert summary["invoked"] == 2 and summary["functions"] == 6
    assert summary["memory_within_limits"] is True
    assert summary["collections"] == 2 and summary["isolation_correct"] is True
    assert summary["exported_rows"] == 1
    assert _survivors(tmp_path) == ""
    config = LocalConfig(root=REPO, state_dir=tmp_path / "state")
    entries = read_authorisations(config.authorisations_file)
    assert entries, "the stack recorded no IAM decisions"
    usage = permission_usage(config.template(), entries)
    assert set(usage) == set(NOT_IN_THE_DEMO)
    for function, used in usage.items():
        assert used.refused == set(), (function, sorted(used.refused))
        assert used.used, f"{function} made no AWS call under its role"
        assert used.unused == set(NOT_IN_THE_DEMO[function]), (function, sorted(used.unused))
    operator = {e["principal"] for e in entries if ":user/" in e["principal"]}
    assert operator == {"arn:aws:iam::123456789012:user/operator"}
    from tests_support import biometric_leaks

    logged = _function_output(tmp_path / "state" / "stack.log", done.stdout)
    assert biometric_leaks(logged, _demo_subjects()) == []


#: The functions that log over the demo (JobStatusFunction answers without a line).
LOGGING_FUNCTIONS = {"EmbedFunction", "JobFunction", "AggregateFunction", "CompactFunction"}


def _function_output(stack_log: Path, demo_stdout: str) -> bytes:
    """Everything the functions wrote over the demo: the stack's log, where each function's
    process writes (with moto's errors, not its request lines), and the lines the two
    functions the demo invokes in its own process wrote among its report (JSON: Powertools'
    logs and EMF metrics). The report itself is the operator's console, which names the
    sample people by design. Checked not to be empty: every function that logs is in it, and
    the API's request lines."""
    emitted = []
    for line in demo_stdout.splitlines():
        if line.startswith("{") and ('"level":' in line or '"_aws":' in line):
            emitted.append(line)
    logged = stack_log.read_bytes() + "\n".join(emitted).encode()
    records = [json.loads(line) for line in logged.splitlines() if line.startswith(b"{")]
    assert {r.get("function_name") for r in records} >= LOGGING_FUNCTIONS
    assert sum(r.get("message") == "request" for r in records) >= 20
    return logged


def _demo_subjects() -> set[str]:
    """Every subject id the demo uses: the people it enrols, the gallery's (one folder per
    person of the sample photos in the zip photo set) and those its job claims."""
    from facegate_local.demo import ENROL, JOB_ROWS, identity
    from facegate_local.server import sample_photos

    claimed = {row.split(",")[1] for row, _ in JOB_ROWS} - {""}
    return set(ENROL) | {identity(p.stem) for p in sample_photos(REPO)} | claimed


#: Each role's grants that the demo does not exercise, and the code path that needs them. The
#: demo runs every function under its own role with IAM enforced; a grant not used there and
#: not listed here is one too many (template.yaml), a refused call one too few.
NOT_IN_THE_DEMO: dict[str, dict[str, str]] = {
    "ApiFunction": {
        "s3:GetObjectVersion": "s3:// probes pinned to a version",
        "s3:DeleteObjectVersion": "erasure of every photo version (moto checks DeleteObject)",
        "sqs:SendMessage*": "POST /reembed queues the re-embedding",
        "sqs:DeleteMessage": "an erasure deletes the person's dead-lettered messages",
        "sqs:ChangeMessageVisibility": "... and makes the others visible again at once",
    },
    "EmbedFunction": {
        "dynamodb:GetItem": "the ledger's entry of a source already claimed",
        "dynamodb:DeleteItem": "the ledger releases a claim whose processing failed",
        "s3:GetObjectVersion": "uploads are read at the notified version",
        "s3:ListBucket": "an upload deleted before processing is a 404, not a 403",
        "sqs:GetQueueAttributes": "the event source mapping (AWSLambdaSQSQueueExecutionRole)",
        "sqs:SendMessage*": "an archive over one chunk fans out to the ingest queue",
        "s3:ListBucketVersions": "POST /galleries/{g}/backfill: it lists a page per message",
    },
    "CompactFunction": {
        "sqs:SendMessage": "its asynchronous invocations' dead-letter queue",
        "sqs:SendMessage*": "a schedule queues the galleries' compactions (the demo invokes)",
        "sqs:DeleteMessage": "the compaction queue: the demo queues nothing there",
        "sqs:GetQueueAttributes": "the event source mapping (AWSLambdaSQSQueueExecutionRole)",
        # The demo invokes it by hand ({"gallery": "demo"}), which does not sweep (its
        # compaction deletes inbox markers: DeleteObject, used).
        "s3:ListBucketVersions": "the scheduled sweep of orphaned enrolment photos lists them",
        "s3:DeleteObjectVersion": "... and destroys every version of them",
    },
    "JobFunction": {
        "dynamodb:Query": "re-embedding drops the rows of deleted subjects (tombstones)",
        "s3:GetObjectVersion": "manifests and probes are read at the notified version",
        "s3:ListBucket": "a missing probe is a 404 (a failed row), not a 403",
        "sqs:GetQueueAttributes": "the event source mapping (AWSLambdaSQSQueueExecutionRole)",
        "s3:DeleteObject": "an erasure too large for a request runs here",
        "s3:DeleteObjectVersion": "... destroying every version that holds the person",
        "s3:ListBucketVersions": "... found by listing them",
        "sqs:ChangeMessageVisibility": "... and makes the dead letters it keeps visible again",
        "dynamodb:Scan": "a collection too large to delete in a request: its subjects listed",
        "dynamodb:BatchWriteItem": "... their items deleted",
        "dynamodb:DeleteItem": "... and the collection's item last",
    },
    "AggregateFunction": {
        "sqs:GetQueueAttributes": "the event source mapping (AWSLambdaSQSQueueExecutionRole)",
        "s3:DeleteObjectVersion": "results written while an erasure ran are replaced",
    },
    "JobStatusFunction": {},
}


#: Lambda's synchronous invocation request limit: the event's JSON, 6 MiB.
LAMBDA_EVENT_LIMIT = 6 * 1024 * 1024
BOUNDARY = "facegate-payload-test"


def _padded(photo: bytes, size: int) -> bytes:
    """``photo`` followed by zeros up to ``size`` bytes (decoders stop at the JPEG's end)."""
    return photo + b"\0" * (size - len(photo))


def _multipart(photo: bytes, base64_size: int) -> bytes:
    """A multipart ``image`` field whose body base64-encodes to about ``base64_size`` bytes,
    as API Gateway puts a binary body in the event."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    total = base64_size * 3 // 4
    return head + _padded(photo, total - len(head) - len(tail)) + tail


def _json(photo: bytes, size: int) -> bytes:
    """``{"image": "<base64>"}`` of about ``size`` bytes: text, so in the event as it is."""
    text = base64.b64encode(_padded(photo, (size - 13) * 3 // 4)).decode()
    return json.dumps({"image": text}).encode()


@pytest.mark.slow
def test_the_stack_refuses_requests_over_lambda_s_payload_limit(tmp_path, faces_dir):
    """On AWS a photo reaches the API inside the Lambda event (at most 6 MiB), base64-encoded
    when it comes as a multipart file: a request a few KB under that gets the API's answer,
    one a KB over gets API Gateway's 413, whichever way the photo is sent. Both photos are
    about 4.7 MB, under the app's own 4.5 MiB limit of inline photos per request."""
    env = _stack_env(tmp_path)
    run = lambda *a: subprocess.run(  # noqa: E731
        [str(FACEGATE), "local", *a], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    photo = (faces_dir / "person_a_1.jpg").read_bytes()
    cases = {
        "multipart": (f"multipart/form-data; boundary={BOUNDARY}", _multipart),
        "json": ("application/json", _json),
    }
    started = run("up")
    try:
        assert started.returncode == 0, started.stderr
        state = json.loads((tmp_path / "state" / "stack.json").read_text())
        with httpx.Client(
            base_url=state["api_url"], headers={"x-api-key": state["api_key"]}, timeout=120
        ) as client:
            for name, (content_type, build) in cases.items():
                under = build(photo, LAMBDA_EVENT_LIMIT - 8 * 1024)
                over = build(photo, LAMBDA_EVENT_LIMIT + 1024)
                answer = client.post(
                    "/embedding", content=under, headers={"content-type": content_type}
                )
                assert answer.status_code == 200, (name, answer.text[:300])
                assert len(answer.json()["faces"]) == 1, name
                refused = client.post(
                    "/embedding", content=over, headers={"content-type": content_type}
                )
                assert refused.status_code == 413, (name, refused.text[:300])
                assert refused.json() == {"message": "Request Entity Too Large"}, name
            assert client.get("/health").status_code == 200
    finally:
        stopped = run("down")
    assert stopped.returncode == 0
    assert _survivors(tmp_path) == ""


def _event(method: str, path: str) -> dict[str, object]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "localhost", "x-api-key": "LOCAL_API_KEY"},
        "requestContext": {
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
            },
            "requestId": "local-test",
            "routeKey": "$default",
            "stage": "$default",
        },
        "isBase64Encoded": False,
    }
