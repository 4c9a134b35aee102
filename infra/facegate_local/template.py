"""Reading template.yaml the way the local stack needs: resources, environment, handlers.

A small evaluator resolves the intrinsics the template uses (Ref, Fn::If, Fn::Equals,
Fn::Not, Fn::And, Fn::Or, Condition, Fn::Sub, Fn::GetAtt), anywhere in a property tree,
against parameter overrides or defaults and local physical names: the local functions see
the variables CloudFormation would set, the local bucket gets the encryption the conditions
choose, and the tests read the SAM-transformed template (role policies, event source
mappings, alarms) with the values a deployment would get.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NO_VALUE = object()
ACCOUNT = "123456789012"


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns ``!Ref X`` into ``{"Ref": "X"}`` and ``!If [...]`` into
    ``{"Fn::If": [...]}`` (``!GetAtt a.b`` into ``{"Fn::GetAtt": ["a", "b"]}``)."""


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected {node!r}", node.start_mark)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct)


def load_template(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CfnLoader)


@dataclass(frozen=True)
class FunctionSpec:
    """A function of the template as the local stack runs it."""

    logical_id: str
    code_dir: Path
    module: str
    attribute: str
    environment: dict[str, str]
    memory_mb: int = 128
    timeout_s: int = 3


@dataclass(frozen=True)
class HttpRoute:
    """A route of the HTTP API other than ``$default``, and the function it integrates."""

    method: str
    path: str
    function: str
    timeout_s: float


#: Properties that fix a resource's physical name in CloudFormation.
_NAME_PROPERTIES = {
    "AWS::S3::Bucket": "BucketName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SecretsManager::Secret": "Name",
}


