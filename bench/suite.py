"""``make bench``: FaceGate's speed, memory and scale, each row against a baseline measured
in the same run on the same machine, printed as one table and saved to bench/results.json.

Sections (each module's docstring says exactly what it measures):

- throughput.py: end-to-end photos/s at 250x250, 640x480 and 12 MP, batch 1 and 32, against
  the facenet-pytorch README pipeline and against the bare embedding network (the floor);
- startup.py: cold start to the first embedding against ``import torch``; peak RSS of the
  API function and of the embedding job against the ``import torch`` process;
- api_load.py: ``/compare`` p50/p95/p99 and requests/s on the local stack under concurrent
  load against the in-process pipeline;
- search_bench.py: 1:N search over 10k/100k/1M rows, our float32/float16 indexes against
  NumPy matmul + argpartition in the same precision;
- ann_bench.py: 1:N through a gallery's ANN index (faiss shortlist, exact rescoring) at 1M
  and 10M rows derived from real LFW embeddings, against exact search of the same index, with
  recall@1/@5 against the exact answer;
- identify_bench.py: ``/identify`` over 100,000 enrolled subjects on a warm function with
  1,000,000 ledger items in the table against the same with none (moto in-process);
- ingest_bench.py: the embedding job's photos/minute on the local stack (S3 -> SQS -> the
  real function -> Parquet parts) against the bare pipeline on the same photos;
- compaction_bench.py: 100 new parts compacted onto a 10,000-part gallery (incremental)
  against the full rebuild of the same parts (moto in-process);
- backfill_bench.py: 10,000 photos already in S3 backfilled by one request on the local
  stack, photos/minute against the bare pipeline.

Machines are shared and noisy: ratios within one run are the numbers to read, not absolute
values across runs. Run from the repository root: ``make bench`` (or
``.venv/bin/python bench/suite.py [--only throughput,search] [--device cuda]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
os.environ.setdefault("FACEGATE_NUM_THREADS", "2")

SECTIONS = (
    "throughput",
    "startup",
    "api",
    "search",
    "ann",
    "identify",
    "ingest",
    "compaction",
    "backfill",
)


def machine() -> dict[str, object]:
    import numpy as np
    import torch

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": 2,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def throughput_rows(device: str) -> list[dict[str, object]]:
    import throughput

    return throughput.rows(device)


def startup_rows() -> list[dict[str, object]]:
    import photos
    import startup

    folder = Path(tempfile.mkdtemp(prefix="facegate-bench-"))
    for i, data in enumerate(photos.photos("640x480", 32)):
        (folder / f"p{i:02d}.jpg").write_bytes(data)
    rows, torch_rss = startup.cold_start(folder / "p00.jpg")
    return rows + startup.memory_rows(folder, torch_rss)


def api_rows() -> list[dict[str, object]]:
    import api_load
    import photos

    return api_load.rows(photos.photos("640x480", 2))


def search_rows() -> list[dict[str, object]]:
    import search_bench

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="facegate-search-"))
    for n in (10_000, 100_000, 1_000_000):
        measured = {r["method"]: r for r in search_bench.bench_size(n, 7, 0, workdir)}
        for ours, base, precision in (
            ("GalleryIndex f32", "numpy", "float32"),
            ("GalleryIndex f16", "numpy f16", "float16"),
        ):
            value, baseline = measured[ours]["median_ms"], measured[base]["median_ms"]
            rows.append(
                {
                    "section": "search",
                    "measure": f"1:N top-5, {n:,} rows, {precision}",
                    "unit": "ms",
                    "value": value,
                    "baseline": baseline,
                    "baseline_name": f"numpy matmul + argpartition, {precision}",
                    "ratio": value / baseline,
                    "higher_is_better": False,
                    "notes": measured[ours]["notes"],
                }
            )
    return rows


def ann_rows() -> list[dict[str, object]]:
    """ANN shortlists vs exact search at 1M and 10M rows (about 10 minutes, 8 GB)."""
    import ann_bench

    return ann_bench.measure([1_000_000, 10_000_000])


def compaction_rows() -> list[dict[str, object]]:
    """100 new parts onto a 10,000-part gallery, incremental against a full rebuild."""
    import compaction_bench

    return compaction_bench.measure(10_000, 100)


def backfill_rows() -> list[dict[str, object]]:
    """10,000 photos already in S3 backfilled on the local stack by one request."""
    import backfill_bench

    return backfill_bench.measure(10_000)


def identify_rows() -> list[dict[str, object]]:
    import identify_bench

    return identify_bench.measure(identify_bench.SUBJECTS, identify_bench.LEDGER, 15)


def ingest_rows() -> list[dict[str, object]]:
    import ingest_bench
    import photos

    data = photos.photos("640x480", 64)
    job = ingest_bench.through_stack(data, 32) * 60
    bare = ingest_bench.bare_pipeline(data, 32) * 60
    return [
        {
            "section": "batch",
            "measure": "embedding job photos/min",
            "unit": "photos/min",
            "value": job,
            "baseline": bare,
            "baseline_name": "bare FacePipeline.process_many, batch 32",
            "ratio": job / bare,
            "higher_is_better": True,
            "notes": "64 uploads of 640x480, IngestBatchSize 32, local stack (moto + poller)",
        }
    ]


def _format(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[dict[str, object]]) -> str:
    """One Markdown table; "better" says which side of 1 the ratio should be on."""
    lines = [
        "| measure | unit | FaceGate | baseline | ratio | better | baseline is |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        better = "> 1" if r["higher_is_better"] else "< 1"
        lines.append(
            f"| {r['measure']} | {r['unit']} | {_format(float(r['value']))} | "  # type: ignore[arg-type]
            f"{_format(float(r['baseline']))} | {float(r['ratio']):.2f} | {better} | "  # type: ignore[arg-type]
            f"{r['baseline_name']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--device", default="cpu", help="torch device for throughput rows")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    runners: dict[str, Callable[[], list[dict[str, object]]]] = {
        "throughput": lambda: throughput_rows(args.device),
        "startup": startup_rows,
        "api": api_rows,
        "search": search_rows,
        "ann": ann_rows,
        "identify": identify_rows,
        "ingest": ingest_rows,
        "compaction": compaction_rows,
        "backfill": backfill_rows,
    }
    started = time.perf_counter()
    rows: list[dict[str, object]] = []
    seconds: dict[str, float] = {}
    for name in chosen:
        t = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        rows += runners[name]()
        seconds[name] = round(time.perf_counter() - t, 1)
        print(f"[bench] {name} done in {seconds[name]} s", file=sys.stderr, flush=True)
    result = {
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "device": args.device,
        "sections_seconds": seconds,
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    print(table(rows))
    print(f"\n{result['machine']}; total {result['total_seconds']} s")
    if args.only is None or args.out != BENCH / "results.json":
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
