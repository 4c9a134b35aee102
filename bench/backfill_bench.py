"""Backfill of photos already in S3 on the local stack: photos/minute against the bare pipeline.

Not a test: prints one row and writes ``bench/backfill_results.json``. A fresh local stack;
``--photos`` 250x250 one-face photos (``bench/photos.py``, from the registry's sample photos)
are put straight into the photo bucket under ``archive/<subject>/``, where no notification
is configured, and one ``POST /galleries/bench/backfill`` (``{"prefix": "archive/"}``) is the
only request: the embedding function lists the prefix a page per message, queues the chunks
(``ArchiveChunkSize`` photos each) and embeds them. The clock stops when the gallery's parts
and rejects account for every photo; the run then checks that each photo is exactly one row
or one reject. The baseline is the bare pipeline (``FacePipeline.process_many`` in batches
of 32) on the same bytes in memory, in the same run.

Run: ``.venv/bin/python bench/backfill_bench.py [--photos 10000]`` from the repository root
(10,000 photos, as ``make bench`` runs it: a quarter of an hour or more on two cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "infra"))
SUBJECTS = 100


def log(message: str) -> None:
    print(f"[backfill] {message}", file=sys.stderr, flush=True)


def through_stack(data: list[bytes], timeout: float = 5400.0) -> tuple[float, int, int]:
    """Photos/minute from the backfill request to the last row or reject; rows, rejects."""
    import boto3
    import ingest_bench
    from facegate_local.config import LocalConfig
    from facegate_local.stack import down, up

    from facegate.storage.galleries import GalleryStore, summarise

    ingest_bench.private_stack_environment(batch=10)
    config = LocalConfig.load(REPO)
    state = up(config)
    try:
        s3 = boto3.client(
            "s3", endpoint_url=state.endpoint_url, region_name=state.region, **state.operator()
        )
        bucket = state.resources["PhotoBucket"]
        for i, body in enumerate(data):
            s3.put_object(Bucket=bucket, Key=f"archive/s{i % SUBJECTS}/p{i:05d}.jpg", Body=body)
        log(f"{len(data):,} photos in the bucket")
        store = GalleryStore(s3, bucket)
        started = time.perf_counter()
        answer = httpx.post(
            f"{state.api_url}/galleries/bench/backfill",
            json={"prefix": "archive/"},
            headers={"x-api-key": state.api_key},
            timeout=30,
        )
        answer.raise_for_status()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                summary = summarise(store, "bench")
            except Exception:  # no part yet
                time.sleep(1)
                continue
            rows, rejects = summary["rows"], sum(summary["rejects"].values())
            if rows + rejects >= len(data):
                return len(data) / (time.perf_counter() - started) * 60, rows, rejects
            time.sleep(1)
        raise SystemExit(f"the backfill did not finish in {timeout:.0f} s")
    finally:
        down(config)


def measure(count: int = 1000) -> list[dict[str, object]]:
    import ingest_bench
    import photos

    data = photos.photos("250x250", count)
    per_min, rows, rejects = through_stack(data)
    bare = ingest_bench.bare_pipeline(data[: min(count, 256)], 32) * 60
    return [
        {
            "section": "batch",
            "measure": f"backfill of {count:,} photos already in S3, photos/min",
            "unit": "photos/min",
            "value": per_min,
            "baseline": bare,
            "baseline_name": "bare FacePipeline.process_many, batch 32",
            "ratio": per_min / bare,
            "higher_is_better": True,
            "notes": (
                f"one POST /galleries/bench/backfill on the local stack; {rows:,} rows + "
                f"{rejects:,} rejects = every photo; 250x250, ArchiveChunkSize 200"
            ),
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    args = parser.parse_args()
    rows = measure(args.photos)
    (REPO / "bench" / "backfill_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        print(
            f"| {r['measure']} | {r['value']:,.0f} | {r['baseline']:,.0f} | {r['ratio']:.2f} |"
            f" {r['notes']} |"
        )


if __name__ == "__main__":
    main()
