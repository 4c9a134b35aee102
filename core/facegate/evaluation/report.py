"""Verification reports: the numbers, the files, the comparison table. Torch-free.

Two protocols share one report shape:

- ``kfold_report`` (LFW): each fold's threshold is chosen on the other folds, so
  ``accuracy`` never benefits from tuning on its own pairs; ``threshold`` is the mean of the
  fold thresholds, and precision / recall / F1 / false accepts / false rejects are counted
  at that one threshold over all pairs (``accuracy_at_threshold`` beside them).
- ``fixed_report`` (generic ``pairs.csv``): everything at the model card's threshold,
  untuned, which is what a deployment would see.

``write_report`` saves ``scores.csv`` next to ``report.json``, so every figure in the report
can be recomputed from the per-pair scores by anyone who doubts it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegate.evaluation.metrics import (
    decisions_at,
    eer,
    kfold_accuracy,
    roc_auc,
    roc_curve,
    tar_at_far,
)
from facegate.evaluation.records import Evaluation

TARGET_FARS = (1e-2, 1e-3)
NO_FACE_FALLBACK = (
    "no face detected: aligned with the median landmarks (relative to image size) of the "
    "images in the same run where a face was found, then embedded and scored like the rest"
)
FAILED_POLICY = "unreadable images: every pair that uses one scores -1 (a non-match)"
REPORT_FILES = ("report.json", "report.md", "scores.csv", "roc.png", "histograms.png")


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


def _common(ev: Evaluation, root: Path | None) -> dict[str, Any]:
    scores, same = ev.scores, ev.same
    images = len(ev.embedded.vectors) + len(ev.embedded.failed)
    return {
        "model_id": ev.model_id,
        "pairs": len(ev.pairs),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "images": images,
        "roc_auc": roc_auc(scores, same),
        "eer": eer(scores, same),
        "tar_at_far": {f"{far:g}": tar_at_far(scores, same, far) for far in TARGET_FARS},
        "card_threshold": ev.card_threshold,
        "accuracy_at_card_threshold": decisions_at(scores, same, ev.card_threshold).accuracy,
        "no_face": len(ev.embedded.no_face),
        "no_face_fallback": NO_FACE_FALLBACK,
        "no_face_images": sorted(_relative(p, root) for p in ev.embedded.no_face),
        "failed": len(ev.embedded.failed),
        "failed_policy": FAILED_POLICY,
        "failed_images": {_relative(p, root): c for p, c in sorted(ev.embedded.failed.items())},
        "flip_tta": ev.flip_tta,
        "seconds": ev.seconds,
        "images_per_second": round(images / ev.seconds, 2) if ev.seconds else None,
    }


def _decision_fields(ev: Evaluation, threshold: float) -> dict[str, Any]:
    d = decisions_at(ev.scores, ev.same, threshold)
    return {
        "accuracy_at_threshold": d.accuracy,
        "precision": d.precision,
        "recall": d.recall,
        "f1": d.f1,
        "false_accepts": d.false_accepts,
        "false_rejects": d.false_rejects,
    }


def kfold_report(ev: Evaluation, root: Path | None = None) -> dict[str, Any]:
    """The LFW protocol: held-out accuracy per fold, mean and spread."""
    result = kfold_accuracy(ev.scores, ev.same, ev.folds)
    return {
        "protocol": "k-fold: each fold's threshold chosen on the other folds",
        "folds": len(result.fold_accuracies),
        "accuracy": result.accuracy,
        "accuracy_std": result.accuracy_std,
        "threshold": result.threshold,
        "fold_accuracies": result.fold_accuracies,
        "fold_thresholds": result.fold_thresholds,
        **_decision_fields(ev, result.threshold),
        **_common(ev, root),
    }


def fixed_report(ev: Evaluation, threshold: float, root: Path | None = None) -> dict[str, Any]:
    """Every decision at one given threshold (the model card's, for a deployment's view)."""
    fields = _decision_fields(ev, threshold)
    return {
        "protocol": "fixed threshold, untuned",
        "folds": 1,
        "accuracy": fields["accuracy_at_threshold"],
        "accuracy_std": 0.0,
        "threshold": threshold,
        "fold_accuracies": [fields["accuracy_at_threshold"]],
        "fold_thresholds": [threshold],
        **fields,
        **_common(ev, root),
    }


#: (label, report key, format) rows of the terminal and Markdown tables.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("pairs", "pairs", "d"),
    ("accuracy", "accuracy", ".4f"),
    ("accuracy std", "accuracy_std", ".4f"),
    ("threshold", "threshold", ".4f"),
    ("ROC AUC", "roc_auc", ".5f"),
    ("EER", "eer", ".4f"),
    ("TAR @ FAR 1e-2", "tar_at_far.0.01", ".4f"),
    ("TAR @ FAR 1e-3", "tar_at_far.0.001", ".4f"),
    ("precision", "precision", ".4f"),
    ("recall", "recall", ".4f"),
    ("F1", "f1", ".4f"),
    ("false accepts", "false_accepts", "d"),
    ("false rejects", "false_rejects", "d"),
    ("card threshold", "card_threshold", ".4f"),
    ("accuracy @ card threshold", "accuracy_at_card_threshold", ".4f"),
    ("no face (fallback)", "no_face", "d"),
    ("unreadable", "failed", "d"),
    ("seconds", "seconds", ".1f"),
)


def _lookup(report: dict[str, Any], key: str) -> Any:
    if key.startswith("tar_at_far."):
        return report["tar_at_far"].get(key.removeprefix("tar_at_far."))
    return report.get(key)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return format(value, fmt)


def table_rows(reports: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Header + one row per metric, one column per model."""
    rows = [["metric", *(r["model_id"] for r in reports)]]
    rows += [[label, *(_cell(_lookup(r, key), fmt) for r in reports)] for label, key, fmt in ROWS]
    return rows


