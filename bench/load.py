"""``make load``: a bounded mixed load on the local stack: no 5xx, and still healthy after.

A private local stack is started (:mod:`facegate_local.private_stack`) and two subjects are
enrolled. Then ``--clients`` threads (8), each with its own httpx client, send requests back
to back for ``--seconds`` (60), each drawing its next request from a fixed mix (seeded per client):

==================  ======  ================================================  ========
kind                weight  request                                           expected
==================  ======  ================================================  ========
compare             4       ``/compare``, two photos (base64 JSON)            200
identify            3       ``/identify``, one photo, among the subjects      200
enrol               1       ``/subjects/{new id}/faces``, one photo (form)    201
embedding           1       ``/embedding``, one photo (form)                  200
health              1       ``GET /health``                                   200
bad_base64          1       ``/embedding`` with ``image`` not base64          400
missing_field       1       ``/compare`` with ``image_a`` only                400
unknown_subject     1       ``/compare`` with ``image`` and an unknown id     404
oversize            1       ``/embedding``, a 7 MiB body (over the 6 MiB      413
                            Lambda event once API Gateway has encoded it)
==================  ======  ================================================  ========

It prints one row per kind (count, p50/p95 latency, status codes, answers other than the
expected one), the total rate, the number of 5xx answers and transport errors, and what
``GET /health`` answers after the run; the last line is the same as JSON. Exit status 1
when any answer was a 5xx or not the expected status, a request failed in transport, or
``/health`` is not 200 afterwards.

    .venv/bin/python bench/load.py [--seconds 60] [--clients 8]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import httpx
from api_load import percentile
from facegate_local.private_stack import REPO, Stack, private_stack

MIX = {
    "compare": 4,
    "identify": 3,
    "enrol": 1,
    "embedding": 1,
    "health": 1,
    "bad_base64": 1,
    "missing_field": 1,
    "unknown_subject": 1,
    "oversize": 1,
}
#: The status each kind must get (others: 200).
EXPECTED = {
    "enrol": 201,
    "bad_base64": 400,
    "missing_field": 400,
    "unknown_subject": 404,
    "oversize": 413,
}
#: Over Lambda's 6 MiB event once base64-encoded (API Gateway encodes a binary body), under
#: API Gateway's own 10 MiB: the local stack answers 413 as AWS would.
OVERSIZE_BYTES = 7 * 1024 * 1024
TIMEOUT_S = 120.0
#: Subjects enrolled before the run: identify finds them, compare-with-subject uses them.
SUBJECTS = {"load_a": "person_a_1.jpg", "load_b": "person_b_1.jpg"}


@dataclass(frozen=True)
class Sample:
    kind: str
    status: int  # 0: the request failed in transport (connection, timeout)
    ms: float


def photos() -> dict[str, bytes]:
    for folder in (REPO.parent / "shared" / "faces", REPO / ".cache" / "testdata" / "faces"):
        if (folder / "person_a_1.jpg").is_file():
            return {path.name: path.read_bytes() for path in sorted(folder.glob("*.jpg"))}
    raise SystemExit("no test photos: run 'make setup' first")


class Requests:
    """Builds each kind of request; photos are encoded once."""

    def __init__(self, faces: dict[str, bytes]) -> None:
        self.faces = faces
        self.names = sorted(faces)
        self.b64 = {name: base64.b64encode(data).decode() for name, data in faces.items()}
        self.oversize = b"\0" * OVERSIZE_BYTES
        self.enrolled = 0
        self.lock = threading.Lock()

    def _new_subject(self) -> str:
        with self.lock:
            self.enrolled += 1
            return f"load_{self.enrolled}"

    def send(self, client: httpx.Client, kind: str, rng: random.Random) -> httpx.Response:
        name, other = rng.sample(self.names, 2)
        if kind == "compare":
            body = {"image_a": self.b64[name], "image_b": self.b64[other]}
            return client.post("/compare", json=body)
        if kind == "identify":
            return client.post("/identify", json={"image": self.b64[name]})
        if kind == "enrol":
            files = {"image": (name, self.faces[name], "image/jpeg")}
            return client.post(f"/subjects/{self._new_subject()}/faces", files=files)
        if kind == "embedding":
            return client.post("/embedding", files={"image": (name, self.faces[name])})
        if kind == "health":
            return client.get("/health")
        if kind == "bad_base64":
            return client.post("/embedding", json={"image": "not base64 at all!"})
        if kind == "missing_field":
            return client.post("/compare", json={"image_a": self.b64[name]})
        if kind == "unknown_subject":
            return client.post(
                "/compare", json={"image": self.b64[name], "subject_id": "nobody_enrolled"}
            )
        if kind == "oversize":
            return client.post("/embedding", files={"image": ("big.jpg", self.oversize)})
        raise ValueError(kind)


def enrol_subjects(stack: Stack, requests: Requests) -> None:
    with _client(stack) as client:
        for subject, name in SUBJECTS.items():
            files = {"image": (name, requests.faces[name], "image/jpeg")}
            client.post(f"/subjects/{subject}/faces", files=files).raise_for_status()


def _client(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.api_url, headers={"x-api-key": stack.api_key}, timeout=TIMEOUT_S
    )


def run_load(stack: Stack, requests: Requests, seconds: float, clients: int) -> list[Sample]:
    kinds = [kind for kind, weight in MIX.items() for _ in range(weight)]
    samples: list[Sample] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[Sample] = []
        with _client(stack) as client:
            while time.perf_counter() < stop:
                kind = rng.choice(kinds)
                started = time.perf_counter()
                try:
                    status = requests.send(client, kind, rng).status_code
                except httpx.HTTPError:
                    status = 0
                mine.append(Sample(kind, status, (time.perf_counter() - started) * 1000))
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


def report(samples: list[Sample], elapsed: float, health: int, clients: int) -> dict[str, Any]:
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_kind[sample.kind].append(sample)
    rows = []
    for kind in MIX:
        mine = by_kind.get(kind, [])
        times = [s.ms for s in mine]
        statuses = Counter(s.status for s in mine)
        expected = EXPECTED.get(kind, 200)
        rows.append(
            {
                "kind": kind,
                "count": len(mine),
                "p50_ms": round(percentile(times, 0.5)) if times else None,
                "p95_ms": round(percentile(times, 0.95)) if times else None,
                "statuses": dict(sorted(statuses.items())),
                "unexpected": sum(n for status, n in statuses.items() if status != expected),
            }
        )
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(samples),
        "rps": round(len(samples) / elapsed, 2),
        "status_5xx": sum(1 for s in samples if s.status >= 500),
        "transport_errors": sum(1 for s in samples if s.status == 0),
        "unexpected": sum(row["unexpected"] for row in rows),
        "health_after": health,
        "kinds": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'kind':<16} {'count':>6} {'p50 ms':>8} {'p95 ms':>8}  {'unexpected':>10}  statuses")
    for row in result["kinds"]:
        statuses = " ".join(f"{status}:{n}" for status, n in row["statuses"].items())
        p50 = "-" if row["p50_ms"] is None else str(row["p50_ms"])
        p95 = "-" if row["p95_ms"] is None else str(row["p95_ms"])
        print(
            f"{row['kind']:<16} {row['count']:>6} {p50:>8} {p95:>8}  "
            f"{row['unexpected']:>10}  {statuses}"
        )
    print(
        f"total {result['requests']} requests in {result['seconds']} s with "
        f"{result['clients']} clients: {result['rps']} req/s; 5xx: {result['status_5xx']}, "
        f"transport errors: {result['transport_errors']}, unexpected statuses: "
        f"{result['unexpected']}; /health after: {result['health_after']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)
    requests = Requests(photos())
    try:
        with private_stack() as stack:
            enrol_subjects(stack, requests)
            started = time.perf_counter()
            samples = run_load(stack, requests, args.seconds, args.clients)
            elapsed = time.perf_counter() - started
            with _client(stack) as client:
                health = client.get("/health").status_code
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    result = report(samples, elapsed, health, args.clients)
    print_table(result)
    print(json.dumps(result, separators=(",", ":")))
    failed = result["status_5xx"] or result["transport_errors"] or result["unexpected"]
    return 1 if failed or health != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
