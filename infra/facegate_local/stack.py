"""``facegate local up | down | status | invoke``: lifecycle of the local stack.

``up`` starts ``facegate_local.server`` as a new session in the background and returns once
the API answers; ``down`` signals that whole session (moto, uvicorn, everything) and waits for
it to go. ``invoke`` runs a function of the template in this process, on an event file,
against the running stack (what ``sam local invoke`` does in a container).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from facegate_local.config import LocalConfig, StackState, function_environment
from facegate_local.gateway import LAMBDA_EVENT_LIMIT

API_KEY_PLACEHOLDER = "LOCAL_API_KEY"


class StackError(RuntimeError):
    """The local stack is not in the state the command needs."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(config: LocalConfig) -> StackState | None:
    state = StackState.load(config.state_file)
    if state is not None and not _alive(state.pid):
        config.state_file.unlink(missing_ok=True)
        return None
    return state


def up(config: LocalConfig, timeout: float = 180.0) -> StackState:
    """Start the stack in the background; returns its state once ``/health`` answers."""
    running = status(config)
    if running is not None:
        return running
    config.state_dir.mkdir(parents=True, exist_ok=True)
    log = open(config.state_dir / "stack.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "facegate_local.server", "--root", str(config.root)],
        cwd=config.root,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (config.state_dir / "stack.log").read_text()[-2000:]
            raise StackError(f"the local stack exited with {process.returncode}:\n{tail}")
        state = StackState.load(config.state_file)
        if state is not None and state.pid == process.pid and healthy(state.api_url):
            return state
        time.sleep(0.25)
    _stop_session(process.pid)
    raise StackError(f"the local stack did not come up within {timeout:.0f} s")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def down(config: LocalConfig, timeout: float = 30.0) -> bool:
    """Stop the stack and everything it started; False when none was running."""
    state = status(config)
    if state is None:
        return False
    _stop_session(state.pid, timeout)
    config.state_file.unlink(missing_ok=True)
    return True


def _stop_session(pid: int, timeout: float = 30.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        _reap(pid)
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        _reap(pid)


def _reap(pid: int) -> None:
    """Collect the child's exit status if this process started it (else it is init's)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools read, with the
    function's memory size and the time left before its timeout."""

    def __init__(
        self, function_name: str, region: str, memory_mb: int = 3008, timeout_s: float = 30.0
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.invoked_function_arn = f"arn:aws:lambda:{region}:123456789012:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def invoke(config: LocalConfig, logical_id: str, event_path: Path) -> dict[str, Any]:
    """Run ``logical_id``'s handler on the event, in this process, against the stack, with
    the function's role (what ``sam local invoke`` does in a container).

    An event over Lambda's synchronous payload limit is refused, as ``aws lambda invoke``
    would be."""
    payload = event_path.read_text()
    if len(payload.encode()) > LAMBDA_EVENT_LIMIT:
        raise StackError(
            f"{event_path} is over Lambda's {LAMBDA_EVENT_LIMIT} byte invocation payload limit"
        )
    state = status(config)
    if state is None:
        raise StackError("the local stack is not running: start it with 'facegate local up'")
    spec = config.template().function(logical_id)
    keys = state.credentials.get(logical_id)
    if keys is None:
        raise StackError(f"the local stack has no role for {logical_id}")
    os.environ.update(function_environment(config, logical_id, state.endpoint_url, keys))
    event = json.loads(payload.replace(API_KEY_PLACEHOLDER, state.api_key))
    sys.path.insert(0, str(spec.code_dir))
    handler = getattr(importlib.import_module(spec.module), spec.attribute)
    return handler(event, LambdaContext(logical_id, config.region, spec.memory_mb, spec.timeout_s))


def memory(config: LocalConfig, state: StackState) -> dict[str, dict[str, float]]:
    """Each running function's peak resident memory (MiB) against its ``MemorySize``: the
    envelope Lambda enforces, measured on the function's own process."""
    from facegate_local.runtime import resident_mib

    template = config.template()
    return {
        function: {
            "peak_mib": round(resident_mib(pid, "VmHWM"), 1),
            "limit_mb": template.function(function).memory_mb,
        }
        for function, pid in state.functions.items()
    }


def repo_root(start: Path | None = None) -> Path:
    """The checkout holding template.yaml: the current directory or one of its parents."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "template.yaml").is_file():
            return folder
    raise StackError("no template.yaml here or above: run from the FaceGate checkout")
