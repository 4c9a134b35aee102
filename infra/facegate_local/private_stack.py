"""A private local stack for a script or a test: ``facegate local up`` on free ports and its
own state directory, always ``down`` afterwards.

``make fuzz``, ``make load`` and the browser tests run beside a developer's own stack (ports
8000/5000) and beside each other, so each gets fresh ports and a temporary state directory.
They drive the stack only through the ``up``/``down`` commands and the fields of its state file
(``api_url``, ``api_key``, ``endpoint_url``, ``resources``), the local stack's public face.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from facegate_local.stack import repo_root

#: The checkout this package is in (``infra/facegate_local/``): its template and its photos.
REPO = repo_root(Path(__file__).parent)
FACEGATE = Path(sys.executable).parent / "facegate"
UP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Stack:
    api_url: str
    api_key: str
    endpoint_url: str
    resources: dict[str, str]
    state_dir: Path

    @property
    def log(self) -> Path:
        """The stack's own log (``facegate local up`` writes it to the state directory)."""
        return self.state_dir / "stack.log"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_stack() -> Iterator[Stack]:
    """A running stack of this repository's template; stopped on the way out, whatever
    happened (a stack that failed to come up is stopped too: ``up`` may leave a half), and
    its state directory removed: read :attr:`Stack.log` inside the ``with``."""
    state_dir = Path(tempfile.mkdtemp(prefix="facegate-stack-"))
    env = {
        **os.environ,
        "FACEGATE_LOCAL_API_PORT": str(free_port()),
        "FACEGATE_LOCAL_MOTO_PORT": str(free_port()),
        "FACEGATE_LOCAL_STATE_DIR": str(state_dir),
    }

    def local(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FACEGATE), "local", command],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=UP_TIMEOUT_S,
        )

    try:
        started = local("up")
        if started.returncode != 0:
            raise RuntimeError(f"facegate local up failed:\n{started.stderr[-3000:]}")
        state = json.loads((state_dir / "stack.json").read_text())
        yield Stack(
            api_url=state["api_url"],
            api_key=state["api_key"],
            endpoint_url=state["endpoint_url"],
            resources=dict(state.get("resources", {})),
            state_dir=state_dir,
        )
    finally:
        stopped = local("down")
        if stopped.returncode != 0:
            print(f"facegate local down: {stopped.stderr[-1000:]}", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)
