"""Cold start and peak memory, each against a baseline measured in the same run.

- Cold start: a fresh Python process from spawn to its first embedding returned (import
  FaceGate, load both models, decode/detect/align/embed one photo), on the default runtime
  (ONNX Runtime, no torch loaded) and on ``FACEGATE_RUNTIME=torch``, against a process that
  only runs ``import torch``.
- Peak RSS (``VmHWM`` from the child's own ``/proc/self/status``: ``ru_maxrss`` would not
  do, Linux carries it across ``fork`` and ``exec`` from the parent) of the API function (its
  handler module answering ``/compare`` events) and of the embedding job (its handler
  embedding a batch of uploads), AWS mocked in-process, against the ``import torch`` process.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The runtime a process gets without FACEGATE_RUNTIME (the settings' default).
DEFAULT_RUNTIME = "onnxruntime"

FIRST_EMBEDDING = """
import sys
from facegate.pipeline.face_pipeline import FacePipeline
FacePipeline().process(open(sys.argv[1], "rb").read())
"""

PEAK_MIB = """
def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
"""
TORCH_ONLY = PEAK_MIB + "import torch\nprint(peak_mib())\n"


def _run(args: list[str], runtime: str | None = None) -> tuple[float, str]:
    """Wall seconds from spawn to exit, and stdout, of one child process (on ``runtime``:
    ``FACEGATE_RUNTIME``, else the default)."""
    env = dict(os.environ)
    if runtime is not None:
        env["FACEGATE_RUNTIME"] = runtime
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: {done.stderr[-800:]}")
    return seconds, done.stdout


def cold_start(photo: Path, runs: int = 3) -> tuple[list[dict[str, object]], float]:
    """The cold-start rows (the default runtime, and torch's), and the ``import torch``
    process's peak RSS for the memory rows."""
    times: dict[str, list[float]] = {"default": [], "torch": []}
    torch_only, torch_rss = [], []
    for _ in range(runs):
        times["default"].append(_run([sys.executable, "-c", FIRST_EMBEDDING, str(photo)])[0])
        args = [sys.executable, "-c", FIRST_EMBEDDING, str(photo)]
        times["torch"].append(_run(args, runtime="torch")[0])
        seconds, out = _run([sys.executable, "-c", TORCH_ONLY])
        torch_only.append(seconds)
        torch_rss.append(int(out.split()[-1]))
    base = statistics.median(torch_only)
    rows = []
    for runtime, label in (("default", DEFAULT_RUNTIME), ("torch", "torch")):
        value = statistics.median(times[runtime])
        rows.append(
            {
                "section": "startup",
                "measure": f"cold start to first embedding, {label}",
                "unit": "s",
                "value": value,
                "baseline": base,
                "baseline_name": "python -c 'import torch'",
                "ratio": value / base,
                "higher_is_better": False,
                "notes": f"median of {runs} fresh processes",
            }
        )
    return rows, statistics.median(torch_rss)


HARNESS = (
    PEAK_MIB
    + """
import base64, importlib, json, os, sys
from pathlib import Path
from moto import mock_aws
repo, function, photo_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
repeats, runtime = int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, str(repo / "infra"))
from facegate_local.config import FAKE_CREDENTIALS, LocalConfig, function_environment
from facegate_local.resources import create_resources
from facegate_local.stack import LambdaContext
os.environ.update(FAKE_CREDENTIALS)
with mock_aws():
    import boto3
    config = LocalConfig.load(repo)
    template = config.template()
    names = ("dynamodb", "s3", "sqs", "secretsmanager")
    clients = {n: boto3.client(n, region_name=config.region) for n in names}
    create_resources(template, clients["dynamodb"], clients["s3"], clients["sqs"],
                     clients["secretsmanager"])
    env = function_environment(config, function, "")
    env["FACEGATE_AUTH_MODE"] = "none"
    env["FACEGATE_RUNTIME"] = runtime  # the template's is the default; a row may ask torch
    os.environ.update(env)
    photos = sorted(photo_dir.glob("*.jpg"))
    if function == "EmbedFunction":
        bucket = os.environ["FACEGATE_BUCKET"]
        for i, path in enumerate(photos):
            clients["s3"].put_object(Bucket=bucket, Key=f"uploads/bench/s{i}/{path.name}",
                                     Body=path.read_bytes())
        queue = template.physical["IngestQueue"]
        url = clients["sqs"].get_queue_url(QueueName=queue)["QueueUrl"]
        records = []
        while True:
            got = clients["sqs"].receive_message(QueueUrl=url, MaxNumberOfMessages=10)
            if not got.get("Messages"):
                break
            for m in got["Messages"]:
                if "s3:TestEvent" not in m["Body"]:
                    records.append({"messageId": m["MessageId"], "body": m["Body"],
                                    "receiptHandle": m["ReceiptHandle"], "eventSource": "aws:sqs"})
                clients["sqs"].delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        events = [{"Records": records}]
    else:
        pair = [base64.b64encode(p.read_bytes()).decode() for p in photos[:2]]
        body = json.dumps({"image_a": pair[0], "image_b": pair[1]})
        events = [{"version": "2.0", "routeKey": "$default", "rawPath": "/compare",
                   "rawQueryString": "", "isBase64Encoded": False, "body": body,
                   "headers": {"host": "x", "content-type": "application/json"},
                   "requestContext": {"http": {"method": "POST", "path": "/compare",
                                               "sourceIp": "127.0.0.1"},
                                      "requestId": "bench", "stage": "$default"}}] * repeats
    harness = peak_mib()
    spec = template.function(function)
    sys.path.insert(0, str(spec.code_dir))
    handler = getattr(importlib.import_module(spec.module), spec.attribute)
    for event in events:
        answer = handler(event, LambdaContext(function, config.region))
    peak = peak_mib()
    print(json.dumps({"harness_mib": harness, "peak_mib": peak, "answer": answer}))
"""
)


def handler_rss(function: str, photo_dir: Path, repeats: int, runtime: str) -> dict[str, object]:
    """Peak RSS (MiB) of a process running ``function``'s handler on ``runtime``, AWS mocked
    in-process.

    The harness (Python, boto3, moto holding the bucket) is measured just before the
    handler's module is imported and reported beside the peak.
    """
    args = [sys.executable, "-c", HARNESS, str(REPO), function, str(photo_dir), str(repeats)]
    _, out = _run([*args, runtime])
    return json.loads(out.strip().splitlines()[-1])


def memory_rows(photo_dir: Path, torch_rss: float) -> list[dict[str, object]]:
    """Peak RSS of the API function and of the embedding job, on each runtime."""
    photos = len(list(photo_dir.glob("*.jpg")))
    rows = []
    for runtime in (DEFAULT_RUNTIME, "torch"):
        api = handler_rss("ApiFunction", photo_dir, 10, runtime)
        if api["answer"]["statusCode"] != 200:
            raise RuntimeError(f"ApiFunction answered {str(api['answer'])[:300]}")
        job = handler_rss("EmbedFunction", photo_dir, 1, runtime)
        if job["answer"]["batchItemFailures"]:
            raise RuntimeError(f"EmbedFunction failed items: {job['answer']}")
        for measure, got, notes in (
            ("peak RSS, API function", api, "10 /compare events, two 640x480 photos each"),
            ("peak RSS, embedding job", job, f"one SQS batch of {photos} 640x480 uploads"),
        ):
            peak = float(got["peak_mib"])
            harness = f"harness (moto, boto3) {got['harness_mib']} MiB before import"
            rows.append(
                {
                    "section": "memory",
                    "measure": f"{measure}, {runtime}",
                    "unit": "MiB",
                    "value": peak,
                    "baseline": float(torch_rss),
                    "baseline_name": "python -c 'import torch'",
                    "ratio": peak / torch_rss,
                    "higher_is_better": False,
                    "notes": f"{notes}; {harness}",
                }
            )
    return rows
