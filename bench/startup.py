"""Cold start and peak memory, each against a baseline measured in the same run.

- Cold start: a fresh Python process from spawn to its first embedding returned (import
  FaceGate, load both models, decode/detect/align/embed one photo; the child prints the
  wall clock then, so its exit, which a function's init never waits for, is not counted),
  on each runtime with the default detector (YuNet; no torch loaded) and on
  ``FACEGATE_RUNTIME=torch`` with MTCNN (all torch: what served before the graph runtimes),
  against a process that only runs
  ``import torch`` (timed the same way, to the end of the import).
- Peak RSS (``VmHWM`` from the child's own ``/proc/self/status``: ``ru_maxrss`` would not
  do, Linux carries it across ``fork`` and ``exec`` from the parent) of the API function (its
  handler module answering ``/compare`` events) and of the embedding job (its handler
  embedding a batch of uploads), AWS mocked in-process, against the ``import torch`` process.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The runtime a process gets without FACEGATE_RUNTIME (the settings' default).
DEFAULT_RUNTIME = "openvino"
RUNTIMES = ("openvino", "onnxruntime", "torch")
#: What each runtime's rows set besides FACEGATE_RUNTIME: the torch rows are the all-torch
#: pipeline (YuNet has no torch network; on torch it would run on ONNX Runtime).
RUNTIME_ENV = {"torch": {"FACEGATE_DETECTOR": "mtcnn"}}
#: How the rows name each runtime.
RUNTIME_LABEL = {"torch": "torch, mtcnn"}

#: As a function's process does it: load the models (``warm_up``, at module scope in the
#: handlers), then embed the first photo.
FIRST_EMBEDDING = """
import sys
from facegate.pipeline.face_pipeline import FacePipeline
pipeline = FacePipeline()
pipeline.warm_up()
pipeline.process(open(sys.argv[1], "rb").read())
import time
print("ready", time.time())
"""

PEAK_MIB = """
def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
"""
TORCH_ONLY = PEAK_MIB + (
    'import torch\nimport time\nprint("ready", time.time())\nprint(peak_mib())\n'
)


@dataclass(frozen=True)
class _Timed:
    """One child process: seconds from spawn to its "ready" line and to its exit."""

    ready_s: float
    exit_s: float
    stdout: str


def _run(args: list[str], runtime: str | None = None) -> _Timed:
    """One child process (on ``runtime``: ``FACEGATE_RUNTIME``, else the default), timed on
    the wall clock, which the child's ``time.time()`` shares: to the moment it printed
    ``ready`` and to its exit."""
    env = dict(os.environ)
    if runtime is not None:
        env |= {"FACEGATE_RUNTIME": runtime} | RUNTIME_ENV.get(runtime, {})
    started = time.time()
    done = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    ended = time.time()
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: {done.stderr[-800:]}")
    ready = next(line for line in done.stdout.splitlines() if line.startswith("ready "))
    return _Timed(float(ready.split()[1]) - started, ended - started, done.stdout)


def cold_start(photo: Path, runs: int = 3) -> tuple[list[dict[str, object]], float]:
    """The cold-start rows (each runtime), and the ``import torch`` process's peak RSS for
    the memory rows.

    A cold start ends at the first embedding (what a function's init phase waits for, not
    the process's exit); the baseline is the wall time of the command ``python -c 'import
    torch'``, as the issue's table measured it, exit included (torch's teardown is a large
    part of it: the notes give the import alone, and the ratio against that)."""
    times: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
    torch_wall, torch_import, torch_rss = [], [], []
    for _ in range(runs):
        for runtime in RUNTIMES:
            args = [sys.executable, "-c", FIRST_EMBEDDING, str(photo)]
            times[runtime].append(_run(args, runtime=runtime).ready_s)
        timed = _run([sys.executable, "-c", TORCH_ONLY])
        torch_wall.append(timed.exit_s)
        torch_import.append(timed.ready_s)
        torch_rss.append(int(timed.stdout.split()[-1]))
    base = statistics.median(torch_wall)
    imported = statistics.median(torch_import)
    rows = []
    for runtime in RUNTIMES:
        value = statistics.median(times[runtime])
        default = " (default)" if runtime == DEFAULT_RUNTIME else ""
        name = RUNTIME_LABEL.get(runtime, runtime)
        rows.append(
            {
                "section": "startup",
                "measure": f"cold start to first embedding, {name}{default}",
                "unit": "s",
                "value": value,
                "baseline": base,
                "baseline_name": "python -c 'import torch'",
                "ratio": value / base,
                "higher_is_better": False,
                "notes": (
                    f"median of {runs} fresh processes, to the first embedding; the baseline "
                    f"is the command's wall time, exit included; torch's import alone ends at "
                    f"{imported:.2f} s ({value / imported:.2f}x of that)"
                ),
            }
        )
    return rows, statistics.median(torch_rss)


HARNESS = (
    PEAK_MIB
    + """
import importlib, json, sys
from pathlib import Path
repo, module_dir, handler_name, events_file = sys.argv[1:5]
sys.path.insert(0, str(Path(repo) / "infra"))
from facegate_local.stack import LambdaContext
events = json.loads(Path(events_file).read_text())
harness = peak_mib()
sys.path.insert(0, module_dir)
module, attribute = handler_name.rsplit(".", 1)
handler = getattr(importlib.import_module(module), attribute)
imported = peak_mib()
for event in events:
    answer = handler(event, LambdaContext("bench", "us-east-1"))
print(json.dumps({"harness_mib": harness, "imported_mib": imported, "peak_mib": peak_mib(),
                  "answer": answer}))
"""
)


class MotoStack:
    """The template's buckets, tables, queues and secrets on a moto server in this (the
    bench's) process, so that a measured handler process holds only what a Lambda would:
    moto's state would otherwise be counted as the function's memory."""

    def __init__(self) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        sys.path.insert(0, str(REPO / "infra"))
        from facegate_local.config import FAKE_CREDENTIALS, LocalConfig
        from facegate_local.resources import create_resources

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.config = LocalConfig.load(REPO)
        self.template = self.config.template(self.endpoint)
        os.environ.update(FAKE_CREDENTIALS)
        self.clients = {
            name: boto3.client(name, region_name=self.config.region, endpoint_url=self.endpoint)
            for name in ("dynamodb", "s3", "sqs", "secretsmanager")
        }
        c = self.clients
        create_resources(self.template, c["dynamodb"], c["s3"], c["sqs"], c["secretsmanager"])

    def environment(self, function: str, runtime: str) -> dict[str, str]:
        from facegate_local.config import function_environment

        env = dict(os.environ) | function_environment(self.config, function, self.endpoint)
        # No API key: the rows measure the pipeline's memory, not DynamoDB's key look-up.
        own = {"FACEGATE_AUTH_MODE": "none", "FACEGATE_RUNTIME": runtime}
        return env | own | RUNTIME_ENV.get(runtime, {})

    def upload_events(self, photo_dir: Path, gallery: str) -> list[dict[str, object]]:
        """The photos uploaded into ``gallery``, and the SQS batch their S3 notifications
        make (the embedding function's event). A new gallery each time: the ingest ledger
        would skip uploads it has seen, and the row would measure an idle function."""
        bucket = self.template.physical["PhotoBucket"]
        for i, path in enumerate(sorted(photo_dir.glob("*.jpg"))):
            key = f"uploads/{gallery}/s{i}/{path.name}"
            self.clients["s3"].put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        sqs = self.clients["sqs"]
        url = sqs.get_queue_url(QueueName=self.template.physical["IngestQueue"])["QueueUrl"]
        records = []
        while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            for m in got:
                if "s3:TestEvent" not in m["Body"]:
                    records.append(
                        {
                            "messageId": m["MessageId"],
                            "body": m["Body"],
                            "receiptHandle": m["ReceiptHandle"],
                            "eventSource": "aws:sqs",
                        }
                    )
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return [{"Records": records}]

    def stop(self) -> None:
        self.server.stop()


def compare_events(photo_dir: Path, repeats: int) -> list[dict[str, object]]:
    """``repeats`` API Gateway events of ``POST /compare`` with two photos."""
    pair = [base64.b64encode(p.read_bytes()).decode() for p in sorted(photo_dir.glob("*.jpg"))[:2]]
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/compare",
        "rawQueryString": "",
        "isBase64Encoded": False,
        "body": json.dumps({"image_a": pair[0], "image_b": pair[1]}),
        "headers": {"host": "x", "content-type": "application/json"},
        "requestContext": {
            "http": {"method": "POST", "path": "/compare", "sourceIp": "127.0.0.1"},
            "requestId": "bench",
            "stage": "$default",
        },
    }
    return [event] * repeats


def handler_rss(
    stack: MotoStack, function: str, events: list[dict[str, object]], runtime: str
) -> dict[str, object]:
    """Peak RSS (MiB) of a fresh process running ``function``'s handler on ``events`` on
    ``runtime``; the harness (Python, boto3) is measured just before the handler's module is
    imported and reported beside the peak."""
    spec = stack.template.function(function)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(events, f)
    handler = f"{spec.module}.{spec.attribute}"
    args = [sys.executable, "-c", HARNESS, str(REPO), str(spec.code_dir), handler, f.name]
    done = subprocess.run(
        args, capture_output=True, text=True, check=False, env=stack.environment(function, runtime)
    )
    Path(f.name).unlink()
    if done.returncode:
        raise RuntimeError(f"{function} exited {done.returncode}: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_rows(photo_dir: Path, torch_rss: float) -> list[dict[str, object]]:
    """Peak RSS of the API function and of the embedding job, on each runtime, AWS on a
    moto server outside the measured process."""
    photos = len(list(photo_dir.glob("*.jpg")))
    rows = []
    stack = MotoStack()
    try:
        for runtime in RUNTIMES:
            api = handler_rss(stack, "ApiFunction", compare_events(photo_dir, 10), runtime)
            if api["answer"]["statusCode"] != 200:
                raise RuntimeError(f"ApiFunction answered {str(api['answer'])[:300]}")
            uploads = stack.upload_events(photo_dir, f"bench-{runtime}")
            job = handler_rss(stack, "EmbedFunction", uploads, runtime)
            if job["answer"]["batchItemFailures"]:
                raise RuntimeError(f"EmbedFunction failed items: {job['answer']}")
            if job["peak_mib"] <= job["imported_mib"]:
                raise RuntimeError(f"EmbedFunction on {runtime} embedded nothing")
            for measure, got, notes in (
                ("peak RSS, API function", api, "10 /compare events, two 640x480 photos each"),
                ("peak RSS, embedding job", job, f"one SQS batch of {photos} 640x480 uploads"),
            ):
                peak = float(got["peak_mib"])
                harness = f"harness (Python, boto3) {got['harness_mib']} MiB before import"
                rows.append(
                    {
                        "section": "memory",
                        "measure": f"{measure}, {RUNTIME_LABEL.get(runtime, runtime)}",
                        "unit": "MiB",
                        "value": peak,
                        "baseline": float(torch_rss),
                        "baseline_name": "python -c 'import torch'",
                        "ratio": peak / torch_rss,
                        "higher_is_better": False,
                        "notes": f"{notes}; {harness}",
                    }
                )
    finally:
        stack.stop()
    return rows
