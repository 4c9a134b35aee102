"""Embedding: aligned chips in, L2-normalised float32 vectors out. Torch-free.

The network is whatever the runtime made of the card (:mod:`facegate.pipeline.runtime`): its
ONNX graph compiled by OpenVINO or run by ONNX Runtime, or a torch module, any of them called
on ``(N, S, S, 3) uint8`` chips and answering ``(N, D)`` float32. Batching, the optional
horizontal-flip test-time augmentation (the embedding of a face and of its mirror image are
summed before normalising, which smooths out pose and lighting asymmetry) and the
normalisation are done here, in numpy, the same for every runtime.

``FusedEmbedder`` runs several such networks on their own chips of the same face and
concatenates their unit vectors scaled by ``1/sqrt(n)``: the result is again a unit vector,
and the cosine of two fused embeddings is the mean of the networks' cosines, so galleries,
search and thresholds treat a fused model like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from facegate.models.card import ModelCard
from facegate.models.templates import template_for
from facegate.types import AlignedFace

#: A network as the embedder calls it: RGB ``uint8`` chips in, raw ``float32`` embeddings out.
Network = Callable[[np.ndarray], np.ndarray]


class Embedder:
    """A loaded network plus its card; ``embed`` is the only thing callers need."""

    def __init__(
        self,
        network: Network,
        card: ModelCard,
        *,
        batch_size: int = 32,
        flip_tta: bool = False,
    ) -> None:
        self.card = card
        self.network = network
        self.batch_size = batch_size
        self.flip_tta = flip_tta

    @property
    def model_id(self) -> str:
        return self.card.model_id

    @property
    def dim(self) -> int:
        return self.card.embedding_dim

    @property
    def inputs(self) -> list[tuple[np.ndarray, int]]:
        """The (template, chip size) each face must be aligned to, one per network."""
        return [template_for(self.card)]

    def embed_faces(self, faces: Sequence[AlignedFace]) -> np.ndarray:
        """Aligned faces (from ``FacePipeline.align``) -> ``(N, D)`` unit vectors."""
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed(np.stack([f.chip for f in faces]))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3) uint8`` RGB chips -> ``(N, D) float32``, L2-normalised."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[-1] != 3:
            raise ValueError(f"expected (N, S, S, 3) chips, got {chips.shape}")
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [
            self._embed_batch(chips[i : i + self.batch_size])
            for i in range(0, len(chips), self.batch_size)
        ]
        return np.concatenate(out)

    def _embed_batch(self, chips: np.ndarray) -> np.ndarray:
        emb = np.asarray(self.network(np.ascontiguousarray(chips)), dtype=np.float32)
        if self.flip_tta:
            emb = emb + self.network(np.ascontiguousarray(chips[:, :, ::-1]))
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        # torch.nn.functional.normalize's rule: a zero vector stays zero, never NaN.
        unit: np.ndarray = (emb / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return unit


class FusedEmbedder:
    """Several embedders on one face, fused into one unit vector (see the module docstring)."""

    def __init__(self, parts: Sequence[Embedder], card: ModelCard) -> None:
        if not parts:
            raise ValueError("a fused model needs at least one part")
        self.parts = list(parts)
        self.card = card
        self.flip_tta = all(p.flip_tta for p in self.parts)
        if sum(p.dim for p in self.parts) != card.embedding_dim:
            raise ValueError(f"{card.model_id}: parts' dims do not add up to the card's")

    @property
    def model_id(self) -> str:
        return self.card.model_id

    @property
    def dim(self) -> int:
        return self.card.embedding_dim

    @property
    def inputs(self) -> list[tuple[np.ndarray, int]]:
        return [spec for part in self.parts for spec in part.inputs]

    def embed_faces(self, faces: Sequence[AlignedFace]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = [
            part.embed(np.stack([f.all_chips[i] for f in faces]))
            for i, part in enumerate(self.parts)
        ]
        fused: np.ndarray = np.concatenate(vectors, axis=1) / np.sqrt(len(self.parts))
        return fused.astype(np.float32, copy=False)
