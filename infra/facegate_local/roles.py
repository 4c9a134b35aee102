"""Each function's IAM role, exactly as the SAM transform writes it, made real on moto.

On AWS a function calls S3, DynamoDB and SQS with the temporary credentials of its execution
role, and its SQS event source mapping polls with the same role; a permission missing from
template.yaml (or one too many) shows on the first deployment. moto authorises requests
against IAM once told to (``INITIAL_NO_AUTH_ACTION_COUNT``), so the local stack does what
CloudFormation and Lambda do: it expands the template with the SAM translator (offline),
creates every function's role with its inline policies (resolved with the local physical
names) and its managed policies (moto ships AWS's documents), assumes the role through STS
and hands the function those credentials. Everything else (the demo, tests, the CLI) works as
an operator, an IAM user allowed everything.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegate_local.template import ACCOUNT, Template, load_template

#: moto loads AWS's managed policies (the event source mapping's AWSLambdaSQSQueueExecutionRole,
#: ...) into IAM only when this is set before its IAM backend starts.
LOAD_MANAGED_POLICIES = "MOTO_IAM_LOAD_MANAGED_POLICIES"

_LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
_EVERYTHING = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def sam_transform(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, Any]:
    """The CloudFormation the SAM transform makes of ``template`` (template.yaml loaded in the
    long intrinsic form), offline: image URIs and zip code locations filled in as ``sam build``
    and ``sam package`` would, and no managed-policy lookups (the template names managed
    policies by ARN). Needs ``AWS_DEFAULT_REGION`` (or a region) in the environment."""
    from samtranslator.translator.transform import transform  # type: ignore[import-untyped]

    body = copy.deepcopy(template)
    uri_property = {
        "AWS::Serverless::Function": "CodeUri",
        "AWS::Serverless::LayerVersion": "ContentUri",
    }
    for name, resource in body["Resources"].items():
        props = resource.get("Properties", {})
        if props.get("PackageType") == "Image":
            props.setdefault("ImageUri", f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/fg:latest")
        elif resource["Type"] in uri_property:
            props[uri_property[resource["Type"]]] = f"s3://facegate-artifacts/{name}.zip"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    out: dict[str, Any] = transform(body, parameters, NoManagedPolicies())
    return out


@dataclass(frozen=True)
class RoleSpec:
    """What CloudFormation would create for one function's ``<Function>Role``."""

    function: str
    name: str
    policies: dict[str, dict[str, Any]]
    managed: tuple[str, ...]


def _resolve(template: Template, value: Any) -> Any:
    """Every intrinsic inside a policy document, resolved as the local stack resolves them."""
    if isinstance(value, list):
        return [_resolve(template, v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)).startswith(("Ref", "Fn::")):
            return template.resolve(value)
        return {k: _resolve(template, v) for k, v in value.items()}
    return value


def function_roles(template: Template) -> dict[str, RoleSpec]:
    """``{function logical id: its role}`` for every function of the template."""
    os.environ.setdefault("AWS_DEFAULT_REGION", template.region)  # the translator's session
    expanded = sam_transform(load_template(template.path), template.overrides)
    roles: dict[str, RoleSpec] = {}
    for function in template.of_type("AWS::Serverless::Function"):
        role = expanded["Resources"][f"{function}Role"]["Properties"]
        policies = {
            policy["PolicyName"]: {
                "Version": "2012-10-17",
                **_resolve(template, policy["PolicyDocument"]),
            }
            for policy in role.get("Policies", [])
        }
        managed = tuple(_resolve(template, arn) for arn in role.get("ManagedPolicyArns", []))
        name = f"{template.stack}-{function}Role"[:64]
        roles[function] = RoleSpec(function, name, policies, managed)
    return roles


