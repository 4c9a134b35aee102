"""What the command groups share: exit codes, model options, and settings from options.

Imports stay inside the functions: ``facegate --help`` and the AWS commands must not load
torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegate.cli.extensions import Target

if TYPE_CHECKING:
    from facegate.pipeline.face_pipeline import FacePipeline
    from facegate.settings import Settings

EXIT_OK, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with the model options of this command line on top."""
    from facegate.settings import Settings

    overrides: dict[str, Any] = {}
    for name in ("model_id", "threshold", "far", "model_dir", "multi_face"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "flip", None) is not None:
        overrides["flip_tta"] = args.flip
    try:
        return Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: bad options or environment
        from facegate.errors import ValidationError

        raise ValidationError(str(exc).replace("\n", "; ")) from exc


def pipeline_from(args: argparse.Namespace) -> FacePipeline:
    from facegate.pipeline.face_pipeline import FacePipeline

    return FacePipeline(settings_from(args))


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--model-dir`` and the decision rule (``--threshold`` or ``--far``),
    which become the run's settings: the CLI decides at ``pipeline.threshold``."""
    p.add_argument("--model", dest="model_id", help="model id (see 'facegate models list')")
    p.add_argument("--model-dir", type=Path, help="directory of model folders")
    p.add_argument("--threshold", type=float, help="override the model card's threshold")
    p.add_argument(
        "--far",
        type=float,
        help="decide at the card's threshold calibrated for this false accept rate (1e-3)",
    )
    add_flip_option(p)


def add_flip_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="horizontal-flip test-time augmentation (default: FACEGATE_FLIP_TTA, off)",
    )


def add_target_options(
    p: argparse.ArgumentParser, targets: Sequence[Target], preposition: str
) -> None:
    """``--<target>`` for each registered AWS target ("to the running local stack")."""
    for target in targets:
        p.add_argument(
            f"--{target.name}",
            dest="target",
            action="store_const",
            const=target,
            help=f"{preposition} {target.description}",
        )


def aws_settings(args: argparse.Namespace) -> Settings:
    """The chosen target's settings, else the environment's (``FACEGATE_*``)."""
    from facegate.settings import Settings

    target: Target | None = getattr(args, "target", None)
    return target.settings() if target is not None else Settings()
