"""Local stack settings (``infra/local.toml``) and the state file ``up`` leaves for others."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facegate_local.template import Template

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
}


@dataclass(frozen=True)
class LocalConfig:
    root: Path
    stack: str = "facegate-local"
    region: str = "us-east-1"
    api_port: int = 8000
    moto_port: int = 5000
    resources: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    state_dir: Path = Path(".cache") / "local"
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> LocalConfig:
        """``infra/local.toml``; ``FACEGATE_LOCAL_API_PORT``, ``FACEGATE_LOCAL_MOTO_PORT`` and
        ``FACEGATE_LOCAL_STATE_DIR`` override it (tests run a second stack beside yours), and
        ``FACEGATE_LOCAL_PARAMETERS`` (``Name=value,Name=value``) overrides template
        parameters on top of its ``[parameters]`` table."""
        path = root / "infra" / "local.toml"
        data: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}
        stack = data.get("stack", {})
        return cls(
            root=root,
            stack=stack.get("name", cls.stack),
            region=stack.get("region", cls.region),
            api_port=int(os.environ.get("FACEGATE_LOCAL_API_PORT", stack.get("api_port", 8000))),
            moto_port=int(os.environ.get("FACEGATE_LOCAL_MOTO_PORT", stack.get("moto_port", 5000))),
            resources=dict(data.get("resources", {})),
            environment={k: str(v) for k, v in data.get("environment", {}).items()},
            state_dir=Path(os.environ.get("FACEGATE_LOCAL_STATE_DIR", root / ".cache" / "local")),
            parameters={
                **{k: str(v) for k, v in data.get("parameters", {}).items()},
                **_pairs(os.environ.get("FACEGATE_LOCAL_PARAMETERS", "")),
            },
        )

    def template(self, endpoint_url: str = "") -> Template:
        return Template(
            self.root / "template.yaml",
            self.resources,
            self.stack,
            self.region,
            endpoint_url,
            self.parameters,
        )

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def authorisations_file(self) -> Path:
        """Every IAM decision of the running stack (``roles.record_authorisations``)."""
        return self.state_dir / "authorisations.jsonl"


def _pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


@dataclass(frozen=True)
class StackState:
    """What a running stack tells other commands: where it is and how to get in."""

    pid: int
    api_url: str
    endpoint_url: str
    api_key: str
    region: str
    resources: dict[str, str]
    #: ``{function logical id or "operator": keys}``: each function's role session, and the
    #: operator's (an IAM user allowed everything) for whoever drives the stack.
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    #: ``{function logical id: pid}`` of the function processes now running.
    functions: dict[str, int] = field(default_factory=dict)

    def operator(self) -> dict[str, str]:
        """boto3 client keyword arguments for the operator."""
        return dict(self.credentials["operator"])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def function_environment(
    config: LocalConfig,
    logical_id: str,
    endpoint_url: str,
    credentials: dict[str, str] | None = None,
) -> dict[str, str]:
    """The variables a function gets locally: the template's, then the local overrides, and
    its role's keys as Lambda sets them (``credentials``: boto3 client keyword arguments;
    without, moto's fake keys, for a moto that does not enforce IAM)."""
    from facegate.settings import default_model_dir

    env = config.template(endpoint_url).environment(logical_id)
    env.update(
        {
            "FACEGATE_AWS_ENDPOINT_URL": endpoint_url,
            "FACEGATE_MODEL_DIR": str(default_model_dir()),
            "AWS_DEFAULT_REGION": config.region,
            **(credential_environment(credentials) if credentials else FAKE_CREDENTIALS),
        }
    )
    env.update(config.environment)
    return env


def credential_environment(credentials: dict[str, str]) -> dict[str, str]:
    """``aws_access_key_id``-style client arguments as ``AWS_ACCESS_KEY_ID``-style variables
    (no session token variable for an IAM user's keys: a stale one would be sent)."""
    env = {name.upper(): value for name, value in credentials.items()}
    env.setdefault("AWS_SESSION_TOKEN", "")
    return env
