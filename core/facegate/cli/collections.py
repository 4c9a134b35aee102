"""``facegate collections create | list | show | delete | export | attach | detach``: the
collections of a deployed (or the local) stack.

They run with the operator's own AWS credentials against the table the ``FACEGATE_*``
settings name (or ``--local``: the running local stack), as ``facegate keys`` does, and go
through :class:`facegate.service.collections.CollectionService`, as the API's routes do:
the same checks (an installed model, a calibrated FAR) and the same answers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

from facegate.cli.extensions import Subcommands, Target
from facegate.cli.options import EXIT_OK, add_target_options, aws_settings

if TYPE_CHECKING:
    from facegate.service.collections import CollectionService

#: ``collections list`` columns and their widths (the last one unpadded).
_WIDTHS = {"name": 24, "model": 12, "subjects": 9, "faces": 9, "rule": 16, "created": 0}


def _service(args: argparse.Namespace) -> CollectionService:
    from facegate.service.collections import CollectionService

    return CollectionService.from_settings(aws_settings(args))


def _rule(collection: dict[str, Any]) -> str:
    """The decision default as one cell: ``threshold 0.4``, ``far 0.001`` or ``deployment``."""
    if collection["threshold"] is not None:
        return f"threshold {collection['threshold']:g}"
    if collection["far"] is not None:
        return f"far {collection['far']:g}"
    return "deployment"


def _columns(collection: dict[str, Any]) -> dict[str, str]:
    return {
        "name": str(collection["name"]),
        "model": str(collection["model_id"]),
        "subjects": str(collection["subjects"]),
        "faces": str(collection["faces"]),
        "rule": _rule(collection),
        "created": str(collection["created_at"] or "-"),
    }


def cmd_collections(args: argparse.Namespace) -> int:
    service = _service(args)
    if args.action == "create":
        created = service.create(
            args.name,
            args.model_id,
            description=args.description,
            threshold=args.threshold,
            far=args.far,
            multi_face=args.multi_face,
        )
        print(json.dumps(created))
    elif args.action == "delete":
        _, answer = service.delete(args.name)
        print(json.dumps(answer))
    elif args.action == "export":
        print(json.dumps(service.export(args.name, args.gallery)))
    elif args.action in ("attach", "detach"):
        act = service.attach if args.action == "attach" else service.detach
        print(json.dumps(act(args.name, args.gallery)))
    elif args.action == "show":
        shown = service.describe(args.name)
        if args.json:
            print(json.dumps(shown))
        else:
            for key, value in shown.items():
                print(f"{key:<12} {'-' if value is None else value}")
    else:
        collections: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:  # every page: an operator's listing is the whole of it
            page = service.list(1000, cursor)
            collections += page["collections"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        if args.json:
            print(json.dumps(collections))
        else:
            rows = [{label: label for label in _WIDTHS}] + [_columns(c) for c in collections]
            for row in rows:
                print("  ".join(f"{row[c]:<{w}}" for c, w in _WIDTHS.items()).rstrip())
    return EXIT_OK


def register(sub: Subcommands, targets: Sequence[Target]) -> None:
    from facegate.settings import MultiFacePolicy

    collections = sub.add_parser(
        "collections", help="collections of a deployed stack (the groups subjects belong to)"
    )
    actions = collections.add_subparsers(dest="action", required=True)
    p = actions.add_parser("create", help="create a collection; prints it as JSON")
    p.add_argument("name")
    p.add_argument(
        "--model-id",
        help="the model its subjects are embedded with (default: the "
        "deployment's, FACEGATE_MODEL_ID)",
    )
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, help="decide at this cosine threshold")
    rule.add_argument(
        "--far", type=float, help="decide at the card's threshold calibrated for this FAR (1e-3)"
    )
    p.add_argument("--description", help="a label for people, at most 256 characters")
    p.add_argument(
        "--multi-face",
        choices=get_args(MultiFacePolicy),
        help="which face of a photo with several counts (default: the deployment's)",
    )
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_collections)
    p = actions.add_parser("list", help="every collection, default first, with its counts")
    p.add_argument("--json", action="store_true")
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_collections)
    p = actions.add_parser("show", help="one collection, its rules and counts")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_collections)
    p = actions.add_parser(
        "delete",
        help="delete a collection, erasing every subject in it; prints the receipt (or, "
        "for a large one, the queued deletion to poll at GET /erasures/{id})",
    )
    p.add_argument("name")
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_collections)
    p = actions.add_parser(
        "export", help="export a collection's enrolled faces as a Parquet gallery"
    )
    p.add_argument("name")
    p.add_argument("--gallery", required=True, help="the gallery to write (new, or its export)")
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_collections)
    for action, text in (
        ("attach", "search a built gallery in the collection's identify too"),
        ("detach", "stop searching a gallery in the collection's identify"),
    ):
        p = actions.add_parser(action, help=text)
        p.add_argument("name")
        p.add_argument("gallery")
        add_target_options(p, targets, "on")
        p.set_defaults(func=cmd_collections)
