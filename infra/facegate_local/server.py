"""The local stack's long-running process: moto on 127.0.0.1, the resources, the API.

Started by ``facegate local up`` in its own session (so ``down`` can stop it and everything
it started with one signal). It writes the state file only once the API answers, so a state
file always describes a stack that is up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from facegate_local.config import LocalConfig, StackState, function_environment
from facegate_local.resources import create_resources

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

    from facegate.apikeys import ApiKeyStore

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=config.moto_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{config.moto_port}"
    env = function_environment(config, API_FUNCTION, endpoint)
    os.environ.update(env)
    session = boto3.session.Session(region_name=config.region)
    dynamodb = session.client("dynamodb", endpoint_url=endpoint)
    s3 = session.client("s3", endpoint_url=endpoint)
    template = config.template()
    resources = create_resources(template, dynamodb, s3)
    api_key = ApiKeyStore(dynamodb, env["FACEGATE_TABLE"]).create("local")
    for photo in sample_photos(config.root):
        s3.put_object(
            Bucket=env["FACEGATE_BUCKET"], Key=SAMPLE_PREFIX + photo.name, Body=photo.read_bytes()
        )

    spec = template.function(API_FUNCTION)
    sys.path.insert(0, str(spec.code_dir))
    module = importlib.import_module(spec.module)
    server = uvicorn.Server(
        uvicorn.Config(module.app, host="127.0.0.1", port=config.api_port, log_level="warning")
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
        config.state_file.unlink(missing_ok=True)
        moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="run the FaceGate local stack (foreground)")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args()
    serve(LocalConfig.load(args.root.resolve()))


if __name__ == "__main__":
    main()
