"""1:N search latency for one query: FaceGate's searches against a plain NumPy baseline.

Not a test: prints one Markdown table and writes ``bench/search_results.json``. Every row is
compared with a baseline measured in the same run on the same data, and the methods take
turns query by query, so a noisy neighbour slows them all alike (in a fresh random order
each round, so that no method always runs right after the one that flushed the caches):

- ``numpy``: ``scores = E @ q; idx = np.argpartition(-scores, k)[:k]`` then sorted,
  float32, rows only (no per-subject aggregation, no checks): the floor.
- ``numpy f16``: the same on a float16 copy of the matrix (the baseline for our float16
  index: NumPy has no float16 BLAS).
- ``search_gallery``: :func:`facegate.search.search_gallery` on the in-memory gallery
  table (per-subject aggregation, per-row ``einsum`` scoring).
- ``GalleryIndex f32`` / ``f16``: :class:`facegate.gallery_cache.GalleryIndex` loaded from
  the Parquet file (load time in the notes).
- ``streaming``: :func:`facegate.search.search_parquet_streaming` over the Parquet file
  written by :func:`facegate.gallery.write_gallery` (zstd, default row groups), read from
  the page cache: decompression included, disk excluded.

Galleries are synthetic: 128-d unit vectors, 10 rows per subject (a subject's rows are
noisy copies of its centre, cosine ~0.7 to each other), queries are fresh noisy copies of a
centre (genuine probes). The "top-1" note says whether a method's best row is the same as
``search_gallery``'s.

Run: ``.venv/bin/python bench/search_bench.py [--sizes 10000,100000,1000000] [--repeats 7]``
from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facegate.gallery.format import GalleryMeta, build_gallery_table, write_gallery
from facegate.gallery.index import GalleryIndex
from facegate.gallery.search import search_gallery, search_parquet_streaming

REPO = Path(__file__).resolve().parents[1]

DIM = 128
ROWS_PER_SUBJECT = 10
K = 5
THRESHOLD = 0.5
SUBJECT_NOISE = 0.06  # per component: a row is ~0.83 cosine from its centre
QUERY_NOISE = 0.06
SHA = "ab" * 32
MIB = 1024 * 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


def make_gallery(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(n, DIM)`` unit float32 rows, 10 per subject; returns rows, centres, subject ids."""
    n_subjects = -(-n // ROWS_PER_SUBJECT)
    centres = unit(rng.standard_normal((n_subjects, DIM), dtype=np.float32))
    owner = np.arange(n) // ROWS_PER_SUBJECT
    emb = np.empty((n, DIM), dtype=np.float32)
    step = 1 << 16
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = centres[owner[start:stop]] + SUBJECT_NOISE * rng.standard_normal(
            (stop - start, DIM), dtype=np.float32
        )
        emb[start:stop] = unit(block)
    subjects = [f"subject-{i:07d}" for i in owner.tolist()]
    return emb, centres, subjects


def numpy_baseline(emb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = emb @ q
    idx = np.argpartition(-scores, k)[:k]
    return idx[np.argsort(-scores[idx])]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def top_row(method: str, out: object) -> int:
    if method.startswith("numpy"):
        return int(out[0])  # type: ignore[index]
    return out.candidates[0].row  # type: ignore[attr-defined]


def bench_size(n: int, repeats: int, seed: int, workdir: Path) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    emb, centres, subjects = make_gallery(n, rng)
    table = build_gallery_table(
        subject_ids=subjects,
        image_keys=[f"photos/{s}/{i % ROWS_PER_SUBJECT}.jpg" for i, s in enumerate(subjects)],
        face_indices=np.zeros(n, np.int32),
        bboxes=np.tile(np.array([10, 10, 110, 130], np.float32), (n, 1)),
        det_scores=np.ones(n, np.float32),
        embeddings=emb,
        meta=GalleryMeta(model_id="sface", weights_sha256=SHA, dim=DIM, threshold=THRESHOLD),
    )
    del subjects
    path = workdir / f"gallery-{n}.parquet"
    write_gallery(table, path)
    file_bytes = path.stat().st_size
    log(
        f"{n:>9,} rows: data and {file_bytes / MIB:.0f} MiB file in {time.perf_counter() - t0:.1f}s"
    )

    emb16 = emb.astype(np.float16)
    load_ms: dict[str, float] = {}
    indexes: dict[str, GalleryIndex] = {}
    for dtype in ("float32", "float16"):
        ms, index = timed(lambda dtype=dtype: GalleryIndex.from_parquet(path, dtype=dtype))
        load_ms[dtype], indexes[dtype] = ms, index  # type: ignore[assignment]

    methods: dict[str, Callable[[np.ndarray], object]] = {
        "numpy": lambda q: numpy_baseline(emb, q, K),
        "numpy f16": lambda q: numpy_baseline(emb16, q.astype(np.float16), K),
        "search_gallery": lambda q: search_gallery(q, table, K),
        "GalleryIndex f32": lambda q: indexes["float32"].search(q, K),
        "GalleryIndex f16": lambda q: indexes["float16"].search(q, K),
        "streaming": lambda q: search_parquet_streaming(path, q, K),
    }
    owners = rng.integers(0, centres.shape[0], repeats + 1)
    queries = [
        unit(centres[o] + QUERY_NOISE * rng.standard_normal(DIM, dtype=np.float32)) for o in owners
    ]
    times: dict[str, list[float]] = {m: [] for m in methods}
    tops: dict[str, list[int]] = {m: [] for m in methods}
    names = list(methods)
    for rep, q in enumerate(queries):  # the first round warms up and is not timed
        for i in rng.permutation(len(names)):  # no method always follows the same one
            name = names[i]
            ms, out = timed(lambda fn=methods[name], q=q: fn(q))
            if rep:
                times[name].append(ms)
            tops[name].append(top_row(name, out))

    matrix = {
        "numpy": emb.nbytes,
        "numpy f16": emb16.nbytes,
        "search_gallery": emb.nbytes,
        "GalleryIndex f32": indexes["float32"].matrix_nbytes,
        "GalleryIndex f16": indexes["float16"].matrix_nbytes,
        "streaming": min(n, 65536) * DIM * 4,
    }
    base = statistics.median(times["numpy"])
    rows = []
    for name in methods:
        median = statistics.median(times[name])
        agree = sum(a == b for a, b in zip(tops[name], tops["search_gallery"], strict=True))
        notes = [f"top-1 {agree}/{len(queries)}"]
        if name.startswith("GalleryIndex"):
            index = indexes["float32" if name.endswith("f32") else "float16"]
            notes.append(f"load {load_ms[str(index.dtype)] / 1e3:.2f} s from file")
            notes.append(f"index {index.nbytes / MIB:.1f} MiB in all")
        if name == "streaming":
            notes.append(f"file {file_bytes / MIB:.1f} MiB; memory: one 65,536-row batch")
        rows.append(
            {
                "rows": n,
                "method": name,
                "median_ms": median,
                "ratio_vs_numpy": median / base,
                "times_ms": times[name],
                "matrix_bytes": matrix[name],
                "index_bytes": (
                    indexes["float32" if name.endswith("f32") else "float16"].nbytes
                    if name.startswith("GalleryIndex")
                    else None
                ),
                "load_ms": (
                    load_ms["float32" if name.endswith("f32") else "float16"]
                    if name.startswith("GalleryIndex")
                    else None
                ),
                "file_bytes": file_bytes if name == "streaming" else None,
                "top1_agrees_with_search_gallery": agree,
                "queries": len(queries),
                "notes": "; ".join(notes),
            }
        )
    log(f"{n:>9,} rows: measured in {time.perf_counter() - t0:.1f}s")
    path.unlink()
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    out = [
        "| rows | method | median ms | vs numpy | matrix MiB | notes |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['rows']:,} | {r['method']} | {r['median_ms']:.2f} | "
            f"{r['ratio_vs_numpy']:.2f} | {r['matrix_bytes'] / MIB:.1f} | {r['notes']} |"
        )
    return "\n".join(out)


def blas_info() -> object:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [
        {k: info.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
        for info in threadpool_info()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma-separated gallery sizes in rows (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=9, help="timed queries per method (default: 9)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "search_results.json")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) <= K or args.repeats < 1:
        parser.error(f"sizes must be > {K} rows and repeats >= 1")

    started = time.perf_counter()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="facegate-search-bench-") as tmp:
        for n in sizes:
            rows.extend(bench_size(n, args.repeats, args.seed + n, Path(tmp)))
    table = markdown(rows)
    print(table)
    report = {
        "benchmark": "1:N search latency, one query, k=5, per-subject unless noted",
        "dim": DIM,
        "k": K,
        "rows_per_subject": ROWS_PER_SUBJECT,
        "repeats": args.repeats,
        "sizes": sizes,
        "machine": {
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "blas": blas_info(),
            "platform": platform.platform(),
        },
        "total_s": time.perf_counter() - started,
        "results": rows,
        "table": table,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out} ({report['total_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
