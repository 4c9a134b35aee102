"""Compaction of a 10,000-part gallery: the full rebuild against an incremental run.

Not a test: prints one Markdown table and writes ``bench/compaction_results.json``. On moto
in-process (S3 API calls without the network): a gallery of ``--parts`` parts of
``--rows`` rows each (256-d unit rows, the fused default's width, one subject per row) is
compacted in full (every part read); then ``--new`` parts arrive and
:meth:`~facegate.storage.galleries.GalleryStore.compact` runs again, incrementally (the new
parts, found in the gallery's inbox, merged into ``delta.parquet``). The baseline is a full
rebuild of that same state, measured right after. Both runs apply the same tombstones.

Run: ``.venv/bin/python bench/compaction_bench.py [--parts 10000 --new 100]`` from the
repository root.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 256
BUCKET = "facegate-bench"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _part(rng: np.random.Generator, first: int, rows: int, created: str):  # type: ignore[no-untyped-def]
    from facegate.gallery.format import GalleryMeta, build_gallery_table

    emb = rng.standard_normal((rows, DIM), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    meta = GalleryMeta(
        model_id="sface+dlib", weights_sha256="ab" * 32, dim=DIM, threshold=0.6, created_at=created
    )
    ids = [f"s{first + i}" for i in range(rows)]
    return build_gallery_table(
        subject_ids=ids,
        image_keys=[f"uploads/g/{s}/1.jpg" for s in ids],
        face_indices=np.zeros(rows, np.int32),
        bboxes=np.zeros((rows, 4), np.float32),
        det_scores=np.ones(rows, np.float32),
        embeddings=emb,
        meta=meta,
    )


class _OneErased:
    """One tombstone: subject ``s5``, erased after every upload (an ``ErasureLookup``)."""

    def in_scope(self, scope: str, subject_ids: object) -> dict[str, str]:
        return {"s5": "2026-06-01T00:00:00Z"} if "s5" in subject_ids else {}  # type: ignore[operator]


def measure(parts: int = 10_000, new: int = 100, rows: int = 10) -> list[dict[str, object]]:
    import boto3
    from moto import mock_aws

    from facegate.storage.galleries import GalleryStore

    rng = np.random.default_rng(0)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        store = GalleryStore(s3, BUCKET)
        started = time.perf_counter()
        for i in range(parts):
            table = _part(rng, i * rows, rows, "2026-01-01T00:00:00Z")
            store.write_table(store.part_key("big", f"p{i:06d}"), table)
        log(f"{parts:,} parts written in {time.perf_counter() - started:.0f} s")
        erased = _OneErased()
        first = store.compact("big", erasures=erased)
        log(f"first (full) run: {first.seconds:.1f} s, {first.rows_out:,} rows")
        for i in range(parts, parts + new):
            table = _part(rng, i * rows, rows, "2026-02-01T00:00:00Z")
            store.write_table(store.part_key("big", f"p{i:06d}"), table)
        incremental = store.compact("big", erasures=erased)
        full = store.compact("big", erasures=erased, full=True)
        log(f"incremental {incremental.seconds:.2f} s, full {full.seconds:.1f} s")
        assert incremental.mode == "incremental" and incremental.parts_read == new
        assert incremental.rows_out == full.rows_out == (parts + new) * rows - 1
    return [
        {
            "section": "batch",
            "measure": f"compaction, {new} new parts onto {parts:,} ({rows} rows each)",
            "unit": "s",
            "value": incremental.seconds,
            "baseline": full.seconds,
            "baseline_name": f"full rebuild of the same {parts + new:,} parts",
            "ratio": incremental.seconds / full.seconds,
            "higher_is_better": False,
            "notes": (
                f"moto in-process; first (full) run {first.seconds:.1f} s; the incremental "
                f"run read {incremental.parts_read} parts (listed from the inbox) and "
                f"gallery.parquet's id columns, and wrote delta.parquet; rows out "
                f"{full.rows_out:,}"
            ),
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=10_000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    rows = measure(args.parts, args.new, args.rows)
    (REPO / "bench" / "compaction_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        print(
            f"| {r['measure']} | {r['value']:.2f} s | {r['baseline']:.1f} s | "
            f"{r['baseline'] / r['value']:.0f}x faster |"
        )


if __name__ == "__main__":
    main()
