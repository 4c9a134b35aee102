"""Embedding: aligned chips in, L2-normalised float32 vectors out.

Batched, under ``torch.inference_mode``, channels-last (faster depthwise convs on CPU), with
an optional horizontal-flip test-time augmentation: the embedding of a face and of its mirror
image are summed before normalising, which smooths out pose and lighting asymmetry.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from facegate.models.card import ModelCard


class Embedder:
    """A loaded network plus its card; ``embed`` is the only thing callers need."""

    def __init__(
        self,
        network: nn.Module,
        card: ModelCard,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        flip_tta: bool = False,
    ) -> None:
        self.card = card
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.flip_tta = flip_tta
        self.network = network.to(self.device).to(memory_format=torch.channels_last).eval()

    @property
    def model_id(self) -> str:
        return self.card.model_id

    @property
    def dim(self) -> int:
        return self.card.embedding_dim

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

    @torch.inference_mode()
    def _embed_batch(self, chips: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(chips)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
        emb = self.network(x)
        if self.flip_tta:
            emb = emb + self.network(torch.flip(x, dims=[3]))
        emb = torch.nn.functional.normalize(emb.float(), dim=1)
        return emb.cpu().numpy().astype(np.float32, copy=False)
