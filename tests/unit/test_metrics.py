"""Verification metrics against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.evaluation.calibrate import balanced_threshold, far_thresholds
from facegate.evaluation.metrics import accuracy_at, best_threshold, kfold_accuracy, roc_auc


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
