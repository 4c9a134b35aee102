"""The local stack's long-running process: moto on 127.0.0.1, the resources, the functions.

Started by ``facegate local up`` in its own session (so ``down`` can stop it and everything
it started with one signal). It creates the template's queues, tables and bucket, each
function's IAM role (``roles``) and an operator, turns moto's IAM enforcement on, then runs
every triggered function in a process of its own with its role's credentials
(``runtime``: the API behind API Gateway's limits, the queue consumers behind their event
source mappings) and starts a fresh one when one dies. It writes the state file only once the
API answers, so a state file always describes a stack that is up.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from facegate_local.config import LocalConfig, StackState, function_environment
from facegate_local.resources import create_resources
from facegate_local.roles import (
    LOAD_MANAGED_POLICIES,
    authorise_dynamodb_by_table,
    authorise_secrets_by_id,
    authorise_sqs_batches,
    create_function_roles,
    create_operator,
    enforce_iam,
    record_authorisations,
)
from facegate_local.runtime import API_FUNCTION, INVOKE_PORT, ROUTES, SERVICE_CREDENTIALS
from facegate_local.stack import healthy
from facegate_local.template import Template

SAMPLE_PREFIX = "probes/samples/"


def sample_photos(root: Path) -> list[Path]:
    """The six sample photos: the team's shared ones if beside the checkout, else set-up's."""
    for folder in (root.parent / "shared" / "faces", root / ".cache" / "testdata" / "faces"):
        photos = sorted(folder.glob("*.jpg"))
        if photos:
            return photos
    return []


def serve(config: LocalConfig) -> None:
    """moto, the resources and roles, IAM on, then one process per triggered function."""
    import boto3
    from moto.server import ThreadedMotoServer

    from facegate.storage.apikeys import ApiKeyStore

    os.environ[LOAD_MANAGED_POLICIES] = "true"
    # moto stands in for AWS: its request lines (werkzeug's, at INFO) are the services' own
    # logs, not FaceGate's, and S3 paths name subjects (enrolments/<subject>/...). The stack's
    # log holds what the functions emit; moto's errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=config.moto_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{config.moto_port}"
    template = config.template(endpoint)
    env = function_environment(config, API_FUNCTION, endpoint)
    session = boto3.session.Session(region_name=config.region)
    client = functools.partial(session.client, endpoint_url=endpoint, **_fake_keys())
    dynamodb, s3, sqs = client("dynamodb"), client("s3"), client("sqs")
    resources = create_resources(template, dynamodb, s3, sqs, client("secretsmanager"))
    _drain_test_events(sqs, template)
    credentials = {
        function: keys.client_kwargs()
        for function, keys in create_function_roles(template, client("iam"), client("sts")).items()
    }
    credentials["operator"] = create_operator(client("iam")).client_kwargs()
    api_key = ApiKeyStore(dynamodb, env["FACEGATE_KEYS_TABLE"]).create("local")
    for photo in sample_photos(config.root):
        s3.put_object(
            Bucket=env["FACEGATE_BUCKET"], Key=SAMPLE_PREFIX + photo.name, Body=photo.read_bytes()
        )
    # Everything from here on is a request of a function (its role) or of the operator.
    config.authorisations_file.unlink(missing_ok=True)
    record_authorisations(config.authorisations_file)
    authorise_dynamodb_by_table()
    authorise_secrets_by_id()
    authorise_sqs_batches()
    enforce_iam()
    state = StackState(
        pid=os.getpid(),
        api_url=f"http://127.0.0.1:{config.api_port}",
        endpoint_url=endpoint,
        api_key=api_key,
        region=config.region,
        resources=resources,
        credentials=credentials,
    )
    supervisor = Supervisor(config, template, state)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        supervisor.start_all()
        supervisor.run(stop)
    finally:
        supervisor.stop_all()
        config.state_file.unlink(missing_ok=True)
        moto.stop()


def _fake_keys() -> dict[str, str]:
    """Setting up needs no keys moto knows: IAM is not enforced yet."""
    return {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


def triggered_functions(template: Template) -> list[str]:
    """The functions something starts on its own: the API's default route, the HTTP API's
    other routes, each SQS event source. (The schedule's runs with ``facegate local
    invoke``.)"""
    polled = {function for function, _, _ in template.sqs_sources()}
    routed = {route.function for route in template.http_routes()}
    return [API_FUNCTION, *sorted((polled | routed) - {API_FUNCTION})]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Supervisor:
    """Starts each function's process, starts a fresh one when one dies (a timeout, out of
    memory: Lambda's next invocation gets a new environment), stops them all at the end."""

    def __init__(self, config: LocalConfig, template: Template, state: StackState) -> None:
        self.config, self.template, self.state = config, template, state
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self.invoke_ports = {route.function: _free_port() for route in template.http_routes()}
        self.routes = [
            {
                "method": route.method,
                "path": route.path,
                "invoke_url": f"http://127.0.0.1:{self.invoke_ports[route.function]}"
                f"/2015-03-31/functions/{route.function}/invocations",
                "timeout_s": route.timeout_s,
            }
            for route in template.http_routes()
        ]

    def _start(self, function: str) -> None:
        env = {
            **os.environ,
            **function_environment(
                self.config, function, self.state.endpoint_url, self.state.credentials[function]
            ),
            SERVICE_CREDENTIALS: json.dumps(self.state.operator()),
        }
        if function == API_FUNCTION:
            env[ROUTES] = json.dumps(self.routes)
        if function in self.invoke_ports:
            env[INVOKE_PORT] = str(self.invoke_ports[function])
        self.processes[function] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "facegate_local.runtime",
                "--root",
                str(self.config.root),
                "--function",
                function,
            ],
            cwd=self.config.root,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        self.state.functions[function] = self.processes[function].pid

    def start_all(self) -> None:
        for function in triggered_functions(self.template):
            self._start(function)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: write the state file once the API answers, replace dead functions."""
        published = False
        while not stop.wait(0.25):
            for function, process in list(self.processes.items()):
                code = process.poll()
                if code is None:
                    continue
                self.restarts[function] = self.restarts.get(function, 0) + 1
                print(
                    f"{function} exited with {code}; starting a new environment "
                    f"(restart {self.restarts[function]})",
                    file=sys.stderr,
                    flush=True,
                )
                self._start(function)
                if published:
                    self.state.save(self.config.state_file)
            if not published and healthy(self.state.api_url):
                self.state.save(self.config.state_file)
                published = True

    def stop_all(self, timeout: float = 30.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _drain_test_events(sqs: Any, template: Template) -> None:
    """S3 sends an ``s3:TestEvent`` when notifications are configured; AWS's own event
    source mapping would hand it to the function, which ignores it. Drop it here."""
    for logical in template.of_type("AWS::SQS::Queue"):
        url = template.queue_url(logical)
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            if "s3:TestEvent" in message["Body"]:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def main() -> None:
    parser = argparse.ArgumentParser(description="run the FaceGate local stack (foreground)")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args()
    serve(LocalConfig.load(args.root.resolve()))


if __name__ == "__main__":
    main()
