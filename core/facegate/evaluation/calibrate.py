"""Threshold calibration on identity folders (``ROOT/<identity>/<photo>``).

Genuine pairs are every pair of photos of the same identity; impostor pairs are a seeded
random sample of photos of different identities. The decision threshold is the one that
keeps the false accept rate on those impostors at or under ``DECISION_FAR`` (0.1%): a small
identity-disjoint set gives thousands of impostor pairs but only a hundred or so genuine
ones, so the impostor tail is what it measures reliably, and a verification service should
err on the side of refusing strangers. The true accept rate at that threshold and the
balanced-accuracy optimum are recorded beside it.
"""

from __future__ import annotations

import itertools
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from facegate.evaluation.metrics import threshold_at_far
from facegate.evaluation.pairs import Pair
from facegate.evaluation.records import score_pairs
from facegate.evaluation.run import embed_images
from facegate.pipeline.face_pipeline import FacePipeline

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
TARGET_FARS = (1e-2, 1e-3)
DECISION_FAR = 1e-3


def identity_pairs(root: Path, impostors: int = 20000, seed: int = 0) -> list[Pair]:
    """All genuine pairs plus ``impostors`` seeded random different-identity pairs."""
    people = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir()
    }
    pairs = [
        Pair(a, b, True, 0)
        for photos in people.values()
        for a, b in itertools.combinations(photos, 2)
    ]
    names = [n for n, photos in people.items() if photos]
    rng = random.Random(seed)
    seen: set[tuple[Path, Path]] = set()
    while len(seen) < min(impostors, len(names) * (len(names) - 1) // 2):
        x, y = rng.sample(names, 2)
        key = (rng.choice(people[x]), rng.choice(people[y]))
        if key not in seen:
            seen.add(key)
            pairs.append(Pair(key[0], key[1], False, 0))
    return pairs


def balanced_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising (TAR + TRR) / 2, and that balanced accuracy."""
    pos, neg = np.sort(scores[same]), np.sort(scores[~same])
    candidates = np.unique(scores)
    mids = np.concatenate([[candidates[0] - 1e-6], (candidates[1:] + candidates[:-1]) / 2])
    tar = 1.0 - np.searchsorted(pos, mids, side="left") / len(pos)
    trr = np.searchsorted(neg, mids, side="left") / len(neg)
    best = int(np.argmax(tar + trr))
    return float(mids[best]), float((tar[best] + trr[best]) / 2)


def far_thresholds(impostor_scores: np.ndarray) -> dict[str, float]:
    """Smallest threshold whose false-accept rate on these impostors is <= each target."""
    return {f"{far:g}": threshold_at_far(impostor_scores, far) for far in TARGET_FARS}


def calibrate(pipeline: FacePipeline, root: Path, *, impostors: int = 20000) -> dict[str, Any]:
    """A calibration record, ready to commit as
    ``models/calibration/<detector>/<model>.json``: the pipeline's detector made the crops."""
    started = time.perf_counter()
    pairs = identity_pairs(root, impostors)
    paths = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    embedded = embed_images(pipeline, paths)
    scores = score_pairs(pairs, embedded)
    same = np.array([p.same for p in pairs])
    best_balanced, balanced = balanced_threshold(scores, same)
    by_far = far_thresholds(scores[~same])
    threshold = by_far[f"{DECISION_FAR:g}"]
    detector = pipeline.settings.detector
    return {
        "model_id": pipeline.model_id,
        "detector": detector,
        "detector_threshold": pipeline.detector.threshold,
        "threshold": round(threshold, 6),
        "decision_far": DECISION_FAR,
        "tar_at_threshold": round(float(np.mean(scores[same] >= threshold)), 6),
        "far_at_threshold": round(float(np.mean(scores[~same] >= threshold)), 6),
        "balanced_optimum": {"threshold": round(best_balanced, 6), "balanced_accuracy": balanced},
        "far_thresholds": {k: round(v, 6) for k, v in by_far.items()},
        "data": {
            "root": root.name,
            "description": "LFW people who occur in no LFW evaluation pair (identity-disjoint)",
            "identities": len({p.path_a.parent.name for p in pairs}),
            "images": len(paths),
            "genuine_pairs": int(same.sum()),
            "impostor_pairs": int((~same).sum()),
            "impostor_seed": 0,
            "no_face_fallback": len(embedded.no_face),
        },
        "flip_tta": pipeline.embedder.flip_tta,
        "method": "threshold at FAR <= 1e-3 on identity-disjoint impostor pairs",
        "command": f"FACEGATE_DETECTOR={detector} facegate calibrate --root {root.name} "
        f"--model {pipeline.model_id}",
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.perf_counter() - started, 1),
    }