@dataclass(frozen=True)
class Credentials:
    """AWS keys as boto3 and the environment take them."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def client_kwargs(self) -> dict[str, str]:
        out = {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }
        if self.session_token:
            out["aws_session_token"] = self.session_token
        return out


def create_role(iam: Any, sts: Any, role: RoleSpec) -> Credentials:
    """Create ``role`` (trusting Lambda), attach its policies, assume it: its session keys."""
    arn = iam.create_role(RoleName=role.name, AssumeRolePolicyDocument=json.dumps(_LAMBDA_TRUST))[
        "Role"
    ]["Arn"]
    for name, document in role.policies.items():
        iam.put_role_policy(
            RoleName=role.name, PolicyName=name, PolicyDocument=json.dumps(document)
        )
    for policy_arn in role.managed:
        iam.attach_role_policy(RoleName=role.name, PolicyArn=policy_arn)
    session = sts.assume_role(RoleArn=arn, RoleSessionName=role.function, DurationSeconds=43200)
    keys = session["Credentials"]
    return Credentials(keys["AccessKeyId"], keys["SecretAccessKey"], keys["SessionToken"])


def create_operator(iam: Any, name: str = "operator") -> Credentials:
    """An IAM user allowed everything: the person running the stack (uploads, the CLI)."""
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name, PolicyName="everything", PolicyDocument=json.dumps(_EVERYTHING)
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def create_function_roles(template: Template, iam: Any, sts: Any) -> dict[str, Credentials]:
    """Every function's role, created and assumed: ``{function logical id: credentials}``."""
    return {
        function: create_role(iam, sts, role) for function, role in function_roles(template).items()
    }


def enforce_iam() -> None:
    """From now on this process's moto authorises every request against IAM (signature, then
    the caller's policies). The requests before (creating the resources and roles) were free,
    as CloudFormation's are to the deployer."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0


def record_authorisations(path: Path) -> None:
    """Append every authorisation moto decides in this process to ``path`` (JSON lines:
    ``principal``, ``action``, ``resource``, ``allowed``): what each role really used, to set
    against what it is granted, and the action a refused request needed."""
    from moto.iam.access_control import IAMRequestBase

    original = IAMRequestBase.check_action_permitted
    lock = threading.Lock()

    def check(self: Any, resource: str) -> None:
        allowed = False
        try:
            original(self, resource)
            allowed = True
        finally:
            entry = {
                "principal": self._access_key.arn,
                "action": self._action,
                "resource": resource,
                "allowed": allowed,
            }
            with lock, path.open("a") as log:
                log.write(json.dumps(entry) + "\n")

    IAMRequestBase.check_action_permitted = check  # type: ignore[method-assign]


def read_authorisations(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


#: What IAM checks for each part of a DynamoDB transaction: there is no transaction action,
#: a transaction needs the permission of every operation in it.
_TRANSACTION_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}


def dynamodb_resource(handler: Any) -> str:
    """The ARN IAM checks a DynamoDB request against: the table it names (its index's for a
    query or scan of an index); ``*`` when it names several (a batch over tables)."""
    body = handler.body if isinstance(handler.body, dict) else {}
    tables = {body["TableName"]} if "TableName" in body else set()
    tables.update(body.get("RequestItems", {}))
    if len(tables) != 1:
        return "*"
    arn = f"arn:aws:dynamodb:{handler.region}:{handler.current_account}:table/{tables.pop()}"
    return f"{arn}/index/{body['IndexName']}" if "IndexName" in body else arn


def authorise_dynamodb_by_table() -> None:
    """Make moto check DynamoDB calls as IAM does: against the table, per transaction part.

    moto authorises a DynamoDB request against the resource ``*`` only, so a policy scoped to
    a table's ARN (every SAM DynamoDB policy template) would refuse everything, and one that
    names the wrong table would pass; and it checks a ``dynamodb:TransactWriteItems`` action
    that IAM does not have. With this, the resource is the table's ARN, and a transaction is
    allowed when each of its parts is (``PutItem``, ``ConditionCheckItem``, ... on its table).
    """
    from moto.core.responses import BaseResponse
    from moto.dynamodb.responses import DynamoHandler

    def authorise(self: Any, resource: str = "*") -> None:
        body = self.body if isinstance(self.body, dict) else {}
        parts = body.get("TransactItems") if self._get_action().startswith("Transact") else None
        if not parts:
            BaseResponse._authenticate_and_authorize_normal_action(self, resource)
            return
        try:
            for part in parts:
                ((kind, spec),) = part.items()
                table = f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/"
                self._get_action = lambda kind=kind: _TRANSACTION_ACTIONS[kind]
                BaseResponse._authenticate_and_authorize_normal_action(
                    self, table + spec["TableName"]
                )
        finally:
            del self._get_action  # the class's again

    DynamoHandler._determine_resource = dynamodb_resource  # type: ignore[attr-defined]
    DynamoHandler._authenticate_and_authorize_normal_action = authorise  # type: ignore[method-assign]


#: SQS batch requests IAM authorises as their single action (AWS: "ChangeMessageVisibility
#: Batch ... the permissions are the same as ChangeMessageVisibility").
_SQS_BATCHES = {
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "DeleteMessageBatch": "DeleteMessage",
    "SendMessageBatch": "SendMessage",
}


def authorise_sqs_batches() -> None:
    """Make moto check SQS batch requests as IAM does: against their single action.

    moto checks ``sqs:ChangeMessageVisibilityBatch`` and ``sqs:DeleteMessageBatch``, which no
    IAM policy grants (they are not IAM actions), so a role allowed to change visibility or
    delete would be refused its batch calls; granted ``sqs:SendMessage*``, sending batches
    passed by the wildcard alone.
    """
    from moto.core.responses import BaseResponse
    from moto.sqs.responses import SQSResponse

    def authorise(self: Any, resource: str = "*") -> None:
        action = self._get_action()
        single = _SQS_BATCHES.get(action)
        if single is None:
            BaseResponse._authenticate_and_authorize_normal_action(self, resource)
            return
        try:
            self._get_action = lambda: single
            BaseResponse._authenticate_and_authorize_normal_action(self, resource)
        finally:
            del self._get_action

    SQSResponse._authenticate_and_authorize_normal_action = authorise  # type: ignore[method-assign]


def authorise_secrets_by_id() -> None:
    """Make moto check Secrets Manager calls against the secret they name.

    moto authorises them against the resource ``*``, which no statement scoped to a secret
    matches. Locally, ``Ref`` of a secret is its partial ARN (the full one ends in six random
    characters Secrets Manager picks at creation, unknown to the template,
    :meth:`Template.secret_arn`): the function asks for it by that, its role's statement
    names it, and the check is against the ``SecretId`` sent.
    """
    from moto.secretsmanager.responses import SecretsManagerResponse

    def secret_resource(self: Any) -> str:
        body = json.loads(self.body) if isinstance(self.body, str | bytes) and self.body else {}
        secret = body.get("SecretId") if isinstance(body, dict) else None
        return secret if isinstance(secret, str) and secret else "*"

    SecretsManagerResponse._determine_resource = secret_resource  # type: ignore[attr-defined]


#: Services the local stack does not model (CloudWatch Logs, X-Ray): their grants go unused.
UNMODELLED_SERVICES = ("logs:", "xray:")


@dataclass(frozen=True)
class Usage:
    """One role's permissions against what its function did in a run of the stack."""

    used: frozenset[str]
    refused: frozenset[str]
    #: granted action patterns (``s3:GetObject``, ``sqs:*``) no request of the run needed
    unused: frozenset[str]


