"""What one evaluation run produced: embeddings by image, per-pair scores. Torch-free.

``facegate.evaluation.run`` fills these in (with the pipeline); ``facegate.evaluation.report``
and ``calibrate`` read them. Kept apart from both so the report needs no pipeline and the two
never import each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facegate.evaluation.pairs import Pair


@dataclass
class EmbeddedImages:
    """Embeddings by path; which images needed the fallback; which could not be read."""

    vectors: dict[Path, np.ndarray] = field(default_factory=dict)
    no_face: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)


def score_pairs(pairs: Sequence[Pair], embedded: EmbeddedImages) -> np.ndarray:
    """Cosine per pair; -1 where an image could not be read at all."""
    scores = np.full(len(pairs), -1.0, dtype=np.float64)
    for n, pair in enumerate(pairs):
        a, b = embedded.vectors.get(pair.path_a), embedded.vectors.get(pair.path_b)
        if a is not None and b is not None:
            scores[n] = float(np.dot(a, b))
    return scores


@dataclass
class Evaluation:
    """One model's scores on one pair list, with everything a report needs to explain them."""

    model_id: str
    pairs: list[Pair]
    scores: np.ndarray
    embedded: EmbeddedImages
    seconds: float
    flip_tta: bool
    card_threshold: float

    @property
    def same(self) -> np.ndarray:
        return np.array([p.same for p in self.pairs], dtype=bool)

    @property
    def folds(self) -> np.ndarray:
        return np.array([p.fold for p in self.pairs])
