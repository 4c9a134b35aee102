"""End-to-end demo on the six sample photos: embed, verify every pair, identify probes.

Run by ``make demo``. It enrols the first photo of each person into an in-memory gallery,
verifies all 15 pairs, identifies the remaining photos against the gallery (impostors must
come back as "no match"), prints a readable report and, as its last line, one JSON summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from facegate.pipeline import FacePipeline
from facegate.search import search_gallery

PEOPLE = {
    "person_a_1": "person_a",
    "person_a_2": "person_a",
    "person_b_1": "person_b",
    "person_b_2": "person_b",
}


def identity(stem: str) -> str:
    """Subject of a sample photo: person_a_1 -> person_a; each impostor is their own person."""
    return PEOPLE.get(stem, stem)


def _mark(correct: bool) -> str:
    return "ok" if correct else "WRONG"


def run(photos: Path) -> dict[str, object]:
    started = time.perf_counter()
    pipeline = FacePipeline()
    paths = sorted(photos.glob("*.jpg"))
    results = dict(zip(paths, pipeline.process_many(paths), strict=True))
    vectors = {p.stem: r.primary.vector for p, r in results.items() if hasattr(r, "primary")}
    print(f"model {pipeline.model_id}  threshold {pipeline.threshold:.4f}  photos {len(paths)}")

    print("\n1:1 verification")
    correct = compared = 0
    for a, b in itertools.combinations(sorted(vectors), 2):
        similarity = float(np.dot(vectors[a], vectors[b]))
        match = similarity >= pipeline.threshold
        truth = identity(a) == identity(b)
        compared += 1
        correct += match == truth
        verdict = "MATCH" if match else "no match"
        print(f"  {a:<11} {b:<11} {similarity:+.4f}  {verdict:<8}  {_mark(match == truth)}")

    enrolled = [s for s in sorted(vectors) if s.endswith("_1") and s.startswith("person")]
    gallery = np.stack([vectors[s] for s in enrolled])
    subjects = [identity(s) for s in enrolled]
    print(f"\n1:N identification against {len(enrolled)} enrolled subjects")
    identified = right = 0
    for probe in sorted(set(vectors) - set(enrolled)):
        found = search_gallery(
            vectors[probe], gallery, k=3, threshold=pipeline.threshold, subject_ids=subjects
        )
        best = found.best.subject_id if found.best else None
        expected = identity(probe) if identity(probe) in subjects else None
        identified += best is not None
        right += best == expected
        top = found.candidates[0].similarity if found.candidates else float("nan")
        name = best or "no match"
        print(f"  {probe:<11} -> {name:<9} (top similarity {top:+.4f})  {_mark(best == expected)}")
    summary = {
        "photos": len(paths),
        "embedded": len(vectors),
        "compared": compared,
        "verify_correct": correct,
        "enrolled": len(enrolled),
        "identified": identified,
        "identify_correct": right,
        "model_id": pipeline.model_id,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True)
    summary = run(parser.parse_args(argv).photos)
    print(json.dumps(summary))
    ok = summary["verify_correct"] == summary["compared"] and summary["identify_correct"] == 4
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
