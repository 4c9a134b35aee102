"""P×K batch sampling for metric-learning losses.

Triplet mining needs every batch to hold several images of each identity it contains (else an
anchor has no positive) and several identities (else no negatives). ``PKSampler`` builds such
batches: ``P`` distinct identities × ``K`` images each.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["PKSampler"]


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding ``P`` identities × ``K`` dataset indices per batch.

    Use it as a DataLoader's ``batch_sampler``. Identities with fewer than 2 samples are
    skipped (they can never supply a positive); identities with fewer than ``K`` samples are
    drawn with replacement. Each batch draws its ``P`` identities uniformly without
    replacement among the eligible ones; an epoch has ``eligible samples // (P * K)`` batches
    (at least 1). Batches depend only on ``seed`` and the epoch set with ``set_epoch`` (as with
    ``DistributedSampler``, the trainer calls it at the start of each epoch), so a resumed run
    reproduces them via ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be positive, got p={p}, k={k}")
        self.p = p
        self.k = k
        self.seed = seed
        self.epoch = 0
        by_label: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_label.setdefault(int(label), []).append(index)
        self._groups = [
            np.asarray(indices, dtype=np.int64)
            for _, indices in sorted(by_label.items())
            if len(indices) >= 2
        ]
        if len(self._groups) < p:
            raise ValueError(
                f"need at least p={p} identities with >= 2 samples, found {len(self._groups)}"
            )
        self._eligible = sum(len(group) for group in self._groups)

    def __len__(self) -> int:
        return max(1, self._eligible // (self.p * self.k))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(len(self)):
            batch: list[int] = []
            for g in rng.choice(len(self._groups), size=self.p, replace=False):
                group = self._groups[g]
                picks = rng.choice(group, size=self.k, replace=len(group) < self.k)
                batch.extend(int(i) for i in picks)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """What a trainer checkpoints to resume with the same batches."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
