"""``facegate prepare | train | export``: a new model, from photos to a served model folder."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from facegate.cli.extensions import Subcommands, Target
from facegate.cli.options import EXIT_OK, settings_from
from facegate.errors import FaceGateError


def cmd_prepare(args: argparse.Namespace) -> int:
    """Aligned 112x112 training chips from an identity-folder data set (resumable)."""
    from facegate.training.prepare import prepare

    report = prepare(
        args.src,
        args.dst,
        settings=settings_from(args),
        policy=args.multi_face or "center",
        batch=args.batch,
        workers=args.workers,
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=not args.json,
    )
    print(json.dumps(report.to_dict()))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from facegate.training.trainer import TrainConfig, Trainer

    try:
        config = TrainConfig.load(args.config, args.set or [])
    except ValueError as exc:
        raise FaceGateError(str(exc)) from exc
    trainer = Trainer(config)
    last = Path(config.out) / "last.pt"
    if args.resume and last.is_file():
        trainer.load(last)
    for record in trainer.train():
        print(json.dumps(record))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from facegate.settings import default_model_dir
    from facegate.training.export import export_checkpoint

    try:
        card = export_checkpoint(
            args.checkpoint, args.model_dir or default_model_dir(), args.model_id, args.threshold
        )
    except ValueError as exc:
        raise FaceGateError(str(exc)) from exc
    print(f"model {card.model_id} ({card.architecture}, {card.version}) exported")
    return EXIT_OK


def register(sub: Subcommands, targets: Sequence[Target]) -> None:
    p = sub.add_parser("prepare", help="align an identity-folder data set into training chips")
    p.add_argument("src", type=Path, help="SRC/<identity>/<photo>")
    p.add_argument("dst", type=Path, help="chips/<identity>/*.png, rejects.csv, split.json")
    p.add_argument("--multi-face", choices=["largest", "center"], help="default: center")
    p.add_argument("--batch", type=int, default=32, help="photos per detection batch")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1 thread each)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="identities held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a backbone on chips made by 'facegate prepare'")
    p.add_argument("--config", type=Path, help="YAML of facegate.training.trainer.TrainConfig")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="a training checkpoint as a served model")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--model-id", required=True)
    p.add_argument("--threshold", type=float, help="default: the last validation threshold")
    p.add_argument("--model-dir", type=Path)
    p.set_defaults(func=cmd_export)
