"""Verification maths: cosine similarity and the decision. Torch-free.

Embeddings are L2-normalised, so cosine similarity is a dot product. A decision is only
meaningful at the threshold calibrated for the model that made both embeddings: the result
records the model id and refuses to compare across models or dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facegate.errors import ModelMismatchError
from facegate.types import Detection


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise unit length; all-zero rows stay zero instead of becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return unit


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two ``(D,)`` vectors (normalised here, so raw vectors are fine too)."""
    a, b = np.asarray(a, dtype=np.float32).ravel(), np.asarray(b, dtype=np.float32).ravel()
    if a.shape != b.shape:
        raise ModelMismatchError(f"embedding sizes differ: {a.shape[0]} vs {b.shape[0]}")
    return float(np.dot(l2_normalise(a), l2_normalise(b)))


def pairwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-by-row cosine of two ``(N, D)`` arrays -> ``(N,) float32``."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ModelMismatchError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    cosines: np.ndarray = np.einsum("nd,nd->n", l2_normalise(a), l2_normalise(b))
    return cosines


@dataclass(frozen=True)
class VerificationResult:
    """A 1:1 decision with everything needed to audit it."""

    similarity: float
    threshold: float
    match: bool
    model_id: str
    faces: tuple[Detection | None, Detection | None] = field(default=(None, None))

    def to_dict(self) -> dict[str, Any]:
        return {
            "similarity": round(self.similarity, 6),
            "threshold": round(self.threshold, 6),
            "match": self.match,
            "model_id": self.model_id,
            "faces": [f.to_dict() if f is not None else None for f in self.faces],
        }


def verify_embeddings(
    a: np.ndarray,
    b: np.ndarray,
    *,
    threshold: float,
    model_id: str,
    faces: tuple[Detection | None, Detection | None] = (None, None),
) -> VerificationResult:
    """Decide same / different: a match when similarity >= threshold."""
    similarity = cosine_similarity(a, b)
    return VerificationResult(similarity, threshold, similarity >= threshold, model_id, faces)