def granted_actions(role: RoleSpec) -> set[str]:
    """The action patterns the role's Allow statements grant (inline and managed policies)."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    managed = json.loads(aws_managed_policies_data)
    documents = list(role.policies.values())
    for arn in role.managed:
        documents.append(managed[arn.rsplit("/", 1)[-1]]["Document"])
    actions: set[str] = set()
    for document in documents:
        statements = document["Statement"]
        for statement in statements if isinstance(statements, list) else [statements]:
            if statement.get("Effect") == "Allow":
                listed = statement.get("Action", [])
                actions.update([listed] if isinstance(listed, str) else listed)
    return {a for a in actions if not a.startswith(UNMODELLED_SERVICES)}


def permission_usage(template: Template, entries: list[dict[str, Any]]) -> dict[str, Usage]:
    """``{function: Usage}`` from the authorisations a run recorded (``record_authorisations``).

    A function's requests are those of its role's session (``assumed-role/<role>/<function>``).
    """
    by_function: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        principal = entry["principal"]
        if ":assumed-role/" in principal:
            by_function.setdefault(principal.rsplit("/", 1)[-1], []).append(entry)
    usage: dict[str, Usage] = {}
    for function, role in function_roles(template).items():
        calls = by_function.get(function, [])
        used = {c["action"] for c in calls if c["allowed"]}
        refused = {c["action"] for c in calls if not c["allowed"]}
        unused = {
            pattern
            for pattern in granted_actions(role)
            if not any(fnmatch.fnmatchcase(a.lower(), pattern.lower()) for a in used)
        }
        usage[function] = Usage(frozenset(used), frozenset(refused), frozenset(unused))
    return usage
