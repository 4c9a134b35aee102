"""Loss functions for training face embedders (plain torch).

Why each exists:

- ``ArcFaceLoss``: classification with an additive angular margin (Deng et al. 2019). A softmax
  over identities learns separable features; pushing the target angle out by ``m`` makes them
  discriminative, which is what open-set verification (unseen identities) needs. Sub-centres
  (Deng et al. 2020) give each identity ``K`` centres so noisy or multi-modal classes (profile
  versus frontal, mislabelled images) do not drag one centre around.
- Triplet losses on P×K batches (``batch_hard_triplet_loss``, Hermans et al. 2017, and
  ``batch_semi_hard_triplet_loss``, Schroff et al. 2015 / TensorFlow Addons): they optimise the
  metric used at verification time directly, need no per-identity classifier weights, and so
  scale to fine-tuning on new identities. Mining inside the batch picks the informative triplets.
- ``MarginSchedule``: a large triplet margin early on collapses training; growing it gives the
  embedding time to organise before it is asked for wide gaps.
- ``HybridLoss``: ArcFace gives a well-spread global structure, the triplet term tightens the
  local (pairwise) geometry; summing them is a common fine-tuning recipe.
- ``DistillationLoss``: trains a small student to reproduce a large teacher's embedding space,
  so the student's embeddings stay comparable with a gallery enrolled by the teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ArcFaceLoss",
    "DistillationLoss",
    "HybridLoss",
    "MarginSchedule",
    "TripletLoss",
    "batch_hard_triplet_loss",
    "batch_semi_hard_triplet_loss",
    "mine_batch_hard",
    "pairwise_distances",
]

#: Floor under ``1 - cos²`` and squared distances before ``sqrt``: the derivative of sqrt at 0
#: is infinite, and ``0 * inf`` is NaN in the backward pass even for the branch ``where`` drops.
_SQRT_EPS = 1e-12


class ArcFaceLoss(nn.Module):
    """Additive angular margin softmax loss (ArcFace), optionally with sub-centres.

    The class-centre weight has shape ``(num_classes * sub_centers, embedding_dim)``; rows
    ``c * sub_centers .. (c + 1) * sub_centers - 1`` are the sub-centres of class ``c``.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        sub_centers: int = 1,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1 or sub_centers < 1:
            raise ValueError("embedding_dim, num_classes and sub_centers must be positive")
        if not 0.0 <= margin < math.pi:
            raise ValueError(f"margin must be in [0, pi), got {margin}")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.scale = scale
        self.margin = margin
        self.easy_margin = easy_margin
        self.sub_centers = sub_centers
        self.weight = nn.Parameter(torch.empty(num_classes * sub_centers, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        # Beyond theta = pi - m, theta + m wraps past pi and cos(theta + m) would rise again
        # (a smaller penalty for a worse angle); below th, fall back to a linear penalty.
        self.th = math.cos(math.pi - margin)
        self.mm = math.sin(math.pi - margin) * margin

    def cosine(self, embeddings: Tensor) -> Tensor:
        """``(N, num_classes)`` cosine to each class: the max over its sub-centres."""
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        if self.sub_centers > 1:
            cos = cos.view(-1, self.num_classes, self.sub_centers).amax(dim=2)
        return cos

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits with the margin on the target class (argmax of the rows = accuracy)."""
        cos = self.cosine(embeddings)
        sin = torch.sqrt(torch.clamp(1.0 - cos * cos, _SQRT_EPS, 1.0))
        phi = cos * self.cos_m - sin * self.sin_m
        if self.easy_margin:
            phi = torch.where(cos > 0, phi, cos)
        else:
            phi = torch.where(cos > self.th, phi, cos - self.mm)
        target = F.one_hot(labels.long(), self.num_classes).to(dtype=torch.bool)
        return self.scale * torch.where(target, phi, cos)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of the margin logits; ``embeddings`` need not be normalised."""
        return F.cross_entropy(self.logits(embeddings, labels), labels.long())


def pairwise_distances(embeddings: Tensor) -> Tensor:
    """``(N, N)`` euclidean distances between L2-normalised embeddings, zero diagonal.

    Computed from the Gram matrix (one matmul); zero squared distances get ``eps`` inside the
    sqrt so the gradient there is finite rather than NaN, and are then set back to 0.
    """
    x = F.normalize(embeddings, dim=1)
    sq = x.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) - 2.0 * x @ x.T + sq.unsqueeze(0)).clamp_min(0.0)
    n = d2.shape[0]
    d2 = d2.masked_fill(torch.eye(n, dtype=torch.bool, device=d2.device), 0.0)
    zero = d2 == 0
    dist = torch.sqrt(d2 + zero.to(d2.dtype) * _SQRT_EPS)
    return dist.masked_fill(zero, 0.0)


def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, negative) boolean ``(N, N)`` masks; positives exclude the anchor itself."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _batch_hard(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hardest positive/negative index per anchor, and which anchors have both."""
    pos_mask, neg_mask = _masks(labels)
    pos_index = dist.masked_fill(~pos_mask, -math.inf).argmax(dim=1)
    neg_index = dist.masked_fill(~neg_mask, math.inf).argmin(dim=1)
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    return pos_index, neg_index, valid


