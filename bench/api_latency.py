"""/compare latency on the local stack and the API function's cold start, with baselines.

Not a test: prints a table. Each row is compared with a baseline measured in the same run,
on the same machine, so noisy neighbours affect both alike:

- ``/compare`` over HTTP (two photos in the request, warm stack) against the same two photos
  verified in-process by ``FacePipeline.verify``: the ratio is what HTTP, auth, JSON, logging
  and metrics add on top of the models.
- cold start (a fresh process importing the handler module, loading the models and answering
  one API Gateway event) against ``python -c "import torch"``.

Run: ``.venv/bin/python bench/api_latency.py [--requests 30]`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PAIR = ("person_b_1.jpg", "person_b_2.jpg")

COLD = """
import time, json
t0 = time.perf_counter()
import facegate_api
event = {"version": "2.0", "routeKey": "$default", "rawPath": "/health", "rawQueryString": "",
         "headers": {"host": "x"}, "isBase64Encoded": False,
         "requestContext": {"http": {"method": "GET", "path": "/health", "sourceIp": "127.0.0.1"},
                            "requestId": "cold", "stage": "$default"}}
class C:
    function_name = "ApiFunction"; memory_limit_in_mb = 3008; aws_request_id = "cold"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
answer = facegate_api.handler(event, C())
assert answer["statusCode"] == 200, answer
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _photos() -> list[bytes]:
    for folder in (REPO.parent / "shared" / "faces", REPO / ".cache" / "testdata" / "faces"):
        if (folder / PAIR[0]).is_file():
            return [(folder / name).read_bytes() for name in PAIR]
    raise SystemExit("no sample photos: run 'make setup'")


def in_process(photos: list[bytes], n: int) -> list[float]:
    from facegate.pipeline import FacePipeline

    pipeline = FacePipeline()
    pipeline.warm_up()
    pipeline.verify(*photos)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        pipeline.verify(*photos)
        times.append((time.perf_counter() - t) * 1000)
    return times


def over_http(photos: list[bytes], n: int) -> list[float]:
    sys.path.insert(0, str(REPO / "infra"))
    from facegate_local.config import LocalConfig
    from facegate_local.stack import down, up

    state_dir = tempfile.mkdtemp()
    os.environ.update(
        FACEGATE_LOCAL_API_PORT=str(_free_port()),
        FACEGATE_LOCAL_MOTO_PORT=str(_free_port()),
        FACEGATE_LOCAL_STATE_DIR=state_dir,
    )
    config = LocalConfig.load(REPO)
    state = up(config)
    try:
        files = {"image_a": ("a.jpg", photos[0]), "image_b": ("b.jpg", photos[1])}
        with httpx.Client(base_url=state.api_url, headers={"x-api-key": state.api_key}) as client:
            for _ in range(3):
                client.post("/compare", files=files, timeout=60).raise_for_status()
            times = []
            for _ in range(n):
                t = time.perf_counter()
                client.post("/compare", files=files, timeout=60).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
        return times
    finally:
        down(config)


def cold_start(runs: int) -> tuple[list[float], list[float]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "functions" / "api"),
        "FACEGATE_AUTH_MODE": "none",
    }
    handler, torch_only = [], []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", COLD], env=env, check=True, capture_output=True)
        handler.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        torch_only.append((time.perf_counter() - t) * 1000)
    return handler, torch_only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--cold-runs", type=int, default=3)
    args = parser.parse_args()
    photos = _photos()
    base = in_process(photos, args.requests)
    http = over_http(photos, args.requests)
    cold, torch_only = cold_start(args.cold_runs)
    rows = [
        ("/compare p50 (ms)", statistics.median(http), statistics.median(base)),
        ("/compare p95 (ms)", _percentile(http, 0.95), _percentile(base, 0.95)),
        ("cold start, median (ms)", statistics.median(cold), statistics.median(torch_only)),
    ]
    print(f"{'measure':<26}{'FaceGate':>12}{'baseline':>12}{'ratio':>8}")
    for name, value, baseline in rows:
        print(f"{name:<26}{value:>12.1f}{baseline:>12.1f}{value / baseline:>8.2f}")
    print("baselines: in-process FacePipeline.verify of the same two photos; `import torch`")
    print(json.dumps({name: round(value, 1) for name, value, _ in rows}))


if __name__ == "__main__":
    main()
