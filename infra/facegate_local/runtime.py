"""One function's execution environment: a process of its own, as Lambda gives each function.

The local stack's supervisor (``facegate_local.server``) starts one of these per function that
has a trigger (the API's HTTP route, an SQS event source), with the function's environment
and the credentials of the function's own IAM role, so a call its role does not allow fails
here as on AWS. Lambda's limits hold too:

- **memory**: the process's resident size is watched; past the function's ``MemorySize`` it
  dies as Lambda's sandbox does (``Runtime.OutOfMemory``) and the supervisor starts a fresh one;
  its peak is what ``facegate local status`` reports against the limit.
- **timeout**: an SQS invocation still running after the function's ``Timeout`` ends the
  process ("Task timed out"); its messages come back after the queue's visibility timeout. An
  HTTP request gets API Gateway's 503 after ``min(Timeout, 30 s)`` (a thread cannot be killed:
  the request's work runs on, its answer is dropped).
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as InvocationTimeout
from pathlib import Path
from typing import Any

from facegate_local.config import LocalConfig
from facegate_local.gateway import ApiGatewayLimits, RoutedFunction
from facegate_local.poller import QueuePoller
from facegate_local.stack import LambdaContext
from facegate_local.template import FunctionSpec, Template

API_FUNCTION = "ApiFunction"
#: API Gateway's HTTP API integration timeout.
INTEGRATION_TIMEOUT_S = 30.0
EXIT_TIMED_OUT = 124
EXIT_OUT_OF_MEMORY = 137


def resident_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), in MiB; 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


class MemoryWatch(threading.Thread):
    """Ends the process when its resident size passes the function's memory size."""

    def __init__(self, spec: FunctionSpec, interval: float = 0.2) -> None:
        super().__init__(name=f"memory-{spec.logical_id}", daemon=True)
        self.spec, self.interval = spec, interval

    def run(self) -> None:
        while True:
            used = resident_mib()
            if used > self.spec.memory_mb:
                print(
                    f"{self.spec.logical_id}: Runtime.OutOfMemory: {used:.0f} MiB used, "
                    f"MemorySize {self.spec.memory_mb} MB",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_OUT_OF_MEMORY)
            time.sleep(self.interval)


class TimedHandler:
    """The handler as Lambda runs it: with the function's context, for at most ``Timeout``.

    One invocation at a time (one environment runs one event). Past the timeout the process
    exits: Lambda throws the environment away, so nothing of the late invocation may land.
    """

    def __init__(self, spec: FunctionSpec, handler: Any, region: str) -> None:
        self.spec, self.handler, self.region = spec, handler, region
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=spec.logical_id)
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], _context: Any = None) -> Any:
        with self._lock:
            context = LambdaContext(
                self.spec.logical_id, self.region, self.spec.memory_mb, self.spec.timeout_s
            )
            future = self._pool.submit(self.handler, event, context)
            try:
                return future.result(timeout=self.spec.timeout_s)
            except InvocationTimeout:
                print(
                    f"{self.spec.logical_id}: Task timed out after {self.spec.timeout_s} seconds",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_TIMED_OUT)


def load_handler(template: Template, spec: FunctionSpec) -> Any:
    """Import the function's module from its code folder (its init phase) and return it."""
    if str(spec.code_dir) not in sys.path:
        sys.path.insert(0, str(spec.code_dir))
    return importlib.import_module(spec.module)


#: The operator's keys (JSON), for what the local stack does that no role does on AWS.
SERVICE_CREDENTIALS = "FACEGATE_LOCAL_SERVICE_CREDENTIALS"


def _sqs_client(config: LocalConfig, keys: dict[str, str] | None = None) -> Any:
    """The event source mapping's client: the function's role (from the environment), or
    ``keys``."""
    import boto3

    make: Any = boto3.session.Session(region_name=config.region).client
    return make("sqs", endpoint_url=os.environ["FACEGATE_AWS_ENDPOINT_URL"], **(keys or {}))


