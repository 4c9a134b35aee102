"""Embedding-job throughput (photos/second) on the local stack at several SQS batch sizes.

Not a test: prints a table. For each batch size a fresh local stack is started with
``IngestBatchSize`` set to it (as ``sam deploy --parameter-overrides`` would), N photos are
uploaded one by one as ``uploads/<gallery>/<subject>/<photo>``, and the clock stops when the
gallery's parts and rejects account for all of them: S3 notifications, SQS, the poller, the
real embedding function, Parquet part writes. Each row is compared, in the same run, with the
bare pipeline (``FacePipeline.process_many`` on the same bytes in memory, in batches of the
same size): the ratio is what the serverless plumbing costs on top of detection + embedding.

Photos: LFW images from ``../shared/lfw-dev`` when present (250x250, one face each), else the
six sample photos repeated. Run from the repository root:
``.venv/bin/python bench/ingest_bench.py [--photos 96] [--batch-sizes 1 10 32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "infra"))


def _photos(n: int) -> list[bytes]:
    lfw = REPO.parent / "shared" / "lfw-dev"
    paths = sorted(lfw.glob("*/*.jpg"))[:n] if lfw.is_dir() else []
    if not paths:
        samples = sorted((REPO / ".cache" / "testdata" / "faces").glob("*.jpg"))
        paths = [samples[i % len(samples)] for i in range(n)]
    return [p.read_bytes() for p in paths]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_stack_environment(batch: int) -> None:
    """A local stack of the bench's own (free ports, a fresh state folder), with
    ``IngestBatchSize`` set to ``batch``."""
    os.environ.update(
        FACEGATE_LOCAL_API_PORT=str(_free_port()),
        FACEGATE_LOCAL_MOTO_PORT=str(_free_port()),
        FACEGATE_LOCAL_STATE_DIR=tempfile.mkdtemp(),
        FACEGATE_LOCAL_PARAMETERS=f"IngestBatchSize={batch},IngestBatchWindow=1",
    )


def through_stack(photos: list[bytes], batch: int, timeout: float = 900.0) -> float:
    """Photos/second from first upload to the last row or reject written."""
    import boto3
    from facegate_local.config import LocalConfig
    from facegate_local.stack import down, up

    from facegate.storage.galleries import GalleryStore, summarise

    private_stack_environment(batch)
    config = LocalConfig.load(REPO)
    state = up(config)
    try:
        s3 = boto3.client(
            "s3", endpoint_url=state.endpoint_url, region_name=state.region, **state.operator()
        )
        bucket = state.resources["PhotoBucket"]
        store = GalleryStore(s3, bucket)
        started = time.perf_counter()
        for i, data in enumerate(photos):
            s3.put_object(Bucket=bucket, Key=f"uploads/bench/s{i % 50}/p{i}.jpg", Body=data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                summary = summarise(store, "bench")
                if summary["rows"] + sum(summary["rejects"].values()) >= len(photos):
                    return len(photos) / (time.perf_counter() - started)
            except Exception:
                pass
            time.sleep(0.5)
        raise SystemExit(f"batch {batch}: the job did not finish in {timeout:.0f} s")
    finally:
        down(config)


def bare_pipeline(photos: list[bytes], batch: int) -> float:
    from facegate.pipeline.face_pipeline import FacePipeline

    pipeline = FacePipeline()
    pipeline.warm_up()
    pipeline.process_many(photos[:4])
    started = time.perf_counter()
    for start in range(0, len(photos), batch):
        pipeline.process_many(photos[start : start + batch])
    return len(photos) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=96)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 32])
    args = parser.parse_args()
    photos = _photos(args.photos)
    rows = [(b, through_stack(photos, b), bare_pipeline(photos, b)) for b in args.batch_sizes]
    print(f"photos: {len(photos)}, single-photo uploads, local stack (moto + poller)")
    print("| IngestBatchSize | job photos/s | bare pipeline photos/s | ratio |")
    print("|---|---|---|---|")
    for size, job, base in rows:
        print(f"| {size} | {job:.1f} | {base:.1f} | {job / base:.2f} |")
    out = REPO / "bench" / "ingest_results.json"
    out.write_text(
        json.dumps([{"batch": s, "job": j, "pipeline": b} for s, j, b in rows], indent=2)
    )


if __name__ == "__main__":
    main()
