"""A fanned-out zip photo set on moto: each invocation fetches only the bytes it needs.

Planning reads the archive's end (its central directory), each chunk the local headers and
data of its own members. Every ``GetObject`` of the job's S3 client is counted by a botocore
event hook (the bytes S3 sent, ``ContentLength``), so nothing of the reading code is trusted.
The archive carries a 24 MiB member of random bytes, refused from the directory as too large:
downloaded whole per invocation, as before, it would dominate every count.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from facegate.batch.ingest_job import EmbedJob, JobConfig
from facegate.storage.clients import aws_client
from facegate.storage.ledger import IngestLedger

FILLER = 24 * 1024 * 1024
KEY = "uploads/ranged/set.zip"
#: What one invocation may fetch beyond its members' bytes: the archive's end once (central
#: directory), and per member its local header with the read-ahead after it.
OVERHEAD = 70_000


@dataclass
class Fetches:
    """Bytes and ranges of every ``GetObject`` the client made since the last ``take``."""

    sizes: list[int] = field(default_factory=list)
    ranges: list[str | None] = field(default_factory=list)

    def take(self) -> tuple[int, list[str | None]]:
        total, ranges = sum(self.sizes), self.ranges
        self.sizes, self.ranges = [], []
        return total, ranges


@pytest.fixture(scope="module")
def ingest(make_queue):
    queue = make_queue("facegate-ingest-ranged")
    queue.notify("uploads/")
    return queue


@pytest.fixture
def counted(pipeline, aws, ingest) -> Iterator[tuple[EmbedJob, Fetches]]:
    s3 = aws_client("s3", aws)
    fetches = Fetches()

    def on_params(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == KEY:
            fetches.ranges.append(params.get("Range"))

    def on_answer(parsed: dict[str, Any], **_: Any) -> None:
        fetches.sizes.append(int(parsed.get("ContentLength") or 0))

    s3.meta.events.register("before-parameter-build.s3.GetObject", on_params)
    s3.meta.events.register("after-call.s3.GetObject", on_answer)
    config = JobConfig(
        bucket=aws.bucket, queue_url=ingest.url, chunk_size=2, max_photo_bytes=15 * 1024 * 1024
    )
    ledger = IngestLedger(aws_client("dynamodb", aws), aws.table)
    yield EmbedJob(pipeline, s3, aws_client("sqs", aws), ledger, config), fetches


def _photo_set(faces_dir) -> tuple[bytes, dict[str, int]]:
    """The zip (every member stored, so a member's bytes are its size) and member sizes."""
    read = lambda n: (faces_dir / f"{n}.jpg").read_bytes()  # noqa: E731
    members = {
        "set/person_a/a1.jpg": read("person_a_1"),
        "set/person_a/a2.jpg": read("person_a_2"),
        "set/filler/noise.jpg": os.urandom(FILLER),
        "set/person_b/b1.jpg": read("person_b_1"),
        "set/person_b/b2.jpg": read("person_b_2"),
        "set/bad/notes.jpg": b"shopping list: milk, eggs\n",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue(), {name: len(data) for name, data in members.items()}


def _tables(aws, kind: str) -> list[dict[str, Any]]:
    s3 = aws_client("s3", aws)
    listed = s3.list_objects_v2(Bucket=aws.bucket, Prefix=f"galleries/ranged/{kind}/")
    return [
        row
        for item in listed.get("Contents", [])
        for row in pq.read_table(
            io.BytesIO(s3.get_object(Bucket=aws.bucket, Key=item["Key"])["Body"].read())
        ).to_pylist()
    ]


def test_each_chunk_fetches_its_own_members_and_planning_only_the_end(
    aws, ingest, counted, faces_dir
):
    job, fetches = counted
    data, sizes = _photo_set(faces_dir)
    aws_client("s3", aws).put_object(Bucket=aws.bucket, Key=KEY, Body=data)

    assert job.handle({"Records": ingest.drain()}) == {"batchItemFailures": []}
    planning, plan_ranges = fetches.take()
    chunks = ingest.drain()
    assert len(chunks) == 3  # 5 members in chunks of 2; the filler is refused when planning
    fetched = []
    for record in chunks:
        assert job.handle({"Records": [record]}) == {"batchItemFailures": []}
        members = [m for m, _ in json.loads(record["body"])["members"]]
        fetched.append((fetches.take()[0], sum(sizes[m] for m in members), len(members)))

    rows = sorted((r["subject_id"], r["image_key"]) for r in _tables(aws, "parts"))
    assert rows == [
        ("person_a", f"{KEY}/set/person_a/a1.jpg"),
        ("person_a", f"{KEY}/set/person_a/a2.jpg"),
        ("person_b", f"{KEY}/set/person_b/b1.jpg"),
        ("person_b", f"{KEY}/set/person_b/b2.jpg"),
    ]
    reasons = {r["image_key"]: r["reason"] for r in _tables(aws, "rejects")}
    assert reasons == {
        f"{KEY}/set/filler/noise.jpg": "image_too_large",
        f"{KEY}/set/bad/notes.jpg": "invalid_image",
    }

    seen = f"archive {len(data)} bytes, planning fetched {planning}, chunks {fetched}"
    assert len(data) > FILLER
    assert planning < OVERHEAD, seen
    assert plan_ranges and all(plan_ranges) and str(plan_ranges[0]).startswith("bytes=-"), seen
    for total, members_bytes, count in fetched:
        assert total <= members_bytes + (count + 1) * OVERHEAD, seen
    assert sum(total for total, _, _ in fetched) < len(data) // 20, seen


def test_a_failed_member_read_is_retried_not_rejected(aws, ingest, counted, faces_dir, monkeypatch):
    """S3 failing after the archive was opened (a member's GET) fails the record, whose
    claim is released; the redelivery reads the members."""
    job, _ = counted
    key = "uploads/retried/set.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("person_a_1", "person_b_1"):
            archive.writestr(f"{name[:-2]}/{name}.jpg", (faces_dir / f"{name}.jpg").read_bytes())
    aws_client("s3", aws).put_object(Bucket=aws.bucket, Key=key, Body=buffer.getvalue())
    records = ingest.drain()
    real, refused = job.s3.get_object, []

    def throttled(**kwargs: Any) -> Any:
        if kwargs["Key"] == key and not kwargs.get("Range", "").startswith("bytes=-"):
            refused.append(kwargs.get("Range"))
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "GetObject")
        return real(**kwargs)

    monkeypatch.setattr(job.s3, "get_object", throttled)
    assert job.handle({"Records": records}) == {
        "batchItemFailures": [{"itemIdentifier": records[0]["messageId"]}]
    }
    assert refused and all(r and r[6] != "-" for r in refused)  # a member's range, after opening
    monkeypatch.undo()
    assert job.handle({"Records": records}) == {"batchItemFailures": []}
    s3 = aws_client("s3", aws)
    listed = s3.list_objects_v2(Bucket=aws.bucket, Prefix="galleries/retried/")
    kinds = sorted(item["Key"].split("/")[2] for item in listed.get("Contents", []))
    assert kinds == ["inbox", "parts", "rejects"]  # inbox: the part's marker for compaction
    part = next(i["Key"] for i in listed["Contents"] if "/parts/" in i["Key"])
    rows = pq.read_table(io.BytesIO(s3.get_object(Bucket=aws.bucket, Key=part)["Body"].read()))
    assert sorted(rows.column("subject_id").to_pylist()) == ["person_a", "person_b"]
