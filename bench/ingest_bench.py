"""Embedding-job throughput (photos/second) at several SQS batch sizes, with baselines.

Not a test: prints a table. Single-photo uploads go through the real job (S3 notification
payloads, ledger claims, S3 reads, batched embedding, Parquet part writes) against moto
in-process; each batch size is compared, in the same run, with the bare pipeline
(``FacePipeline.process_many`` on the same bytes in memory): the ratio is what the job's
I/O and bookkeeping cost on top of detection and embedding.

Photos: LFW images from ``../shared/lfw-dev`` when present (250x250, one face each), else
the six sample photos repeated. Run from the repository root:
``.venv/bin/python bench/ingest_bench.py [--photos 96] [--batch-sizes 1 10 32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _photos(n: int) -> list[bytes]:
    lfw = REPO.parent / "shared" / "lfw-dev"
    paths = sorted(lfw.glob("*/*.jpg"))[:n] if lfw.is_dir() else []
    if not paths:
        samples = sorted((REPO / ".cache" / "testdata" / "faces").glob("*.jpg"))
        paths = [samples[i % len(samples)] for i in range(n)]
    return [p.read_bytes() for p in paths]


def _event(bucket: str, keys: list[str]) -> dict:
    records = []
    for i, key in enumerate(keys):
        s3 = {"bucket": {"name": bucket}, "object": {"key": key, "size": 1, "eTag": f"e{i}"}}
        body = json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": s3}]})
        records.append({"messageId": f"m{i}", "body": body, "eventSource": "aws:sqs"})
    return {"Records": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=96)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 32])
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    from moto import mock_aws

    from facegate.aws import aws_client
    from facegate.ingest import IngestLedger
    from facegate.ingest_job import EmbedJob, JobConfig
    from facegate.pipeline import FacePipeline
    from facegate.settings import Settings
    from facegate.stores import create_table

    photos = _photos(args.photos)
    pipeline = FacePipeline(Settings())
    pipeline.warm_up()
    pipeline.process_many(photos[:4])
    rows = []
    with mock_aws():
        settings = Settings(bucket="bench", table="bench")
        s3, db = aws_client("s3", settings), aws_client("dynamodb", settings)
        s3.create_bucket(Bucket="bench")
        create_table(db, "bench")
        for size in args.batch_sizes:
            keys = [f"uploads/b{size}/s{i % 50}/p{i}.jpg" for i in range(len(photos))]
            for key, data in zip(keys, photos, strict=True):
                s3.put_object(Bucket="bench", Key=key, Body=data)
            job = EmbedJob(
                pipeline,
                s3,
                aws_client("sqs", settings),
                IngestLedger(db, "bench"),
                JobConfig("bench", None, 200, 15 * 1024 * 1024),
            )
            t = time.perf_counter()
            for start in range(0, len(keys), size):
                job.handle(_event("bench", keys[start : start + size]))
            job_rate = len(keys) / (time.perf_counter() - t)
            t = time.perf_counter()
            for start in range(0, len(photos), size):
                pipeline.process_many(photos[start : start + size])
            base_rate = len(photos) / (time.perf_counter() - t)
            rows.append((size, job_rate, base_rate))
    print(f"photos: {len(photos)}; torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print("| batch size | job photos/s | bare pipeline photos/s | ratio |")
    print("|---|---|---|---|")
    for size, job_rate, base_rate in rows:
        print(f"| {size} | {job_rate:.1f} | {base_rate:.1f} | {job_rate / base_rate:.2f} |")
    out = REPO / "bench" / "ingest_results.json"
    out.write_text(
        json.dumps([{"batch": s, "job": j, "pipeline": b} for s, j, b in rows], indent=2)
    )


if __name__ == "__main__":
    main()
