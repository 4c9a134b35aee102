"""``/compare`` on the local stack under concurrent load, against the bare pipeline.

A local stack is started on free ports; ``CONCURRENCY`` httpx clients post two 640x480
photos to ``/compare`` back to back for ``SECONDS`` seconds (loopback, real HTTP, API key
checked against moto's DynamoDB). Baseline, in the same run: ``FacePipeline.verify`` of the
same two photos in this process, one call at a time, for as long. The ratios are what HTTP,
auth, JSON, logging and metrics (and queueing behind other requests) add to the models.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = 4
SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_process(pair: list[bytes], seconds: float) -> tuple[list[float], float]:
    from facegate.pipeline.face_pipeline import FacePipeline

    pipeline = FacePipeline()
    pipeline.warm_up()
    pipeline.verify(*pair)
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        pipeline.verify(*pair)
        times.append((time.perf_counter() - t) * 1000)
    return times, len(times) / (time.perf_counter() - started)


def under_load(
    pair: list[bytes], seconds: float, concurrency: int
) -> tuple[list[float], float, int]:
    """Latencies (ms), completed requests per second and failed requests."""
    sys.path.insert(0, str(REPO / "infra"))
    from facegate_local.config import LocalConfig
    from facegate_local.stack import down, up

    os.environ.update(
        FACEGATE_LOCAL_API_PORT=str(_free_port()),
        FACEGATE_LOCAL_MOTO_PORT=str(_free_port()),
        FACEGATE_LOCAL_STATE_DIR=tempfile.mkdtemp(),
    )
    config = LocalConfig.load(REPO)
    state = up(config)
    files = {"image_a": ("a.jpg", pair[0]), "image_b": ("b.jpg", pair[1])}
    times: list[float] = []
    failures = [0]
    lock = threading.Lock()
    try:
        headers = {"x-api-key": state.api_key}
        with httpx.Client(base_url=state.api_url, headers=headers, timeout=60) as client:
            for _ in range(2):
                client.post("/compare", files=files).raise_for_status()
        stop = time.perf_counter() + seconds

        def worker() -> None:
            with httpx.Client(base_url=state.api_url, headers=headers, timeout=60) as client:
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    answer = client.post("/compare", files=files)
                    with lock:
                        if answer.status_code == 200:
                            times.append((time.perf_counter() - t) * 1000)
                        else:
                            failures[0] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        down(config)
    return times, len(times) / elapsed, failures[0]


def rows(pair: list[bytes]) -> list[dict[str, object]]:
    base, base_rate = in_process(pair, SECONDS / 2)
    http, rate, failed = under_load(pair, SECONDS, CONCURRENCY)
    notes = f"{CONCURRENCY} concurrent clients for {SECONDS:.0f} s, {len(http)} requests"
    notes += f", {failed} failed" if failed else ", none failed"
    out = []
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        value, baseline = percentile(http, q), percentile(base, q)
        out.append(
            {
                "section": "api",
                "measure": f"/compare {name} latency",
                "unit": "ms",
                "value": value,
                "baseline": baseline,
                "baseline_name": "in-process FacePipeline.verify, serial",
                "ratio": value / baseline,
                "higher_is_better": False,
                "notes": notes,
            }
        )
    out.append(
        {
            "section": "api",
            "measure": "/compare requests/s",
            "unit": "req/s",
            "value": rate,
            "baseline": base_rate,
            "baseline_name": "in-process FacePipeline.verify, serial",
            "ratio": rate / base_rate,
            "higher_is_better": True,
            "notes": f"{notes}; in-process median {statistics.median(base):.0f} ms",
        }
    )
    return out