def mine_batch_hard(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the hardest positive and hardest negative of each anchor.

    Exposed so the mining can be inspected and tested on its own. Anchors without a positive
    (or a negative) get -1 in that slot.
    """
    with torch.no_grad():
        dist = pairwise_distances(embeddings)
        pos_mask, neg_mask = _masks(labels)
        pos_index, neg_index, _ = _batch_hard(dist, labels)
        pos_index = torch.where(pos_mask.any(dim=1), pos_index, -1)
        neg_index = torch.where(neg_mask.any(dim=1), neg_index, -1)
    return pos_index, neg_index


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017).

    For each anchor: ``relu(max d(a, p) - min d(a, n) + margin)``, averaged over the anchors
    that have at least one positive and one negative (0 if there are none).
    """
    dist = pairwise_distances(embeddings)
    pos_index, neg_index, valid = _batch_hard(dist, labels)
    rows = torch.arange(dist.shape[0], device=dist.device)
    losses = F.relu(dist[rows, pos_index] - dist[rows, neg_index] + margin)
    if not bool(valid.any()):
        return dist.sum() * 0.0
    return losses[valid].mean()


def batch_semi_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Semi-hard triplet loss (FaceNet), with TensorFlow Addons' fallback.

    For each (anchor, positive) pair: the negative with the smallest ``d_an`` such that
    ``d_an > d_ap``; if there is none, the negative with the largest ``d_an`` (all of them are
    then ``<= d_ap``). Mean of ``relu(d_ap - d_an + margin)`` over the pairs whose anchor has a
    negative (0 if there are none). Semi-hard negatives avoid the collapse that always taking
    the hardest negative causes early in training.
    """
    dist = pairwise_distances(embeddings)
    pos_mask, neg_mask = _masks(labels)
    d_ap = dist.unsqueeze(2)  # (a, p, 1)
    d_an = dist.unsqueeze(1)  # (a, 1, n)
    negs = neg_mask.unsqueeze(1)  # (a, 1, n)
    outside = negs & (d_an > d_ap)  # (a, p, n)
    nearest_outside = d_an.masked_fill(~outside, math.inf).amin(dim=2)
    farthest_inside = d_an.masked_fill(~negs, -math.inf).amax(dim=2).expand_as(nearest_outside)
    chosen = torch.where(outside.any(dim=2), nearest_outside, farthest_inside)
    valid = pos_mask & neg_mask.any(dim=1, keepdim=True)
    if not bool(valid.any()):
        return dist.sum() * 0.0
    return F.relu(dist[valid] - chosen[valid] + margin).mean()


@dataclass(frozen=True)
class MarginSchedule:
    """Triplet margin growing from ``start`` to ``end`` over ``epochs``, then held at ``end``.

    ``linear``: straight line. ``cosine``: half-cosine ease-in/out. ``step``: ``steps`` equal
    increments, the margin rising by ``(end - start) / steps`` every ``epochs / steps`` epochs
    and reaching ``end`` at ``epochs``.
    """

    start: float
    end: float
    epochs: int
    kind: Literal["linear", "cosine", "step"] = "linear"
    steps: int = 3

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.kind not in ("linear", "cosine", "step"):
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def __call__(self, epoch: int) -> float:
        if self.epochs == 0 or epoch >= self.epochs:
            return self.end
        t = max(epoch, 0) / self.epochs
        if self.kind == "linear":
            frac = t
        elif self.kind == "cosine":
            frac = (1.0 - math.cos(math.pi * t)) / 2.0
        else:
            frac = math.floor(t * self.steps) / self.steps
        return self.start + (self.end - self.start) * frac


class TripletLoss(nn.Module):
    """Triplet loss with in-batch mining and a fixed or scheduled margin."""

    def __init__(
        self,
        margin: float | MarginSchedule = 0.2,
        mining: Literal["batch_hard", "semi_hard"] = "batch_hard",
    ) -> None:
        super().__init__()
        if mining not in ("batch_hard", "semi_hard"):
            raise ValueError(f"unknown mining {mining!r}")
        self.schedule = margin
        self.mining = mining
        self.epoch = 0

    @property
    def margin(self) -> float:
        """The margin in use at the current epoch."""
        if isinstance(self.schedule, MarginSchedule):
            return self.schedule(self.epoch)
        return float(self.schedule)

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the epoch, so a ``MarginSchedule`` margin advances."""
        self.epoch = epoch

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.mining == "batch_hard":
            return batch_hard_triplet_loss(embeddings, labels, self.margin)
        return batch_semi_hard_triplet_loss(embeddings, labels, self.margin)


class HybridLoss(nn.Module):
    """``arcface_weight * ArcFace + triplet_weight * Triplet`` on the same batch."""

    def __init__(
        self,
        arcface: ArcFaceLoss,
        triplet: TripletLoss,
        arcface_weight: float = 1.0,
        triplet_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.arcface = arcface
        self.triplet = triplet
        self.arcface_weight = arcface_weight
        self.triplet_weight = triplet_weight

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the triplet term (its margin may be scheduled)."""
        self.triplet.set_epoch(epoch)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.arcface_weight * self.arcface(
            embeddings, labels
        ) + self.triplet_weight * self.triplet(embeddings, labels)


class DistillationLoss(nn.Module):
    """Embedding distillation: pull the student's direction onto the (frozen) teacher's.

    Both embeddings are L2-normalised (verification compares directions, not lengths). The
    cosine term aligns directions; the MSE term (mean over elements of the normalised vectors)
    adds a per-dimension signal. The teacher is detached: it is the target, not trained.
    """

    def __init__(self, cosine_weight: float = 1.0, mse_weight: float = 1.0) -> None:
        super().__init__()
        self.cosine_weight = cosine_weight
        self.mse_weight = mse_weight

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        s = F.normalize(student, dim=1)
        t = F.normalize(teacher.detach(), dim=1)
        cosine = (1.0 - (s * t).sum(dim=1)).mean()
        return self.cosine_weight * cosine + self.mse_weight * F.mse_loss(s, t)
