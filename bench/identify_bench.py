"""``/identify`` over enrolled subjects against the size of everything else in the table.

Not a test: prints a Markdown table. The subjects table holds the ingest ledger (an item per
photo or chunk), jobs and tombstones beside the faces; 1:N search over the enrolled
subjects reads the ``faces`` index through a warm function's cache
(:mod:`facegate.storage.face_index`), so its latency must not grow with them. On moto
in-process (``mock_aws``), the real pipeline and :class:`~facegate.service.FaceService`:

1. ``SUBJECTS`` enrolled subjects, one face each: synthetic unit vectors of the default
   model's dimension, plus the real embedding of ``person_a_1`` (the probe's person, so that
   every answer names a subject and confirms it with a consistent read);
2. ``identify`` of ``person_a_2`` timed ``REPEATS`` times on a warm service with an empty
   ledger, then again after ``LEDGER`` ledger items were written (p50 of each);
The warm function's cache is loaded from the items written, as the index query of a cold
start would return them: on moto that query takes minutes at this size (moto walks and sorts
the whole table for every 1 MB page of an index query; 18 s for 20,000 faces here), where
DynamoDB reads the index's partition only. Every request timed after that runs the served
path between refreshes: the version item's read, the search, the consistent confirmation of
the subject named. The incremental index query a warm function makes once its entry is
``REFRESH_SECONDS`` old is timed once on its own (in the notes): on moto it walks the whole
table, longer than the 30 s between refreshes at 1.1M items, so timed with the requests it
would run on every one; DynamoDB reads the sparse index only.

Items are written with BatchWriteItem in their stored layout (:func:`face_item`), not through
enrolments: the row measures search, and 100,000 transactions would take the bench minutes.

Run: ``.venv/bin/python bench/identify_bench.py [--subjects 100000] [--ledger 1000000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = 100_000
LEDGER = 1_000_000
REPEATS = 15
TABLE = "facegate-bench-subjects"
BUCKET = "facegate-bench-photos"
REGION = "us-east-1"
SHA = "ab" * 32


def log(message: str) -> None:
    print(f"[identify] {message}", file=sys.stderr, flush=True)


def _batches(items: Iterator[dict[str, Any]], client: Any) -> int:
    written = 0
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append({"PutRequest": {"Item": item}})
        if len(chunk) == 25:
            client.batch_write_item(RequestItems={TABLE: chunk})
            written += len(chunk)
            chunk = []
    if chunk:
        client.batch_write_item(RequestItems={TABLE: chunk})
        written += len(chunk)
    return written


def _subjects(
    model_id: str, dim: int, n: int, probe: np.ndarray, index_items: list[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """The items of ``n`` enrolled subjects, one face each; ``index_items`` gets what the
    ``faces`` index holds of each (decoded, as a query returns them)."""
    from facegate.common import iso_micros
    from facegate.storage.dynamo import to_attributes
    from facegate.storage.keys import DEFAULT_COLLECTION
    from facegate.storage.subject_items import StoredFace, face_item, subject_key

    rng = np.random.default_rng(5)
    now = datetime.now(UTC)
    for i in range(n):
        # One enrolment a second up to now, as enrolments arrive: a refresh queries the faces
        # of its last minute (the writers' clock margin), not all of them at once.
        stamp = iso_micros(now - timedelta(seconds=n - i))
        subject = "probe-person" if i == 0 else f"s{i:07d}"
        vector = probe if i == 0 else rng.standard_normal(dim).astype(np.float32)
        vector = vector / np.linalg.norm(vector)
        face = StoredFace(
            face_id="f1",
            embedding=vector,
            image_key=f"enrolments/default/{subject}/f1.jpg",
            model_id=model_id,
            weights_sha256=SHA,
            created_at=stamp,
        )
        item = face_item(subject, DEFAULT_COLLECTION, face, vector)
        index_items.append(
            {"faces_sk": item["faces_sk"]["S"], "embedding": item["embedding"]["B"], "dim": dim}
        )
        yield item
        yield {**subject_key(subject, DEFAULT_COLLECTION), **to_attributes({"model_id": model_id})}


def _ledger(n: int, start: int) -> Iterator[dict[str, Any]]:
    for i in range(start, start + n):
        yield {
            "pk": {"S": f"INGEST#uploads/gallery-{i % 97}/s{i}/photo-{i}.jpg"},
            "sk": {"S": "META"},
            "status": {"S": "done"},
            "rows": {"N": "1"},
            "expires_at": {"N": "1900000000"},
        }


def _p50(call: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(subjects: int, ledger: int, repeats: int) -> list[dict[str, object]]:
    """The row: a warm function's identify with ``ledger`` items against none."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION
    )
    for name in ("AWS_ENDPOINT_URL", "FACEGATE_AWS_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(name, None)
    import boto3
    from moto import mock_aws

    from facegate.pipeline.face_pipeline import FacePipeline
    from facegate.service import FaceService
    from facegate.settings import Settings
    from facegate.storage import face_index
    from facegate.storage.photos import PhotoStore
    from facegate.storage.subjects import SubjectStore, create_table

    sys.path.insert(0, str(REPO / "bench"))
    import photos as bench_photos

    sources = {p.name: p.read_bytes() for p in bench_photos.source_photos()}
    pipeline = FacePipeline()
    pipeline.warm_up()
    enrolled = pipeline.process(sources["person_a_1.jpg"]).primary.vector
    probe = sources["person_a_2.jpg"]
    settings = Settings(table=TABLE, bucket=BUCKET, aws_region=REGION, aws_endpoint_url=None)
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        create_table(client, TABLE)
        started = time.perf_counter()
        index_items: list[dict[str, Any]] = []
        written = _batches(
            _subjects(pipeline.model_id, len(enrolled), subjects, enrolled, index_items), client
        )
        log(f"{subjects:,} subjects ({written:,} items) in {time.perf_counter() - started:.0f} s")

        def service() -> FaceService:
            return FaceService(
                pipeline, SubjectStore.from_settings(settings), PhotoStore.from_settings(settings)
            )

        def identify(on: FaceService) -> None:
            answer = on.identify(probe)
            if not answer["best"] or answer["best"]["subject_id"] != "probe-person":
                raise RuntimeError(f"identify did not name the probe's person: {answer['best']}")

        warm = service()
        faces = warm.subjects.faces
        entry = face_index._Entry(faces.version(), time.monotonic(), time.monotonic())
        entry.add(index_items)
        faces.cache.put((TABLE, faces.collection, pipeline.model_id), entry)
        del index_items
        # Timed between refreshes, as a warm function serves all but one request in 30 s:
        # on moto one refresh (an index query) walks the whole table and takes longer than
        # REFRESH_SECONDS itself at 1.1M items, so every request would refresh. It is timed
        # once on its own below.
        refresh_every = face_index.REFRESH_SECONDS
        face_index.REFRESH_SECONDS = float("inf")
        identify(warm)
        warm_empty = _p50(lambda: identify(warm), repeats)
        started = time.perf_counter()
        _batches(_ledger(ledger, 0), client)
        log(f"{ledger:,} ledger items in {time.perf_counter() - started:.0f} s")
        identify(warm)
        warm_full = _p50(lambda: identify(warm), repeats)
        face_index.REFRESH_SECONDS = 0.0
        started = time.perf_counter()
        identify(warm)  # the entry is stale at once: one incremental index query
        refresh_s = time.perf_counter() - started
        face_index.REFRESH_SECONDS = refresh_every
        log(f"one identify with a refresh: {refresh_s:.1f} s")
    return [
        {
            "section": "identify",
            "measure": f"identify over {subjects:,} enrolled subjects, {ledger:,} ledger items",
            "unit": "ms",
            "value": warm_full,
            "baseline": warm_empty,
            "baseline_name": "the same, empty ledger",
            "ratio": warm_full / warm_empty,
            "higher_is_better": False,
            "notes": (
                f"warm function between refreshes, real pipeline and photo, moto in-process; "
                f"p50 of {repeats}; one request with its 30-s refresh (an index query, which "
                f"moto answers by walking all {subjects + ledger:,} items) took {refresh_s:.1f} s"
            ),
        }
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=SUBJECTS)
    parser.add_argument("--ledger", type=int, default=LEDGER)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    for row in measure(args.subjects, args.ledger, args.repeats):
        print(
            f"| {row['measure']} | {row['value']:.1f} ms | {row['baseline']:.1f} ms | "
            f"{row['ratio']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
