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


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False accept rate, true accept rate and threshold at every distinct score.

    Point ``i`` predicts "same" for ``score >= thresholds[i]``; thresholds run from high to
    low so both rates rise from (0, 0) towards (1, 1), as plotted.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], same[order]
    last_of_run = np.concatenate([s[1:] != s[:-1], [True]])
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    tar = np.concatenate([[0.0], tp / max(int(y.sum()), 1)])
    far = np.concatenate([[0.0], fp / max(int((~y).sum()), 1)])
    thresholds = np.concatenate([[np.inf], s[last_of_run]])
    return far, tar, thresholds


def eer(scores: np.ndarray, same: np.ndarray) -> float:
    """Equal error rate: where the false accept and false reject rates cross.

    Interpolated linearly between the two ROC points that bracket the crossing, so a small
    pair set does not snap the answer to a multiple of ``1 / pairs``.
    """
    far, tar, _ = roc_curve(scores, same)
    frr = 1.0 - tar
    gap = far - frr
    i = int(np.argmax(gap >= 0))
    if i == 0:
        return float(far[0])
    g0, g1 = gap[i - 1], gap[i]
    w = g0 / (g0 - g1) if g0 != g1 else 0.0
    return float(far[i - 1] + w * (far[i] - far[i - 1]))


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """Lowest threshold whose false accept rate on these impostor scores is <= ``far``."""
    ordered = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(far * len(ordered)))
    if allowed >= len(ordered):
        return float(ordered[-1]) if len(ordered) else 0.0
    return float(ordered[allowed] + 1e-6)


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """True accept rate at the threshold that keeps the false accept rate <= ``far``.

    With ``n`` impostor pairs a FAR under ``1 / n`` is not measurable: the answer is then
    the TAR at zero false accepts, which the report flags through ``impostor_pairs``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    threshold = threshold_at_far(scores[~same], far)
    return float(np.mean(scores[same] >= threshold)) if same.any() else float("nan")


@dataclass(frozen=True)
class Decisions:
    """Counts and rates of ``score >= threshold`` decisions against the truth."""

    threshold: float
    true_accepts: int
    false_accepts: int
    true_rejects: int
    false_rejects: int

    @property
    def accuracy(self) -> float:
        total = self.true_accepts + self.false_accepts + self.true_rejects + self.false_rejects
        return (self.true_accepts + self.true_rejects) / total if total else float("nan")

    @property
    def precision(self) -> float:
        accepted = self.true_accepts + self.false_accepts
        return self.true_accepts / accepted if accepted else 0.0

    @property
    def recall(self) -> float:
        genuine = self.true_accepts + self.false_rejects
        return self.true_accepts / genuine if genuine else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def decisions_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> Decisions:
    accepted = np.asarray(scores, dtype=np.float64) >= threshold
    same = np.asarray(same, dtype=bool)
    return Decisions(
        threshold=float(threshold),
        true_accepts=int(np.sum(accepted & same)),
        false_accepts=int(np.sum(accepted & ~same)),
        true_rejects=int(np.sum(~accepted & ~same)),
        false_rejects=int(np.sum(~accepted & same)),
    )
