"""Verification metrics against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.evaluation.calibrate import balanced_threshold, far_thresholds
from facegate.evaluation.metrics import (
    accuracy_at,
    best_threshold,
    decisions_at,
    eer,
    kfold_accuracy,
    roc_auc,
    roc_curve,
    tar_at_far,
    threshold_at_far,
)


def _data(seed: int, n: int = 400):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    scores = np.where(same, rng.normal(0.6, 0.15, n), rng.normal(0.1, 0.15, n))
    return np.round(scores, 3), same  # rounding creates ties on purpose


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_is_the_brute_force_optimum(seed):
    scores, same = _data(seed)
    t, acc = best_threshold(scores, same)
    brute = max(accuracy_at(scores, same, c) for c in np.concatenate([scores, [9.0]]))
    assert acc == pytest.approx(brute)
    assert accuracy_at(scores, same, t) == pytest.approx(acc)


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_equals_pair_counting(seed):
    scores, same = _data(seed, 200)
    pos, neg = scores[same], scores[~same]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(scores, same) == pytest.approx(wins / (len(pos) * len(neg)))


def test_kfold_uses_threshold_from_other_folds():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.55, 0.45])
    same = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    folds = np.array([0, 0, 1, 1, 2, 2])
    result = kfold_accuracy(scores, same, folds)
    assert result.accuracy == 1.0 and len(result.fold_thresholds) == 3
    swapped = kfold_accuracy(scores, ~same, folds)
    assert swapped.accuracy < 0.5


def test_balanced_threshold_ignores_class_imbalance():
    rng = np.random.default_rng(5)
    pos = rng.normal(0.6, 0.1, 50)
    neg = rng.normal(0.0, 0.1, 5000)
    scores = np.concatenate([pos, neg])
    same = np.concatenate([np.ones(50, bool), np.zeros(5000, bool)])
    t, balanced = balanced_threshold(scores, same)
    assert 0.2 < t < 0.4 and balanced > 0.97


def test_far_thresholds_bound_false_accepts():
    neg = np.random.default_rng(1).normal(0, 0.1, 10000)
    for far, t in far_thresholds(neg).items():
        assert np.mean(neg >= t) <= float(far)


def _brute_eer(scores, same):
    """EER by definition: scan thresholds, where |FAR - FRR| is smallest, their mean."""
    best = (2.0, 0.0)
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        far = np.mean(scores[~same] >= t)
        frr = np.mean(scores[same] < t)
        if abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2)
    return best[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_matches_the_crossing_of_far_and_frr(seed):
    scores, same = _data(seed, 2000)
    # interpolated between bracketing ROC points: within one step of the brute-force value
    step = 1.0 / min(same.sum(), (~same).sum())
    assert eer(scores, same) == pytest.approx(_brute_eer(scores, same), abs=step)


def test_eer_of_separable_scores_is_zero_and_of_reversed_is_one():
    same = np.array([True, True, False, False])
    assert eer(np.array([0.9, 0.8, 0.1, 0.2]), same) == 0.0
    assert eer(np.array([0.1, 0.2, 0.9, 0.8]), same) == 1.0


def test_roc_curve_runs_from_origin_to_one_one_and_is_monotone():
    scores, same = _data(3)
    far, tar, thresholds = roc_curve(scores, same)
    assert (far[0], tar[0]) == (0.0, 0.0) and (far[-1], tar[-1]) == (1.0, 1.0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    for i in (1, len(far) // 2, len(far) - 1):
        accepted = scores >= thresholds[i]
        assert far[i] == pytest.approx(np.mean(accepted[~same]))
        assert tar[i] == pytest.approx(np.mean(accepted[same]))
    assert np.trapezoid(tar, far) == pytest.approx(roc_auc(scores, same), abs=1e-9)


@pytest.mark.parametrize("far", [1e-1, 1e-2])
def test_tar_at_far_keeps_false_accepts_within_the_target(far):
    scores, same = _data(4, 4000)
    t = threshold_at_far(scores[~same], far)
    assert np.mean(scores[~same] >= t) <= far
    # the next lower distinct impostor score would exceed the target: t is the lowest such
    lower = scores[~same][scores[~same] < t].max()
    assert np.mean(scores[~same] >= lower) > far
    assert tar_at_far(scores, same, far) == pytest.approx(np.mean(scores[same] >= t))


def test_decisions_count_every_pair_once_and_give_precision_recall_f1():
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    same = np.array([True, True, True, False, False, False])
    d = decisions_at(scores, same, 0.5)
    assert (d.true_accepts, d.false_accepts, d.true_rejects, d.false_rejects) == (2, 1, 2, 1)
    assert d.precision == pytest.approx(2 / 3) and d.recall == pytest.approx(2 / 3)
    assert d.f1 == pytest.approx(2 / 3) and d.accuracy == pytest.approx(4 / 6)
    nobody = decisions_at(scores, same, 1.5)
    assert nobody.precision == 0.0 and nobody.recall == 0.0 and nobody.f1 == 0.0
