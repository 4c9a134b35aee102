"""``facegate eval lfw | pairs``, ``plot tsne`` and ``calibrate``: how good a model is."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facegate.cli.extensions import Subcommands, Target
from facegate.cli.options import EXIT_OK, add_flip_option, add_model_options, pipeline_from


def _evaluate(args: argparse.Namespace, pairs: list[Any], protocol: str) -> int:
    """Every ``--model`` on the same pairs; one table, and files under ``--out`` if given.

    One model writes its report straight into ``--out``; several write one folder each
    (``--out/<model_id>/``) plus ``comparison.md``/``comparison.json`` and a shared ROC plot.
    """
    from facegate.evaluation.report import (
        fixed_report,
        kfold_report,
        terminal_table,
        write_comparison,
        write_report,
    )
    from facegate.evaluation.run import run_evaluation

    model_ids = args.models or [None]
    evaluations, reports = [], []
    for model_id in model_ids:
        args.model_id = model_id
        pipeline = pipeline_from(args)
        evaluation = run_evaluation(pipeline, pairs, progress=not args.json)
        if protocol == "kfold":
            report = kfold_report(evaluation, args.root)
        else:
            report = fixed_report(evaluation, pipeline.threshold, args.root)
        evaluations.append(evaluation)
        reports.append(report)
    source = f"{args.pairs.name} on {args.root.name}"
    if args.out is not None:
        if len(reports) == 1:
            write_report(evaluations[0], reports[0], args.out, root=args.root, source=source)
        else:
            for evaluation, report in zip(evaluations, reports, strict=True):
                folder = args.out / evaluation.model_id
                write_report(evaluation, report, folder, root=args.root, source=source)
            write_comparison(evaluations, reports, args.out, source)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else {"models": reports}))
    else:
        print(terminal_table(reports))
        if args.out is not None:
            print(f"report written to {args.out}")
    return EXIT_OK


def cmd_eval_lfw(args: argparse.Namespace) -> int:
    from facegate.evaluation.pairs import read_lfw_pairs

    return _evaluate(args, read_lfw_pairs(args.pairs, args.root), "kfold")


def cmd_eval_pairs(args: argparse.Namespace) -> int:
    from facegate.evaluation.pairs import read_pairs_csv

    return _evaluate(args, read_pairs_csv(args.pairs, args.root), "fixed")


def cmd_plot_tsne(args: argparse.Namespace) -> int:
    from facegate.evaluation.plots import plot_tsne
    from facegate.gallery.format import gallery_embeddings, read_gallery

    meta, table = read_gallery(args.gallery)
    labels = [str(s) for s in table.column("subject_id").to_pylist()]
    out = args.out or args.gallery.with_name(args.gallery.stem + "-tsne.png")
    try:
        plot_tsne(
            gallery_embeddings(table),
            labels,
            out,
            title=f"t-SNE: {args.gallery.name} ({meta.model_id})",
            max_identities=args.max_subjects,
        )
    except ValueError as exc:
        from facegate.errors import ValidationError

        raise ValidationError(str(exc)) from exc
    print(f"t-SNE map written to {out}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from facegate.evaluation.calibrate import calibrate

    record = calibrate(pipeline_from(args), args.root, impostors=args.impostors)
    text = json.dumps(record, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return EXIT_OK


def cmd_calibrate_pose(args: argparse.Namespace) -> int:
    from facegate.evaluation.pose_calibration import calibrate_pose

    record = calibrate_pose(pipeline_from(args), args.root)
    text = json.dumps(record, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return EXIT_OK


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        help="model id; repeat to compare several models on the same pairs",
    )
    p.add_argument("--model-dir", type=Path, help="directory of model folders")
    add_flip_option(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", type=Path, help="write report.json/.md, scores.csv and PNGs here")


def register(sub: Subcommands, targets: Sequence[Target]) -> None:
    evaluate = sub.add_parser("eval", help="evaluate on a pair list").add_subparsers(
        dest="dataset", required=True
    )
    p = evaluate.add_parser("lfw", help="LFW protocol: k-fold accuracy from a pairs.txt")
    p.add_argument("--root", type=Path, required=True, help="LFW-layout image folder")
    p.add_argument("--pairs", type=Path, required=True, help="LFW pairs.txt (folds in header)")
    _eval_options(p)
    p.set_defaults(func=cmd_eval_lfw)

    p = evaluate.add_parser(
        "pairs", help="score a path_a,path_b,same CSV at the model card's threshold (untuned)"
    )
    p.add_argument("pairs", type=Path, help="CSV with path_a,path_b,same (extra columns ignored)")
    p.add_argument("--root", type=Path, required=True, help="folder the CSV's paths are under")
    p.add_argument("--threshold", type=float, help="decide at this threshold instead")
    p.add_argument("--far", type=float, help="decide at the card's threshold for this FAR")
    _eval_options(p)
    p.set_defaults(func=cmd_eval_pairs)

    plot = sub.add_parser("plot", help="plots of galleries").add_subparsers(
        dest="plot", required=True
    )
    p = plot.add_parser("tsne", help="t-SNE map of a gallery's embeddings, coloured by subject")
    p.add_argument("gallery", type=Path, help="gallery .parquet")
    p.add_argument("--out", type=Path, help="PNG to write (default: beside the gallery)")
    p.add_argument("--max-subjects", type=int, default=15, help="the most photographed N")
    p.set_defaults(func=cmd_plot_tsne)

    p = sub.add_parser("calibrate", help="choose the decision threshold on identity folders")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--impostors", type=int, default=20000)
    p.add_argument("--out", type=Path)
    add_model_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "calibrate-pose",
        help="measure the liveness pose estimate on photos (FACEGATE_DETECTOR picks the "
        "detector); the record goes in core/facegate/liveness/calibration/<detector>.json",
    )
    p.add_argument("--root", type=Path, required=True, help="photos, ROOT/<identity>/<photo>")
    p.add_argument("--out", type=Path)
    add_model_options(p)
    p.set_defaults(func=cmd_calibrate_pose)