class Template:
    """A loaded template with local physical names for its resources.

    ``body`` is the template already loaded (the SAM transform's output, say) instead of
    ``path``'s; ``path`` still locates the code the functions run.
    """

    def __init__(
        self,
        path: Path,
        physical_names: dict[str, str],
        stack: str,
        region: str,
        endpoint_url: str = "",
        parameters: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        self.path = path
        self.endpoint_url = endpoint_url
        self.overrides = dict(parameters or {})
        self.root = path.parent
        self.body = body if body is not None else load_template(path)
        self.stack = stack
        self.region = region
        self.physical: dict[str, str] = {}
        for logical, resource in self.resources.items():
            name = physical_names.get(logical) or self._own_name(resource)
            self.physical[logical] = name or f"{stack}-{logical}".lower()

    def _own_name(self, resource: dict[str, Any]) -> str:
        """The name the template gives the resource (``BucketName``, ...), else ``""``: the
        local stack then names it ``<stack>-<logical id>``, as CloudFormation would (less
        the random suffix)."""
        prop = _NAME_PROPERTIES.get(resource.get("Type", ""))
        value = resource.get("Properties", {}).get(prop) if prop else None
        return "" if value is None else str(self.resolve(value))

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.body.get("Resources", {})

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v.get("Type") == kind}

    def parameter(self, name: str) -> Any:
        """The local override (like ``sam deploy --parameter-overrides``), else the default."""
        if name in self.overrides:
            return self.overrides[name]
        return self.body.get("Parameters", {}).get(name, {}).get("Default", "")

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.body.get("Conditions", {})[name]))

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic in it evaluated. ``AWS::NoValue`` (as a branch of an
        ``Fn::If``) drops the key or list item holding it; only a bare one is ``NO_VALUE``."""
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if not _is_intrinsic(value):
            entries = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in entries.items() if v is not NO_VALUE}
        ((key, arg),) = value.items()
        if key == "Ref":
            return self._ref(arg)
        if key == "Fn::If":
            name, yes, no = arg
            return self.resolve(yes if self.condition(name) else no)
        if key == "Fn::Equals":
            left, right = self.resolve(arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(arg))
        if key == "Fn::Or":
            return any(self.resolve(arg))
        if key == "Fn::GetAtt":
            return self.attribute(*arg)
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Condition":
            return self.condition(arg)
        raise ValueError(f"the local stack cannot evaluate {key} in {value}")

    def _sub(self, arg: str | list[Any]) -> str:
        """``Fn::Sub`` in both forms: a string, or ``[string, {name: value}]`` (as the SAM
        transform writes policy templates); ``${Resource.Attr}`` is a ``Fn::GetAtt``."""
        text, names = (arg, {}) if isinstance(arg, str) else arg
        values = {name: self.resolve(value) for name, value in names.items()}

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in values:
                return str(values[name])
            if "." in name and name.split(".", 1)[0] in self.resources:
                return self.attribute(*name.split(".", 1))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", lookup, text)

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::StackName": self.stack,
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "AWS::NoValue": NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.resources:
            kind = self.resources[name].get("Type")
            if kind == "AWS::SQS::Queue":
                return self.queue_url(name)
            if kind == "AWS::SecretsManager::Secret":
                return self.secret_arn(name)
            return self.physical[name]
        if name in self.body.get("Parameters", {}):
            return self.parameter(name)
        raise ValueError(f"unknown Ref {name!r}")

    def secret_arn(self, logical: str) -> str:
        """What ``Ref`` of a secret returns locally: its ARN without the six random characters
        Secrets Manager appends at creation (unknown to the template). A partial ARN is a
        valid ``SecretId``, and the role's statement names the same string."""
        return f"arn:aws:secretsmanager:{self.region}:{ACCOUNT}:secret:{self.physical[logical]}"

    def queue_url(self, logical: str) -> str:
        """What ``Ref`` of a queue returns: its URL (moto's layout, default account)."""
        return f"{self.endpoint_url}/{ACCOUNT}/{self.physical[logical]}"

    def attribute(self, logical: str, name: str) -> str:
        """``Fn::GetAtt`` for the attributes the template uses on queues and buckets."""
        kind = self.resources[logical].get("Type")
        physical = self.physical[logical]
        if kind == "AWS::SQS::Queue":
            values = {
                "Arn": f"arn:aws:sqs:{self.region}:{ACCOUNT}:{physical}",
                "QueueName": physical,
                "QueueUrl": self.queue_url(logical),
            }
        elif kind == "AWS::S3::Bucket":
            values = {"Arn": f"arn:aws:s3:::{physical}"}
        elif kind == "AWS::Events::Rule":
            values = {"Arn": f"arn:aws:events:{self.region}:{ACCOUNT}:rule/{physical}"}
        elif kind == "AWS::IAM::Role":
            values = {"Arn": f"arn:aws:iam::{ACCOUNT}:role/{physical}"}
        else:
            values = {"Arn": f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{physical}"}
        if name not in values:
            raise ValueError(f"the local stack cannot evaluate {logical}.{name}")
        return values[name]

    def sqs_sources(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(function, queue logical id, event properties)`` for each SQS event source."""
        out = []
        for logical, resource in self.of_type("AWS::Serverless::Function").items():
            for event in resource.get("Properties", {}).get("Events", {}).values():
                if event.get("Type") == "SQS":
                    props = event["Properties"]
                    queue = props["Queue"]["Fn::GetAtt"][0]
                    out.append((logical, queue, {k: self.resolve(v) for k, v in props.items()}))
        return out

    def http_routes(self) -> list[HttpRoute]:
        """Every ``AWS::ApiGatewayV2::Route`` with a route key of its own (``GET /jobs/{id}``)
        whose Lambda proxy integration is a function of the template."""
        routes = []
        for resource in self.of_type("AWS::ApiGatewayV2::Route").values():
            props = resource.get("Properties", {})
            key = self.resolve(props.get("RouteKey", "$default"))
            # ``!Sub integrations/${SomeIntegration}``: the logical id, not its physical name
            named = re.search(r"\$\{([A-Za-z0-9]+)\}", json.dumps(props.get("Target", "")))
            integration = self.resources.get(named.group(1), {}) if named else {}
            uri = integration.get("Properties", {}).get("IntegrationUri", {})
            if key == "$default" or not isinstance(uri, dict) or "Fn::GetAtt" not in uri:
                continue
            method, _, path = str(key).partition(" ")
            timeout = integration["Properties"].get("TimeoutInMillis", 30000)
            routes.append(HttpRoute(method, path, uri["Fn::GetAtt"][0], int(timeout) / 1000))
        return routes

    def function(self, logical_id: str) -> FunctionSpec:
        resource = self.resources.get(logical_id)
        if resource is None or resource.get("Type") != "AWS::Serverless::Function":
            names = ", ".join(self.of_type("AWS::Serverless::Function")) or "none"
            raise KeyError(f"no function {logical_id!r} in {self.path.name} (functions: {names})")
        props = resource.get("Properties", {})
        if props.get("PackageType") == "Image":
            dockerfile = self.root / resource["Metadata"]["Dockerfile"]
            command = props.get("ImageConfig", {}).get("Command")
            handler = command[0] if command else _dockerfile_cmd(dockerfile)
            code_dir = _copied_from(dockerfile, handler.rpartition(".")[0], self.root)
        else:
            handler = props["Handler"]
            code_dir = self.root / props.get("CodeUri", ".")
        module, _, attribute = handler.rpartition(".")
        return FunctionSpec(
            logical_id,
            code_dir,
            module,
            attribute,
            self.environment(logical_id),
            memory_mb=int(self._function_property(logical_id, "MemorySize", 128)),
            timeout_s=int(self._function_property(logical_id, "Timeout", 3)),
        )

    def _function_property(self, logical_id: str, name: str, default: Any) -> Any:
        """The function's own property, else the Globals', else Lambda's default."""
        props = self.resources[logical_id].get("Properties", {})
        value = props.get(name, self.body.get("Globals", {}).get("Function", {}).get(name))
        return default if value is None else self.resolve(value)

    def environment(self, logical_id: str) -> dict[str, str]:
        """Globals' variables overlaid with the function's own, intrinsics resolved."""
        merged: dict[str, Any] = {}
        globals_env = self.body.get("Globals", {}).get("Function", {}).get("Environment", {})
        merged.update(globals_env.get("Variables", {}))
        own = self.resources[logical_id].get("Properties", {}).get("Environment", {})
        merged.update(own.get("Variables", {}))
        resolved = {k: self.resolve(v) for k, v in merged.items()}
        return {k: str(v) for k, v in resolved.items() if v is not NO_VALUE}


def _is_intrinsic(value: dict[str, Any]) -> bool:
    """``{"Ref": ...}``, ``{"Fn::...": ...}`` or ``{"Condition": "<name>"}`` (inside a
    condition), not a plain property map (a policy statement's ``Condition`` is a map)."""
    if len(value) != 1:
        return False
    ((key, arg),) = value.items()
    return key == "Ref" or key.startswith("Fn::") or (key == "Condition" and isinstance(arg, str))


def _copied_from(dockerfile: Path, module: str, context: Path) -> Path:
    """The folder the image's ``COPY`` takes ``<module>.py`` from (the local import path)."""
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"]:
            for source in parts[1:-1]:
                if source.endswith(f"/{module}.py") or source == f"{module}.py":
                    return (context / source).parent
    raise ValueError(f"{dockerfile} copies no {module}.py into the image")


def _dockerfile_cmd(dockerfile: Path) -> str:
    """The handler from an image function's ``CMD ["module.handler"]``."""
    for line in reversed(dockerfile.read_text().splitlines()):
        match = re.match(r'\s*CMD\s*\[\s*"([^"]+)"', line)
        if match:
            return match.group(1)
    raise ValueError(f'{dockerfile} has no CMD ["module.handler"]')
