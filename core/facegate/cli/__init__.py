"""``facegate`` command line: set-up, verify, embed, identify, evaluate, calibrate.

Exit codes: 0 success (``verify``: match), 1 ``verify``: no match, 2 any error. Errors are
one line on stderr, ``error: <code>: <message>``, never a stack trace (set
``FACEGATE_DEBUG=1`` to see one).

One module per command group, each registering its own sub-commands: :mod:`.models` (setup,
models), :mod:`.verify` (verify, embed, identify), :mod:`.evaluate` (eval, plot, calibrate),
:mod:`.cloud` (upload, gallery, reembed, jobs, keys), :mod:`.collections` (collections),
:mod:`.train` (prepare, train, export).
Installed extensions add groups and AWS targets (:mod:`.extensions`): the local stack's
``local`` commands and ``--local`` come from ``infra/facegate_local/cli.py`` that way.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from facegate.cli import cloud, collections, evaluate, models, train, verify
from facegate.cli.extensions import Register, load_extensions
from facegate.cli.options import EXIT_ERROR
from facegate.errors import FaceGateError

#: The core's command groups, in the order ``facegate --help`` lists them.
GROUPS: tuple[Register, ...] = (
    models.register,
    verify.register,
    evaluate.register,
    cloud.register,
    collections.register,
    train.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The core's groups, then the extensions' (which may also add AWS targets)."""
    extensions = load_extensions()
    parser = argparse.ArgumentParser(prog="facegate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (*GROUPS, *extensions.groups):
        register(sub, extensions.targets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FaceGateError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a last line of defence: one line, never a trace
        if os.environ.get("FACEGATE_DEBUG"):
            raise
        print(f"error: internal: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def run() -> None:
    """Console-script entry point: ``main`` and a hard exit.

    pyarrow's thread pools race with interpreter shutdown after a threaded Parquet read and
    abort the process (SIGABRT, "terminate called without an active exception") in about one
    exit in ten on this machine, turning a finished command's exit code into 134. Nothing is
    left to clean up once ``main`` returned, so flush and leave without finalisation.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
