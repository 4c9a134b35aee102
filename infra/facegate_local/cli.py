"""The local stack's part of ``facegate``: the ``local`` commands and ``--local``.

Registered through the ``facegate.cli`` entry point group (``pyproject.toml``), so nothing
under ``facegate`` imports this package: ``facegate local up | down | status | demo |
invoke``, and the ``--local`` option of the cloud commands (upload, gallery, reembed, jobs),
which points them at the running stack instead of the ``FACEGATE_*`` settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from facegate.cli.extensions import CommandLine, Subcommands, Target
from facegate.cli.options import EXIT_ERROR, EXIT_NO_MATCH, EXIT_OK
from facegate.errors import FaceGateError

if TYPE_CHECKING:
    from facegate.settings import Settings


def register(cli: CommandLine) -> None:
    """The ``facegate.cli`` entry point."""
    cli.add_target(Target("local", "the running local stack", local_settings))
    cli.add_group(add_commands)


def local_settings() -> Settings:
    """Settings that point at the running local stack: its moto endpoint, region, bucket,
    tables and queues (with the stack operator's keys in the environment)."""
    from facegate.settings import Settings
    from facegate_local.config import LocalConfig, credential_environment
    from facegate_local.stack import repo_root, status

    config = LocalConfig.load(repo_root())
    state = status(config)
    if state is None:
        raise FaceGateError("the local stack is not running: 'facegate local up'")
    os.environ.update(credential_environment(state.operator()))
    template = config.template(state.endpoint_url)
    return Settings(
        aws_endpoint_url=state.endpoint_url,
        aws_region=state.region,
        bucket=state.resources["PhotoBucket"],
        table=state.resources["SubjectsTable"],
        keys_table=state.resources["ApiKeysTable"],
        jobs_queue_url=template.queue_url("JobsQueue"),
        ingest_queue_url=template.queue_url("IngestQueue"),
    )


def cmd_local(args: argparse.Namespace) -> int:
    from facegate_local import demo, stack
    from facegate_local.config import LocalConfig

    try:
        config = LocalConfig.load(stack.repo_root())
        if args.action == "up":
            state = stack.up(config)
            print(f"API      {state.api_url}")
            page = state.api_url.rstrip("/") + "/"
            print(f"Page     {page} (the webcam page: register, log in, identify)")
            print(f"API key  {state.api_key}")
            print(f"AWS      {state.endpoint_url} (moto)")
            for logical, name in state.resources.items():
                print(f"{logical:<16} {name}")
        elif args.action == "down":
            print("stopped" if stack.down(config) else "not running")
        elif args.action == "status":
            running = stack.status(config)
            shown = (
                {**running.__dict__, "memory": stack.memory(config, running)} if running else None
            )
            print(json.dumps(shown))
            return EXIT_OK if running else EXIT_NO_MATCH
        elif args.action == "invoke":
            print(json.dumps(stack.invoke(config, args.function, args.event)))
        elif args.action == "demo":
            return demo.main(config.root)
    except stack.StackError as exc:
        print(f"error: local_stack: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def add_commands(sub: Subcommands, targets: Sequence[Target]) -> None:
    local = sub.add_parser("local", help="the local stack (moto + the template's functions)")
    actions = local.add_subparsers(dest="action", required=True)
    for name, text in [
        ("up", "start it in the background; prints the API URL and key"),
        ("down", "stop it and everything it started"),
        ("status", "print its state and each function's peak memory as JSON (exit 1 when down)"),
        ("demo", "run the end-to-end demo over HTTP (starts and stops the stack)"),
    ]:
        actions.add_parser(name, help=text).set_defaults(func=cmd_local)
    p = actions.add_parser("invoke", help="run a template function on an event, in-process")
    p.add_argument("function", help="logical id in template.yaml, e.g. ApiFunction")
    p.add_argument("-e", "--event", type=Path, required=True)
    p.set_defaults(func=cmd_local)
