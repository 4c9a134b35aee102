"""Evaluation plots: ROC curves, genuine/impostor score histograms, t-SNE maps. Torch-free.

matplotlib runs headless (the Agg backend, chosen before pyplot is imported) because these
are written by CLI runs and batch jobs, never shown on a screen. Every function writes one
PNG and returns its path, so a report can link what it made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Distinct, colour-blind friendly colours; identities beyond them reuse with other markers.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str = "ROC"
) -> Path:
    """TAR against FAR on a log FAR axis (the low-FAR end is where deployments live)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for label, far, tar in curves:
        shown = far > 0
        ax.plot(far[shown], tar[shown], label=label, linewidth=1.6)
    ax.set_xscale("log")
    ax.set_xlim(left=1e-4, right=1.0)
    ax.set_ylim(
        bottom=max(0.0, min(float(np.min(t[f > 0])) for _, f, t in curves) - 0.02), top=1.001
    )
    for marked in (1e-3, 1e-2):
        ax.axvline(marked, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_histograms(
    scores: np.ndarray, same: np.ndarray, threshold: float, path: Path, title: str
) -> Path:
    """Same-person and different-person cosine similarities, with the threshold marked."""
    plt = _pyplot()
    scores, same = np.asarray(scores), np.asarray(same, dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    bins = np.linspace(min(-0.2, float(scores.min())), 1.0, 61)
    ax.hist(scores[~same], bins=bins, alpha=0.6, label=f"different ({int((~same).sum())})")
    ax.hist(scores[same], bins=bins, alpha=0.6, label=f"same ({int(same.sum())})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pick_identities(labels: Sequence[str], max_identities: int, min_images: int = 2) -> list[str]:
    """The identities with the most images (ties by name): a readable map, not a crowd."""
    counts = Counter(labels)
    ranked = sorted((n for n in counts if counts[n] >= min_images), key=lambda n: (-counts[n], n))
    return ranked[:max_identities]


def plot_tsne(
    vectors: np.ndarray,
    labels: Sequence[str],
    path: Path,
    *,
    title: str,
    max_identities: int = 15,
    seed: int = 0,
) -> Path:
    """2-D t-SNE of embeddings, one colour per identity (the most photographed ones).

    A model that separates identities shows tight, well-apart clusters; cosine distance is
    used because that is what verification compares.
    """
    from sklearn.manifold import TSNE

    keep_names = pick_identities(labels, max_identities)
    keep = np.array([label in set(keep_names) for label in labels])
    if keep.sum() < 5:
        raise ValueError("t-SNE needs at least 5 embeddings of identities with 2+ images")
    points = TSNE(
        n_components=2,
        metric="cosine",
        init="pca",
        perplexity=float(min(30, max(2, keep.sum() // 4))),
        random_state=seed,
    ).fit_transform(np.asarray(vectors, dtype=np.float32)[keep])
    kept_labels = [label for label, k in zip(labels, keep, strict=True) if k]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    colours = plt.get_cmap("tab10")
    for n, name in enumerate(keep_names):
        mine = np.array([label == name for label in kept_labels])
        ax.scatter(
            points[mine, 0],
            points[mine, 1],
            s=22,
            color=colours(n % 10),
            marker=MARKERS[(n // 10) % len(MARKERS)],
            label=f"{name} ({int(mine.sum())})",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
