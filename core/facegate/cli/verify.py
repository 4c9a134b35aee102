"""``facegate verify | embed | identify``: 1:1, a folder into a gallery, 1:N, on local files."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from facegate.cli.extensions import Subcommands, Target
from facegate.cli.options import EXIT_NO_MATCH, EXIT_OK, add_model_options, pipeline_from


def cmd_verify(args: argparse.Namespace) -> int:
    """The API's 1:1 (:func:`facegate.service.compare_photos`) at the run's threshold."""
    from facegate.service.probes import compare_photos

    pipeline = pipeline_from(args)
    outcome = compare_photos(
        pipeline,
        args.a,
        args.b,
        threshold=pipeline.threshold,
        labels=(str(args.a), str(args.b)),
    )
    if args.json:
        print(json.dumps(outcome.to_dict()))
    else:
        verdict = "MATCH" if outcome.match else "NO MATCH"
        scores = f"similarity {outcome.similarity:.4f}  threshold {outcome.threshold:.4f}"
        print(f"{verdict}  {scores}  model {outcome.model_id}")
    return EXIT_OK if outcome.match else EXIT_NO_MATCH


def cmd_embed(args: argparse.Namespace) -> int:
    from facegate.batch.enrol import embed_directory

    pipeline = pipeline_from(args)
    rejects_path = args.rejects or args.out.with_name(args.out.stem + ".rejects.parquet")
    report = embed_directory(
        pipeline, args.directory, args.out, rejects_path, batch=args.batch, policy=args.multi_face
    )
    counts = f"{report.rows} faces from {report.photos} photos of {report.subjects} subjects"
    print(f"{counts} -> {args.out}")
    if report.rejects:
        print(f"{len(report.rejects)} rejected -> {rejects_path}")
        for key, code, message in report.rejects:
            print(f"  {key}: {code}: {message}")
    return EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    from facegate.gallery.format import read_gallery
    from facegate.gallery.search import search_gallery

    pipeline = pipeline_from(args)
    _, table = read_gallery(args.gallery, expected_model_id=pipeline.model_id)
    face = pipeline.process(args.probe, policy="largest").primary
    found = search_gallery(face.vector, table, k=args.top_k, threshold=pipeline.threshold)
    if args.json:
        print(json.dumps(found.to_dict()))
    else:
        best = found.best
        print(f"best: {best.subject_id} ({best.similarity:.4f})" if best else "no match")
        for m in found.candidates:
            print(f"  {m.rank}. {m.subject_id:<24} {m.similarity:+.4f}  {m.image_key}")
    return EXIT_OK if found.best else EXIT_NO_MATCH


def register(sub: Subcommands, targets: Sequence[Target]) -> None:
    p = sub.add_parser("verify", help="1:1: are A and B the same person? exit 0 yes, 1 no, 2 error")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", action="store_true")
    add_model_options(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("embed", help="embed DIR/<subject>/<photo> into a Parquet gallery")
    p.add_argument("directory", type=Path)
    p.add_argument("--out", type=Path, required=True, help="gallery .parquet to write")
    p.add_argument("--rejects", type=Path, help="rejects .parquet (default: beside --out)")
    p.add_argument("--multi-face", choices=["largest", "all", "reject"])
    p.add_argument("--batch", type=int, default=32, help="photos per detection batch")
    add_model_options(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("identify", help="1:N: who in the gallery is this? exit 0 found, 1 none")
    p.add_argument("probe", type=Path)
    p.add_argument("--gallery", type=Path, required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    add_model_options(p)
    p.set_defaults(func=cmd_identify)
