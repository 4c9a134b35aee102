"""The local stack's long-running process: moto on 127.0.0.1, the resources, the API.

Started by ``facegate local up`` in its own session (so ``down`` can stop it and everything
it started with one signal). It writes the state file only once the API answers, so a state
file always describes a stack that is up. The API is served behind the request limits of API
Gateway and Lambda (``gateway``), as on AWS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from facegate_local.config import LocalConfig, StackState, function_environment
from facegate_local.gateway import ApiGatewayLimits
from facegate_local.poller import QueuePoller
from facegate_local.resources import create_resources
from facegate_local.template import Template

SAMPLE_PREFIX = "samples/"
API_FUNCTION = "ApiFunction"


def sample_photos(root: Path) -> list[Path]:
    """The six sample photos: the team's shared ones if beside the checkout, else set-up's."""
    for folder in (root.parent / "shared" / "faces", root / ".cache" / "testdata" / "faces"):
        photos = sorted(folder.glob("*.jpg"))
        if photos:
            return photos
    return []


def serve(config: LocalConfig) -> None:
    import boto3
    import uvicorn
    from moto.server import ThreadedMotoServer

    from facegate.storage.apikeys import ApiKeyStore

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=config.moto_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{config.moto_port}"
    template = config.template(endpoint)
    # One process hosts every function, so it gets the union of their environments.
    for logical in template.of_type("AWS::Serverless::Function"):
        os.environ.update(function_environment(config, logical, endpoint))
    env = function_environment(config, API_FUNCTION, endpoint)
    session = boto3.session.Session(region_name=config.region)
    dynamodb = session.client("dynamodb", endpoint_url=endpoint)
    s3 = session.client("s3", endpoint_url=endpoint)
    sqs = session.client("sqs", endpoint_url=endpoint)
    resources = create_resources(template, dynamodb, s3, sqs)
    _drain_test_events(sqs, template)
    api_key = ApiKeyStore(dynamodb, env["FACEGATE_TABLE"]).create("local")
    for photo in sample_photos(config.root):
        s3.put_object(
            Bucket=env["FACEGATE_BUCKET"], Key=SAMPLE_PREFIX + photo.name, Body=photo.read_bytes()
        )

    pollers = [_poller(template, sqs, config.region, *source) for source in template.sqs_sources()]
    for poller in pollers:
        poller.start()
    module = _load(template, API_FUNCTION)
    # What API Gateway and Lambda refuse (body over 10 MiB, event over 6 MiB) never reaches
    # the app, as on AWS.
    app = ApiGatewayLimits(module.app)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=config.api_port, log_level="warning")
    )
    state = StackState(
        pid=os.getpid(),
        api_url=f"http://127.0.0.1:{config.api_port}",
        endpoint_url=endpoint,
        api_key=api_key,
        region=config.region,
        resources=resources,
    )
    original_startup = server.startup

    async def startup(sockets: list | None = None) -> None:
        await original_startup(sockets)
        state.save(config.state_file)

    server.startup = startup  # type: ignore[method-assign]
    try:
        server.run()
    finally:
        for poller in pollers:
            poller.stop()
        for poller in pollers:
            poller.join(timeout=30)
        config.state_file.unlink(missing_ok=True)
        moto.stop()


def _load(template: Template, logical_id: str) -> Any:
    spec = template.function(logical_id)
    if str(spec.code_dir) not in sys.path:
        sys.path.insert(0, str(spec.code_dir))
    return importlib.import_module(spec.module)


def _poller(
    template: Template, sqs: Any, region: str, function: str, queue: str, props: dict[str, Any]
) -> QueuePoller:
    """An SQS event source mapping of the template, with its batch settings."""
    spec = template.function(function)
    handler = getattr(_load(template, function), spec.attribute)
    return QueuePoller(
        sqs,
        template.queue_url(queue),
        template.attribute(queue, "Arn"),
        handler,
        function,
        region,
        batch_size=int(props.get("BatchSize", 10)),
        window=float(props.get("MaximumBatchingWindowInSeconds", 0)),
        report_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
    )


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
