"""facegate.training: ArcFace, triplet mining and losses, margin schedule, hybrid and
distillation losses, and the P×K batch sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facegate.training.losses import (
    ArcFaceLoss,
    DistillationLoss,
    HybridLoss,
    MarginSchedule,
    TripletLoss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    mine_batch_hard,
    pairwise_distances,
)
from facegate.training.sampler import PKSampler


def _unit(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(rad), torch.sin(rad)], dim=1)


def _np_dist(x: torch.Tensor) -> np.ndarray:
    e = F.normalize(x.double(), dim=1).numpy()
    return np.linalg.norm(e[:, None, :] - e[None, :, :], axis=2)


# --- ArcFace -------------------------------------------------------------------------------


def test_arcface_margin_zero_is_scaled_cosine_softmax() -> None:
    torch.manual_seed(0)
    loss_fn = ArcFaceLoss(8, 5, scale=30.0, margin=0.0)
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    expected = F.cross_entropy(
        30.0 * F.normalize(x, dim=1) @ F.normalize(loss_fn.weight, dim=1).T, y
    )
    torch.testing.assert_close(loss_fn(x, y), expected)


def test_arcface_margin_increases_loss_and_gradients_flow() -> None:
    torch.manual_seed(1)
    plain = ArcFaceLoss(8, 5, scale=16.0, margin=0.0)
    margin = ArcFaceLoss(8, 5, scale=16.0, margin=0.3)
    margin.load_state_dict(plain.state_dict())
    x = torch.randn(16, 8, requires_grad=True)
    y = torch.randint(0, 5, (16,))
    loss = margin(x, y)
    assert loss.item() > plain(x, y).item()
    loss.backward()
    assert x.grad is not None and margin.weight.grad is not None
    assert x.grad.abs().sum() > 0 and margin.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_theta_at_pi_is_finite(easy_margin: bool) -> None:
    loss_fn = ArcFaceLoss(2, 2, scale=8.0, margin=0.5, easy_margin=easy_margin)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[-1.0, 0.0]], requires_grad=True)  # exactly opposite class 0's centre
    y = torch.tensor([0])
    logits = loss_fn.logits(x, y)
    mm = math.sin(math.pi - 0.5) * 0.5
    target = -8.0 if easy_margin else 8.0 * (-1.0 - mm)
    torch.testing.assert_close(logits[0, 0].item(), target, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[0, 1].item(), 0.0, rtol=0, atol=1e-5)
    loss = loss_fn(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss_fn.weight.grad).all()


def test_arcface_sub_centers_take_the_max() -> None:
    loss_fn = ArcFaceLoss(2, 2, scale=10.0, margin=0.0, sub_centers=3)
    assert loss_fn.weight.shape == (6, 2)
    with torch.no_grad():  # class 0: 0°, 90°, 180°; class 1: 45°, 225°, 270°
        loss_fn.weight.copy_(_unit([0, 90, 180, 45, 225, 270]).float())
    x = _unit([80]).float()
    cos = loss_fn.cosine(x)
    expected = torch.tensor([[math.cos(math.radians(10)), math.cos(math.radians(35))]])
    torch.testing.assert_close(cos, expected)
    y = torch.tensor([1])
    torch.testing.assert_close(loss_fn(x, y), F.cross_entropy(10.0 * expected, y))


def test_arcface_training_lowers_loss() -> None:
    torch.manual_seed(2)
    centres = torch.randn(4, 6) * 3
    y = torch.arange(4).repeat_interleave(8)
    x = centres[y] + 0.3 * torch.randn(32, 6)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))
    loss_fn = ArcFaceLoss(8, 4, scale=16.0, margin=0.3)
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-2)
    first = loss_fn(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    assert loss_fn(model(x), y).item() < 0.5 * first


# --- Triplet -------------------------------------------------------------------------------

# Identity 0 at 0°, 10°, 30°; identity 1 at 60°, 100°; identity 2 at 180°, 200°; identity 3
# (a singleton, no positive) at 270°.
ANGLES = [0, 10, 30, 60, 100, 180, 200, 270]
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])


def test_pairwise_distances_match_numpy() -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dist = pairwise_distances(x)
    np.testing.assert_allclose(dist.numpy(), _np_dist(x), atol=1e-7)
    assert (dist.diagonal() == 0).all()


def test_pairwise_distances_gradient_finite_for_duplicates() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    pairwise_distances(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_mine_batch_hard_picks_hand_computed_indices() -> None:
    pos, neg = mine_batch_hard(_unit(ANGLES), LABELS)
    assert pos.tolist() == [2, 2, 0, 4, 3, 6, 5, -1]
    assert neg.tolist() == [3, 3, 3, 2, 2, 4, 7, 6]


def _brute_batch_hard(x: torch.Tensor, labels: list[int], margin: float) -> float:
    d = _np_dist(x)
    losses = []
    for a in range(len(labels)):
        pos = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return float(np.mean(losses))


def _brute_semi_hard(x: torch.Tensor, labels: list[int], margin: float) -> float:
    d = _np_dist(x)
    n = len(labels)
    losses = []
    for a in range(n):
        negs = [d[a, j] for j in range(n) if labels[j] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a] or not negs:
                continue
            outside = [v for v in negs if v > d[a, p]]
            d_an = min(outside) if outside else max(negs)
            losses.append(max(0.0, d[a, p] - d_an + margin))
    return float(np.mean(losses))


def test_batch_hard_loss_matches_brute_force() -> None:
    x = _unit(ANGLES)
    loss = batch_hard_triplet_loss(x, LABELS, 0.3)
    assert loss.item() == pytest.approx(_brute_batch_hard(x, LABELS.tolist(), 0.3), abs=1e-9)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(12, 4, generator=gen, dtype=torch.float64)
        labels = torch.randint(0, 3, (12,), generator=gen)
        expected = _brute_batch_hard(x, labels.tolist(), 0.5)
        assert batch_hard_triplet_loss(x, labels, 0.5).item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_semi_hard_loss_matches_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (16,), generator=gen)
    expected = _brute_semi_hard(x, labels.tolist(), 0.2)
    assert batch_semi_hard_triplet_loss(x, labels, 0.2).item() == pytest.approx(expected, abs=1e-9)


def test_triplet_losses_are_zero_without_valid_triplets() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    same = torch.zeros(4, dtype=torch.long)
    for fn in (batch_hard_triplet_loss, batch_semi_hard_triplet_loss):
        loss = fn(x, same, 0.2)
        assert loss.item() == 0.0
        loss.backward()


def test_margin_schedule_values() -> None:
    linear = MarginSchedule(0.1, 0.5, epochs=4)
    assert [linear(e) for e in (0, 2, 4, 10)] == pytest.approx([0.1, 0.3, 0.5, 0.5])
    cosine = MarginSchedule(0.1, 0.5, epochs=4, kind="cosine")
    quarter = 0.1 + 0.4 * (1 - math.cos(math.pi / 4)) / 2
    assert [cosine(e) for e in (0, 1, 2, 4, 9)] == pytest.approx([0.1, quarter, 0.3, 0.5, 0.5])
    step = MarginSchedule(0.1, 0.5, epochs=4, kind="step", steps=2)
    assert [step(e) for e in range(6)] == pytest.approx([0.1, 0.1, 0.3, 0.3, 0.5, 0.5])
    with pytest.raises(ValueError):
        MarginSchedule(0.1, 0.5, epochs=4, kind="step", steps=0)


def test_triplet_loss_set_epoch_changes_margin() -> None:
    x = _unit(ANGLES)
    loss_fn = TripletLoss(MarginSchedule(0.0, 1.0, epochs=2))
    assert loss_fn.margin == 0.0
    early = loss_fn(x, LABELS)
    loss_fn.set_epoch(2)
    assert loss_fn.margin == 1.0
    late = loss_fn(x, LABELS)
    assert late.item() > early.item()
    assert late.item() == pytest.approx(batch_hard_triplet_loss(x, LABELS, 1.0).item())
    semi = TripletLoss(0.4, mining="semi_hard")
    assert semi(x, LABELS).item() == pytest.approx(
        batch_semi_hard_triplet_loss(x, LABELS, 0.4).item()
    )


# --- Hybrid and distillation ---------------------------------------------------------------


def test_hybrid_is_weighted_sum_and_passes_epoch() -> None:
    torch.manual_seed(4)
    arcface = ArcFaceLoss(8, 3, scale=16.0, margin=0.2)
    triplet = TripletLoss(MarginSchedule(0.1, 0.3, epochs=2))
    hybrid = HybridLoss(arcface, triplet, arcface_weight=0.7, triplet_weight=2.5)
    x, y = torch.randn(12, 8), torch.arange(3).repeat(4)
    hybrid.set_epoch(1)
    assert triplet.margin == pytest.approx(0.2)
    expected = 0.7 * arcface(x, y) + 2.5 * triplet(x, y)
    torch.testing.assert_close(hybrid(x, y), expected)


def test_distillation_loss() -> None:
    torch.manual_seed(5)
    loss_fn = DistillationLoss(cosine_weight=0.5, mse_weight=3.0)
    teacher = torch.randn(6, 8)
    assert loss_fn(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(3.0 * teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(6, 8, requires_grad=True)
    loss = loss_fn(student, teacher)
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    expected = 0.5 * (1 - F.cosine_similarity(s, t)).mean() + 3.0 * F.mse_loss(s, t)
    torch.testing.assert_close(loss, expected)
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None


# --- PKSampler -----------------------------------------------------------------------------

# Identity sizes: 0:5, 1:4, 2:3, 3:2, 4:1, 5:1, 6:8 (4 and 5 are singletons).
SIZES = {0: 5, 1: 4, 2: 3, 3: 2, 4: 1, 5: 1, 6: 8}
SAMPLE_LABELS = [label for label, n in SIZES.items() for _ in range(n)]


def _epoch(sampler: PKSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_pk_batches_have_p_identities_of_k() -> None:
    sampler = PKSampler(SAMPLE_LABELS, p=3, k=4, seed=1)
    assert len(sampler) == 22 // 12
    singletons = {i for i, label in enumerate(SAMPLE_LABELS) if SIZES[label] < 2}
    for epoch in range(5):
        batches = _epoch(sampler, epoch)
        assert len(batches) == len(sampler)
        for batch in batches:
            assert len(batch) == 12
            assert all(isinstance(i, int) for i in batch)
            labels = [SAMPLE_LABELS[i] for i in batch]
            assert len(set(labels)) == 3
            for j in range(3):  # K consecutive indices per identity
                assert len(set(labels[4 * j : 4 * j + 4])) == 1
            assert not singletons & set(batch)
            for label in set(labels):
                idx = [i for i in batch if SAMPLE_LABELS[i] == label]
                if SIZES[label] >= 4:
                    assert len(set(idx)) == 4


def test_pk_len_at_least_one() -> None:
    assert len(PKSampler([0, 0, 1, 1], p=2, k=4)) == 1


def test_pk_deterministic_and_epochs_differ() -> None:
    a = PKSampler(SAMPLE_LABELS, p=2, k=3, seed=7)
    b = PKSampler(SAMPLE_LABELS, p=2, k=3, seed=7)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 3) == _epoch(b, 3)
    assert _epoch(a, 0) != _epoch(a, 1)
    assert _epoch(a, 0) != _epoch(PKSampler(SAMPLE_LABELS, p=2, k=3, seed=8), 0)


def test_pk_state_dict_round_trip() -> None:
    a = PKSampler(SAMPLE_LABELS, p=2, k=3, seed=11)
    a.set_epoch(4)
    state = a.state_dict()
    assert state == {"epoch": 4, "seed": 11}
    b = PKSampler(SAMPLE_LABELS, p=2, k=3, seed=0)
    b.load_state_dict(state)
    assert list(b) == list(a)


def test_pk_too_few_identities() -> None:
    with pytest.raises(ValueError, match="identities"):
        PKSampler(SAMPLE_LABELS, p=6, k=2)  # only 5 identities have >= 2 samples
    with pytest.raises(ValueError):
        PKSampler([0, 1, 2, 3], p=2, k=2)  # all singletons
