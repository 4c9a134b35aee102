"""Greedy non-maximum suppression on numpy arrays, the two rules MTCNN uses.

``nms`` and ``batched_nms`` are ``torchvision.ops``' IoU rule, written here so that detection
needs neither torch nor torchvision (whose import alone costs 1.5-2 s of a cold start):
visit boxes by descending score, drop every later box of the same group whose intersection
over union with a kept one exceeds the threshold; areas without ``+1``, float32 arithmetic
as torchvision's CPU kernel, so the same boxes are kept. ``batched_nms_min`` is
facenet-pytorch's ``nms_numpy`` with its "Min" overlap, which MTCNN's last stage uses.

The only Python loop is the greedy one over kept boxes; each of its steps is a few vector
operations over the boxes left to compare with.
"""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Kept indices of ``boxes`` ``(M, 4)`` ``(x1, y1, x2, y2)`` under greedy IoU NMS, best
    score first (ties in index order)."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    ends = np.full(len(order), len(order))
    kept: np.ndarray = order[_greedy_iou(boxes[order], ends, threshold)]  # best first
    return kept


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float
) -> np.ndarray:
    """``nms`` within each group (image) independently: boxes of different groups never
    suppress each other. Kept indices by descending score (ties in index order).

    One greedy pass over all groups: boxes sorted by group, then descending score, so each
    group is a contiguous run and a kept box is compared with the rest of its own run only
    (torchvision's offset trick is not needed, nor its care for negative coordinates).
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((-scores, groups))  # stable: equal scores stay in index order
    sorted_groups = groups[order]
    ends = np.searchsorted(sorted_groups, sorted_groups, side="right")
    kept = np.sort(order[_greedy_iou(boxes[order], ends, threshold)])
    return kept[np.argsort(-scores[kept], kind="stable")]


def _greedy_iou(boxes: np.ndarray, ends: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean keep mask of ``boxes`` already in visiting order; box ``i`` is compared with
    ``boxes[i + 1 : ends[i]]`` (the rest of its group)."""
    b = np.asarray(boxes, dtype=np.float32)
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    alive = np.ones(len(b), dtype=bool)
    i = 0
    # Degenerate boxes give 0/0 (NaN), which suppresses nothing, as in torchvision's kernel.
    with np.errstate(divide="ignore", invalid="ignore"):
        while i < len(b):
            rest = slice(i + 1, ends[i])
            w = np.minimum(x2[i], x2[rest])
            w -= np.maximum(x1[i], x1[rest])
            np.maximum(w, 0, out=w)
            h = np.minimum(y2[i], y2[rest])
            h -= np.maximum(y1[i], y1[rest])
            np.maximum(h, 0, out=h)
            inter = w * h
            union = area[rest] + area[i]
            union -= inter
            alive[rest][inter / union > threshold] = False
            i = _next_alive(alive, i + 1)
    return alive


def _next_alive(alive: np.ndarray, start: int) -> int:
    """First index from ``start`` whose box is still alive, else ``len(alive)``: the greedy
    loop jumps over suppressed boxes instead of visiting each (``argmax`` on booleans stops
    at the first ``True``)."""
    if start >= len(alive):
        return len(alive)
    offset = int(alive[start:].argmax())
    return start + offset if alive[start + offset] else len(alive)


def batched_nms_min(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float
) -> np.ndarray:
    """Greedy NMS with overlap = intersection / smaller area ("Min"), per group (image).

    facenet-pytorch's ``nms_numpy``: ``+1`` pixel areas, visit in ascending ``np.argsort``
    order from the end, drop boxes whose overlap exceeds ``threshold``. Few boxes reach
    MTCNN's last stage, so the overlaps come from one ``(M, M)`` matrix and the loop runs
    over kept boxes only. Kept indices in visiting order (descending score).
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    b = np.asarray(boxes, dtype=np.float32)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    iw = np.maximum(0.0, np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1) + 1)
    ih = np.maximum(0.0, np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1) + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = iw * ih / np.minimum(area[:, None], area)
    order = np.argsort(scores)[::-1]
    # Rows and columns in visiting order: box i can only suppress boxes after it.
    suppress = ((overlap > threshold) & (groups[:, None] == groups))[np.ix_(order, order)]
    alive = np.ones(len(b), dtype=bool)
    pick = []
    i = 0
    while i < len(b):
        pick.append(i)
        alive[i + 1 :] &= ~suppress[i, i + 1 :]
        i = _next_alive(alive, i + 1)
    return order[pick]
