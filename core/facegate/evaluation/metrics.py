"""Verification metrics on similarity scores. Torch-free, numpy only.

The LFW protocol picks the threshold on the other folds and measures accuracy on the held-out
one, so the reported accuracy never benefits from a threshold tuned on its own pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``score >= t`` and that accuracy.

    Candidates are the midpoints between consecutive distinct scores (plus both ends), so the
    answer does not sit on a sample and generalises symmetrically.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    order = np.argsort(scores)
    s, y = scores[order], same[order]
    # Predicting "same" for everything at index >= i: correct = negatives below + positives above.
    neg_below = np.concatenate([[0], np.cumsum(~y)])
    pos_above = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    correct = neg_below + pos_above
    distinct = np.concatenate([[True], s[1:] != s[:-1], [True]])
    correct = np.where(distinct, correct, -1)
    i = int(np.argmax(correct))
    if i == 0:
        t = s[0] - 1e-6
    elif i == len(s):
        t = s[-1] + 1e-6
    else:
        t = (s[i - 1] + s[i]) / 2.0
    return float(t), float(correct[i] / len(s))


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((np.asarray(scores) >= threshold) == np.asarray(same, dtype=bool)))


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted as half)."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    pos, neg = scores[same], scores[~same]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    starts = np.concatenate([[0], np.flatnonzero(sorted_vals[1:] != sorted_vals[:-1]) + 1])
    ends = np.concatenate([starts[1:], [len(values)]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


@dataclass(frozen=True)
class FoldResult:
    """Mean/std over folds of held-out accuracy, with the thresholds chosen for each fold."""

    accuracy: float
    accuracy_std: float
    threshold: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> FoldResult:
    """LFW protocol: for each fold, threshold from the other folds, accuracy on this one."""
    scores, same, folds = np.asarray(scores), np.asarray(same, dtype=bool), np.asarray(folds)
    accs, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        train = ~test if (~test).any() else test
        t, _ = best_threshold(scores[train], same[train])
        thresholds.append(t)
        accs.append(accuracy_at(scores[test], same[test], t))
    return FoldResult(
        accuracy=float(np.mean(accs)),
        accuracy_std=float(np.std(accs)),
        threshold=float(np.mean(thresholds)),
        fold_accuracies=[float(a) for a in accs],
        fold_thresholds=[float(t) for t in thresholds],
    )
