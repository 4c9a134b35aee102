"""The local stack's function environments keep Lambda's limits: timeout and memory size.

Each limit is tested on a real process (the runtime ends it as Lambda ends a sandbox) or, for
the API, on the gateway middleware with an app that answers too late.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from asgi_requests import call, http_scope, status_of
from facegate_local.config import LocalConfig
from facegate_local.gateway import TIMED_OUT_BODY, ApiGatewayLimits
from facegate_local.runtime import EXIT_OUT_OF_MEMORY, EXIT_TIMED_OUT, resident_mib
from facegate_local.stack import LambdaContext

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_an_invocation_past_its_timeout_ends_the_environment() -> None:
    done = _run(
        """
        import time
        from facegate_local.runtime import TimedHandler
        from facegate_local.template import FunctionSpec
        spec = FunctionSpec("SlowFunction", None, "m", "handler", {}, memory_mb=512, timeout_s=1)
        handler = TimedHandler(spec, lambda event, context: time.sleep(30), "us-east-1")
        print(TimedHandler(spec, lambda e, c: c.get_remaining_time_in_millis(), "r")({}))
        handler({"Records": []})
        print("survived")
        """
    )
    assert done.returncode == EXIT_TIMED_OUT, done.stderr
    assert "SlowFunction: Task timed out after 1 seconds" in done.stderr
    remaining = int(done.stdout.split()[0])
    assert 0 < remaining <= 1000
    assert "survived" not in done.stdout


def test_a_function_over_its_memory_size_is_killed() -> None:
    done = _run(
        """
        import time
        from facegate_local.runtime import MemoryWatch, resident_mib
        from facegate_local.template import FunctionSpec
        base = resident_mib()
        spec = FunctionSpec("BigFunction", None, "m", "h", {}, memory_mb=int(base) + 64)
        MemoryWatch(spec, interval=0.05).start()
        time.sleep(0.3)
        print("under the limit", flush=True)
        hog = bytearray(200 * 1024 * 1024)
        hog[::4096] = b"x" * len(hog[::4096])
        time.sleep(5)
        print("survived")
        """
    )
    assert done.returncode == EXIT_OUT_OF_MEMORY, done.stderr
    assert "under the limit" in done.stdout and "survived" not in done.stdout
    assert "BigFunction: Runtime.OutOfMemory" in done.stderr


class Slow:
    """An ASGI app that answers after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def test_the_gateway_answers_503_when_the_function_is_too_slow() -> None:
    started = time.monotonic()
    sent = call(ApiGatewayLimits(Slow(5.0), timeout=0.2), http_scope(b"{}"), [b"{}"])
    assert status_of(sent) == (503, TIMED_OUT_BODY)
    assert json.loads(TIMED_OUT_BODY) == {"message": "Service Unavailable"}
    assert time.monotonic() - started < 3
    in_time = call(ApiGatewayLimits(Slow(0.0), timeout=5.0), http_scope(b"{}"), [b"{}"])
    assert status_of(in_time) == (200, b"{}")


def test_each_function_gets_the_template_s_memory_size_and_timeout() -> None:
    template = LocalConfig.load(REPO).template()
    api, aggregate = template.function("ApiFunction"), template.function("AggregateFunction")
    assert (api.memory_mb, api.timeout_s) == (3008, 30)  # parameter default; Globals' timeout
    assert (aggregate.memory_mb, aggregate.timeout_s) == (1024, 300)
    context = LambdaContext("ApiFunction", "us-east-1", api.memory_mb, api.timeout_s)
    assert context.memory_limit_in_mb == 3008
    assert 29_000 < context.get_remaining_time_in_millis() <= 30_000


def test_resident_memory_of_this_process_and_of_none() -> None:
    assert resident_mib() > 10
    assert resident_mib("self", "VmHWM") >= resident_mib()
    assert resident_mib(2**22 + 17) == 0.0