def run_pollers(config: LocalConfig, template: Template, spec: FunctionSpec) -> None:
    """Poll every SQS source of the function until SIGTERM."""
    module = load_handler(template, spec)
    handler = TimedHandler(spec, getattr(module, spec.attribute), config.region)
    sqs = _sqs_client(config)
    service = _sqs_client(config, json.loads(os.environ[SERVICE_CREDENTIALS]))
    pollers = [
        QueuePoller(
            sqs,
            template.queue_url(queue),
            template.attribute(queue, "Arn"),
            handler,
            spec.logical_id,
            config.region,
            batch_size=int(props.get("BatchSize", 10)),
            window=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            report_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            service_sqs=service,
        )
        for function, queue, props in template.sqs_sources()
        if function == spec.logical_id
    ]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    for poller in pollers:
        poller.start()
    print(f"{spec.logical_id}: ready, polling {len(pollers)} queue(s)", file=sys.stderr, flush=True)
    while not stopping.wait(0.5):
        pass
    for poller in pollers:
        poller.stop()
    for poller in pollers:
        poller.join(timeout=spec.timeout_s)


#: The port a routed function's Invoke endpoint listens on (set by the supervisor).
INVOKE_PORT = "FACEGATE_LOCAL_INVOKE_PORT"
#: JSON list of the API's routes to other functions (``RoutedFunction`` fields).
ROUTES = "FACEGATE_LOCAL_ROUTES"
FUNCTION_ERROR_HEADER = "X-Amz-Function-Error"


def serve_invocations(config: LocalConfig, template: Template, spec: FunctionSpec) -> None:
    """Lambda's Invoke API for one function, on ``FACEGATE_LOCAL_INVOKE_PORT``: what the local
    API Gateway calls for the routes the function integrates, until SIGTERM. An exception in
    the handler is answered as Lambda answers it (an error payload and
    ``X-Amz-Function-Error``), never with the exception's text in a log."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    module = load_handler(template, spec)
    handler = TimedHandler(spec, getattr(module, spec.attribute), config.region)

    class Invocations(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            event = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            error = False
            try:
                body = json.dumps(handler(event)).encode()
            except Exception as exc:  # the invocation failed, the environment lives on
                error = True
                body = json.dumps({"errorType": type(exc).__name__}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            if error:
                self.send_header(FUNCTION_ERROR_HEADER, "Unhandled")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            """No request lines: nothing to learn from them, and paths can name subjects."""

    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ[INVOKE_PORT])), Invocations)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"{spec.logical_id}: ready, invoked on {server.server_address[1]}", file=sys.stderr)
    server.serve_forever()
    server.server_close()


def serve_api(config: LocalConfig, template: Template, spec: FunctionSpec) -> None:
    """The API function behind API Gateway's limits, on the stack's API port, until SIGTERM;
    the routes of other functions go to their processes."""
    import uvicorn

    module = load_handler(template, spec)
    timeout = min(float(spec.timeout_s), INTEGRATION_TIMEOUT_S)
    routes = tuple(RoutedFunction(**r) for r in json.loads(os.environ.get(ROUTES, "[]")))
    app = ApiGatewayLimits(module.app, timeout=timeout, routes=routes)
    uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=config.api_port, log_level="warning")
    ).run()


def main() -> None:
    parser = argparse.ArgumentParser(description="run one function of the local stack")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--function", required=True)
    args = parser.parse_args()
    config = LocalConfig.load(args.root.resolve())
    template = config.template(os.environ["FACEGATE_AWS_ENDPOINT_URL"])
    spec = template.function(args.function)
    # ``kill -USR1 <pid>`` (``facegate local status`` lists the pids) writes every thread's
    # stack to the stack's log: how to see where a function that never gets ready is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    MemoryWatch(spec).start()
    if args.function == API_FUNCTION:
        serve_api(config, template, spec)
    elif INVOKE_PORT in os.environ:
        serve_invocations(config, template, spec)
    else:
        run_pollers(config, template, spec)


if __name__ == "__main__":
    main()