def terminal_table(reports: Sequence[dict[str, Any]]) -> str:
    rows = table_rows(reports)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def markdown_table(reports: Sequence[dict[str, Any]]) -> str:
    rows = table_rows(reports)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def write_scores(ev: Evaluation, path: Path, root: Path | None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path_a", "path_b", "same", "fold", "score"])
        for pair, score in zip(ev.pairs, ev.scores, strict=True):
            writer.writerow(
                [
                    _relative(pair.path_a, root),
                    _relative(pair.path_b, root),
                    int(pair.same),
                    pair.fold,
                    repr(float(score)),
                ]
            )
    return path


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``scores.csv`` back as (scores, same, folds), for anyone re-checking a report."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return (
        np.array([float(r["score"]) for r in rows]),
        np.array([r["same"] == "1" for r in rows]),
        np.array([int(r["fold"]) for r in rows]),
    )


def _markdown(report: dict[str, Any], source: str, plots: Sequence[str]) -> str:
    lines = [
        f"# Verification report: {report['model_id']}",
        "",
        f"Data: {source}; {report['pairs']} pairs ({report['genuine_pairs']} same, "
        f"{report['impostor_pairs']} different) over {report['images']} images.",
        f"Protocol: {report['protocol']}.",
        "",
        markdown_table([report]),
        "",
        f"No face: {report['no_face']} images — {report['no_face_fallback']}.",
    ]
    lines += [f"- `{name}`" for name in report["no_face_images"]]
    if report["failed"]:
        lines += ["", f"Unreadable: {report['failed']} images — {report['failed_policy']}."]
        lines += [f"- `{name}`: {code}" for name, code in report["failed_images"].items()]
    lines += ["", "Per-pair scores: `scores.csv`.", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def tsne_inputs(ev: Evaluation) -> tuple[np.ndarray, list[str]]:
    """Embeddings of the evaluated images, labelled by their identity folder."""
    paths = sorted(ev.embedded.vectors)
    return np.stack([ev.embedded.vectors[p] for p in paths]), [p.parent.name for p in paths]


def write_report(
    ev: Evaluation,
    report: dict[str, Any],
    out: Path,
    *,
    root: Path | None,
    source: str,
    tsne: bool = True,
) -> list[Path]:
    """report.json, report.md, scores.csv and the PNGs in ``out``; returns what it wrote."""
    from facegate.evaluation.plots import plot_histograms, plot_roc, plot_tsne

    out.mkdir(parents=True, exist_ok=True)
    far, tar, _ = roc_curve(ev.scores, ev.same)
    written = [
        write_scores(ev, out / "scores.csv", root),
        plot_roc([(ev.model_id, far, tar)], out / "roc.png", f"ROC: {ev.model_id}, {source}"),
        plot_histograms(
            ev.scores,
            ev.same,
            report["threshold"],
            out / "histograms.png",
            f"{ev.model_id}: similarity of same / different pairs",
        ),
    ]
    if tsne:
        vectors, labels = tsne_inputs(ev)
        try:
            written.append(
                plot_tsne(vectors, labels, out / "tsne.png", title=f"t-SNE: {ev.model_id}")
            )
        except ValueError as exc:
            report["tsne"] = f"not drawn: {exc}"
    plots = [p.name for p in written if p.suffix == ".png"]
    report["files"] = [p.name for p in written] + ["report.json", "report.md"]
    (out / "report.md").write_text(_markdown(report, source, plots), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return [*written, out / "report.md", out / "report.json"]


def write_comparison(
    evaluations: Sequence[Evaluation], reports: Sequence[dict[str, Any]], out: Path, source: str
) -> list[Path]:
    """Several models on the same pairs: one table and one ROC plot with every curve."""
    from facegate.evaluation.plots import plot_roc

    out.mkdir(parents=True, exist_ok=True)
    curves = [(ev.model_id, *roc_curve(ev.scores, ev.same)[:2]) for ev in evaluations]
    roc = plot_roc(curves, out / "roc.png", f"ROC: {source}")
    md = out / "comparison.md"
    md.write_text(
        f"# Model comparison on {source}\n\n{markdown_table(reports)}\n\n"
        + "Each model's full report is in its own folder.\n\n![roc](roc.png)\n",
        encoding="utf-8",
    )
    js = out / "comparison.json"
    js.write_text(json.dumps({"source": source, "models": list(reports)}, indent=2) + "\n")
    return [roc, md, js]
