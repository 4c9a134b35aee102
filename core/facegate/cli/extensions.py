"""What installed packages add to ``facegate``: command groups and AWS targets, by entry point.

A package names a ``register(cli: CommandLine)`` function in the ``facegate.cli`` entry point
group (``[project.entry-points."facegate.cli"]`` in its ``pyproject.toml``); it is called
before the parser is built. So the local stack (``infra/facegate_local``) brings its
``local`` commands and the ``--local`` option of the cloud commands without anything under
``facegate`` importing it, and a wheel built without ``infra/`` simply lacks them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from facegate.settings import Settings

ENTRY_POINT_GROUP = "facegate.cli"

#: The ``facegate`` sub-command table every group adds its commands to.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True)
class Target:
    """Another AWS than the environment's that the cloud commands can point at.

    The cloud commands take ``--<name>``; with it, their settings come from ``settings()``
    (endpoint, region, bucket, table, queues) instead of ``FACEGATE_*`` variables.
    """

    name: str
    #: What the option points at, for its help: "to <description>" / "on <description>".
    description: str
    settings: Callable[[], Settings]


#: A command group: adds its sub-commands; the cloud group offers the targets as options.
Register: TypeAlias = Callable[[Subcommands, Sequence[Target]], None]


@dataclass
class CommandLine:
    """What extensions registered: AWS targets, and command groups added after the core's."""

    targets: list[Target] = field(default_factory=list)
    groups: list[Register] = field(default_factory=list)

    def add_target(self, target: Target) -> None:
        self.targets.append(target)

    def add_group(self, register: Register) -> None:
        self.groups.append(register)


def load_extensions(group: str = ENTRY_POINT_GROUP) -> CommandLine:
    """Every installed extension, registered. One whose package is not installed (its entry
    point survives in the metadata of a wheel built without it) is skipped; one that fails
    otherwise is skipped with a one-line warning, so it cannot take the core commands down."""
    cli = CommandLine()
    for entry in entry_points(group=group):
        try:
            register = entry.load()
            register(cli)
        except ModuleNotFoundError as exc:
            if exc.name is not None and entry.module.split(".")[0] == exc.name.split(".")[0]:
                continue
            _warn(entry.name, exc)
        except Exception as exc:  # a broken extension must not break the other commands
            _warn(entry.name, exc)
    return cli


def _warn(name: str, exc: Exception) -> None:
    print(f"warning: facegate extension {name!r} not loaded: {exc}", file=sys.stderr)
