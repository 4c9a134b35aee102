"""``facegate setup`` and ``facegate models list | import``: the weights the other commands use."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from facegate.cli.extensions import Subcommands, Target
from facegate.cli.options import EXIT_OK

#: The checkout (``core/facegate/cli/models.py`` is three folders down); downloads are kept
#: in its ``.cache`` so a second ``make setup`` fetches nothing.
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CACHE = REPO_ROOT / ".cache"


def cmd_setup(args: argparse.Namespace) -> int:
    from facegate.models.assets import (
        ensure_detector_onnx,
        ensure_onnx,
        install_all,
        install_sface,
        install_test_photos,
    )
    from facegate.settings import default_model_dir

    model_dir = args.model_dir or default_model_dir()
    if args.onnx is not None:
        sface = install_sface(model_dir, args.cache_dir, onnx_path=args.onnx, force=args.force)
        cards = [ensure_onnx(model_dir, sface)]
        ensure_detector_onnx(model_dir)
    else:
        cards = install_all(model_dir, args.cache_dir, force=args.force)
    for card in cards:
        print(f"model {card.model_id} ({card.version}) ready in {model_dir / card.model_id}")
    if args.test_photos:
        where = install_test_photos(args.test_photos, args.cache_dir)
        print(f"test photos ready in {where}")
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    from facegate.models.card import list_cards
    from facegate.settings import default_model_dir

    cards = list_cards(args.model_dir or default_model_dir())
    if args.json:
        print(json.dumps([json.loads(c.to_json()) for c in cards]))
    for card in cards if not args.json else []:
        dim = f"{card.embedding_dim}-d"
        print(f"{card.model_id}\t{card.architecture}\t{dim}\tthreshold {card.threshold}")
    return EXIT_OK


def cmd_models_import(args: argparse.Namespace) -> int:
    from facegate.models.import_weights import import_inception
    from facegate.settings import default_model_dir

    model_dir = args.model_dir or default_model_dir()
    card = import_inception(args.weights, model_dir, args.model_id, threshold=args.threshold)
    print(f"model {card.model_id} ({card.architecture}) ready in {model_dir / card.model_id}")
    return EXIT_OK


def register(sub: Subcommands, targets: Sequence[Target]) -> None:
    p = sub.add_parser("setup", help="download, check and convert model weights")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE / "downloads")
    p.add_argument("--onnx", type=Path, help="convert this SFace ONNX file (int8 or fp32)")
    p.add_argument("--test-photos", type=Path, help="also fetch the six test photos here")
    p.add_argument("--force", action="store_true", help="convert again even if intact")
    p.set_defaults(func=cmd_setup)

    models = sub.add_parser("models", help="installed models").add_subparsers(
        dest="action", required=True
    )
    p = models.add_parser("list", help="list installed model ids")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)

    p = models.add_parser("import", help="install InceptionResnetV1 weights you have")
    p.add_argument("--weights", required=True, help="state dict: local path or s3://bucket/key")
    p.add_argument("--model-id", required=True)
    p.add_argument("--threshold", type=float, required=True, help="cosine decision threshold")
    p.add_argument("--model-dir", type=Path)
    p.set_defaults(func=cmd_models_import)
