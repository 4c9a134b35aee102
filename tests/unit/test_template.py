"""The SAM template, the API image and samconfig.toml agree with each other and with the code.

Nothing here needs Docker or AWS: cfn-lint validates the template, and the rest reads files.
The real SAM transform runs too when ``samtranslator`` (aws-sam-translator) is installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from facegate_local.roles import sam_transform
from facegate_local.template import Template

from facegate.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
REGION = "us-east-1"
SAMCONFIG = REPO / "samconfig.toml"
LOCK = REPO / "requirements.lock"

#: Powertools' own environment variables (docs.powertools.aws.dev, "Environment variables").
POWERTOOLS_NAMES = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_METRICS_FUNCTION_NAME",
    "POWERTOOLS_LOG_LEVEL",
    "POWERTOOLS_LOGGER_LOG_EVENT",
    "POWERTOOLS_LOGGER_SAMPLE_RATE",
    "POWERTOOLS_TRACE_DISABLED",
    "POWERTOOLS_TRACER_CAPTURE_RESPONSE",
    "POWERTOOLS_TRACER_CAPTURE_ERROR",
    "POWERTOOLS_DEV",
    "POWERTOOLS_IDEMPOTENCY_DISABLED",
}
#: Variables of the C library the functions' Python runs on (read at process start).
RUNTIME_NAMES = {"MALLOC_ARENA_MAX"}


class CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that reads the short intrinsic tags (``!Ref X``) as their long form."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def load_template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)


def image_functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        and resource["Properties"].get("PackageType") == "Image"
    }


def dockerfiles() -> list[tuple[Path, Path]]:
    """(Dockerfile, build context) of every image function, as SAM resolves them."""
    found = []
    for resource in image_functions(load_template()).values():
        context = REPO / resource["Metadata"]["DockerContext"]
        found.append((context / resource["Metadata"]["Dockerfile"], context))
    return found


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def copy_sources(path: Path) -> list[str]:
    """Every local source path of the Dockerfile's COPY instructions (not ``--from`` stages)."""
    sources = []
    for word, rest in dockerfile_instructions(path):
        if word != "COPY":
            continue
        args = rest.split()
        if any(a.startswith("--from") for a in args):
            continue
        sources += [a for a in args if not a.startswith("--")][:-1]
    return sources


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` pins in a requirements text, names normalised (PEP 503)."""
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
            assert match, f"not an exact pin: {raw!r}"
            pins[_norm(match[1])] = match[2]
    return pins


def function_environment(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each function's environment variables, the Globals merged in as SAM merges them."""
    shared = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    merged = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            own = resource["Properties"].get("Environment", {}).get("Variables", {})
            merged[name] = {**shared.get("Variables", {}), **own}
    return merged


# ----------------------------------------------------------------------------- the template


def test_cfn_lint_passes() -> None:
    # cfn-lint has no ``__main__``; run its console entry point with this interpreter.
    entry = (
        "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; sys.exit(main())"
    )
    done = subprocess.run(
        [sys.executable, "-c", entry, str(TEMPLATE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"cfn-lint:\n{done.stdout}{done.stderr}"


def test_template_has_the_api_resources_and_outputs() -> None:
    template = load_template()
    types = {name: r["Type"] for name, r in template["Resources"].items()}
    assert types["ApiFunction"] == "AWS::Serverless::Function"
    assert types["HttpApi"] == "AWS::ApiGatewayV2::Api"
    assert types["SubjectsTable"] == "AWS::DynamoDB::Table"
    assert types["PhotoBucket"] == "AWS::S3::Bucket"
    assert set(template["Outputs"]) >= {
        "ApiUrl",
        "PhotoBucketName",
        "SubjectsTableName",
        "ApiFunctionArn",
    }
    route = template["Resources"]["HttpApiDefaultRoute"]["Properties"]
    assert route["RouteKey"] == "$default"
    assert route["AuthorizationType"] == {"Fn::If": ["UseIam", "AWS_IAM", "NONE"]}
    assert template["Parameters"]["AuthMode"]["AllowedValues"] == ["ApiKey", "IAM"]


def test_photo_bucket_is_private_encrypted_and_versioned() -> None:
    bucket = Template(TEMPLATE, {}, "facegate-test", REGION).resolve(
        load_template()["Resources"]["PhotoBucket"]["Properties"]
    )
    block = bucket["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"),
        True,
    )
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_function_environment_names_are_settings_fields() -> None:
    fields = set(Settings.model_fields)
    for function, variables in function_environment(load_template()).items():
        assert variables, f"{function} sets no environment"
        for name in variables:
            if name.startswith("FACEGATE_"):
                field = name.removeprefix("FACEGATE_").lower()
                assert field in fields, f"{function}: {name} is not a Settings field"
            else:
                assert name in POWERTOOLS_NAMES | RUNTIME_NAMES, (
                    f"{function}: unknown variable {name}"
                )


def _literals(value: Any) -> list[Any]:
    """The plain values a template value can take (both branches of an ``Fn::If``)."""
    if isinstance(value, dict):
        if "Fn::If" in value:
            return _literals(value["Fn::If"][1]) + _literals(value["Fn::If"][2])
        return []  # a Ref, Sub, ...: resolved by CloudFormation
    return [value]


def test_literal_facegate_values_are_valid_settings() -> None:
    for function, variables in function_environment(load_template()).items():
        for name, value in variables.items():
            if name.startswith("FACEGATE_"):
                field = name.removeprefix("FACEGATE_").lower()
                for literal in _literals(value):
                    try:
                        Settings(**{field: literal})
                    except ValueError as exc:
                        pytest.fail(f"{function}: {name}={literal!r} is refused: {exc}")


def test_traced_functions_never_record_responses_or_errors() -> None:
    """Responses carry embeddings, subject ids and scores, and error messages can name
    subjects: with tracing active, Powertools' Tracer would put both in X-Ray metadata unless
    the function's environment turns that off (as resolved for the local stack too)."""
    template = load_template()
    tracing = template.get("Globals", {}).get("Function", {}).get("Tracing")
    local = Template(TEMPLATE, {}, "facegate-test", "us-east-1")
    traced = [
        name
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        and resource["Properties"].get("Tracing", tracing) == "Active"
    ]
    assert traced, "no function has tracing active"
    for name in traced:
        env = local.environment(name)
        for variable in ("POWERTOOLS_TRACER_CAPTURE_RESPONSE", "POWERTOOLS_TRACER_CAPTURE_ERROR"):
            assert env.get(variable) == "false", f"{name}: {variable}={env.get(variable)!r}"


def test_model_dir_is_where_the_image_bakes_the_weights() -> None:
    for variables in function_environment(load_template()).values():
        assert variables["FACEGATE_MODEL_DIR"] == "/opt/facegate/models"
    for dockerfile, _ in dockerfiles():
        envs = [rest for word, rest in dockerfile_instructions(dockerfile) if word == "ENV"]
        assert "FACEGATE_MODEL_DIR=/opt/facegate/models" in envs, dockerfile


# ----------------------------------------------------------------------------- the images


def test_every_image_function_has_its_dockerfile() -> None:
    functions = image_functions(load_template())
    assert functions, "no image functions in template.yaml"
    for name, resource in functions.items():
        meta = resource.get("Metadata", {})
        context = REPO / meta.get("DockerContext", "<missing>")
        assert context.is_dir(), f"{name}: DockerContext {context} is not a directory"
        assert (context / meta.get("Dockerfile", "<missing>")).is_file(), f"{name}: Dockerfile"
        assert meta.get("DockerTag"), f"{name}: no DockerTag"


COPIED = sorted(
    {
        (dockerfile, context, src)
        for dockerfile, context in dockerfiles()
        for src in copy_sources(dockerfile)
    }
)


@pytest.mark.parametrize(
    ("dockerfile", "context", "source"),
    COPIED,
    ids=[f"{d.parent.name}:{s}" for d, _, s in COPIED],
)
def test_dockerfile_copies_existing_files(dockerfile: Path, context: Path, source: str) -> None:
    path = context / source
    assert path.exists(), f"{dockerfile.relative_to(REPO)} copies missing {source}"


def test_dockerfile_copies_the_handler_module() -> None:
    for dockerfile, _ in dockerfiles():
        cmds = [rest for word, rest in dockerfile_instructions(dockerfile) if word == "CMD"]
        assert cmds, f"{dockerfile}: no CMD"
        module = json.loads(cmds[-1])[0].rsplit(".", 1)[0]
        assert any(Path(s).name == f"{module}.py" for s in copy_sources(dockerfile)), module


def test_dockerfile_pins_agree_with_the_lock() -> None:
    lock = read_pins(LOCK.read_text())
    for dockerfile, context in dockerfiles():
        instructions = dockerfile_instructions(dockerfile)
        runs = " ".join(rest for word, rest in instructions if word == "RUN")
        pinned = dict(re.findall(r"\b([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s\"']*)", runs))
        assert pinned, f"{dockerfile}: no pinned pip install"
        assert {"torch", "torchvision"} <= set(pinned), "torch must be installed explicitly"
        for name, version in pinned.items():
            assert lock.get(_norm(name)) == version.split("+")[0], f"{name}=={version} vs lock"
        # every requirements file the image installs is pinned to the lock as well
        for source in copy_sources(dockerfile):
            if source.endswith("requirements.txt"):
                pins = read_pins((context / source).read_text())
                assert pins, f"{source} is empty"
                for name, version in pins.items():
                    assert lock.get(name) == version, f"{source}: {name}=={version} vs lock"
                assert not {"torch", "torchvision"} & set(pins), "torch comes from the CPU index"


# ----------------------------------------------------------------------------- deploy config


def test_samconfig_environments_deploy_this_template() -> None:
    config = tomllib.loads(SAMCONFIG.read_text())
    parameters = load_template()["Parameters"]
    assert config["version"] == 0.1
    assert {"default", "prod"} <= set(config)
    for env in ("default", "prod"):
        deploy = config[env]["deploy"]["parameters"]
        assert config[env]["global"]["parameters"]["stack_name"]
        assert "CAPABILITY_IAM" in deploy["capabilities"]
        assert deploy["resolve_image_repos"] is True
        assert deploy["confirm_changeset"] is True
        for pair in deploy.get("parameter_overrides", "").split():
            key, _, value = pair.partition("=")
            assert key in parameters, f"[{env}] overrides unknown parameter {key}"
            allowed = parameters[key].get("AllowedValues")
            assert allowed is None or value in allowed, f"[{env}] {key}={value}"


@pytest.mark.parametrize(
    "overrides", [{"AuthMode": "ApiKey"}, {"AuthMode": "IAM", "Threshold": "0.4"}]
)
def test_sam_transform_accepts_the_template(monkeypatch, overrides: dict[str, str]) -> None:
    """cfn-lint checks SAM resources against a schema; the transform itself is stricter."""
    pytest.importorskip(
        "samtranslator.translator.transform",
        reason="aws-sam-translator is not installed (cfn-lint above still checks the template)",
    )
    from samtranslator.public.exceptions import InvalidDocumentException

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        output = sam_transform(load_template(), overrides)
    except InvalidDocumentException as exc:
        pytest.fail("SAM transform: " + "; ".join(c.message for c in exc.causes))
    assert output["Resources"]["ApiFunction"]["Type"] == "AWS::Lambda::Function"


# ----------------------------------------------------------------------------- hardening
# Read on the SAM-transformed template with the values a deployment would get: what
# CloudFormation creates, not what the SAM resources say.


def deployed(monkeypatch: pytest.MonkeyPatch, region: str = REGION, **parameters: str) -> Template:
    """The SAM transform's output, its intrinsics resolved with ``parameters`` (the others at
    their defaults), ``region`` and the stack ``facegate-test``."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    output = sam_transform(load_template(), parameters)
    return Template(TEMPLATE, {}, "facegate-test", region, parameters=parameters, body=output)


def properties(template: Template, logical: str) -> dict[str, Any]:
    return template.resolve(template.resources[logical].get("Properties", {}))


def default(name: str) -> str:
    return str(load_template()["Parameters"][name]["Default"])


def test_api_function_keeps_reserved_concurrency(monkeypatch) -> None:
    """A fan-out of hundreds of chunk messages must not take every execution of the account
    from the API: the API has its own reservation, 0 leaving it unreserved."""

    def reserved(**parameters: str) -> int | None:
        api = properties(deployed(monkeypatch, **parameters), "ApiFunction")
        value = api.get("ReservedConcurrentExecutions")
        return None if value is None else int(value)

    assert reserved() == int(default("ApiReservedConcurrency")) > 0
    assert reserved(ApiReservedConcurrency="25") == 25
    assert reserved(ApiReservedConcurrency="0") is None


def test_queue_driven_functions_cap_their_concurrency(monkeypatch) -> None:
    template = deployed(monkeypatch, BatchMaxConcurrency="7")
    capped = {}
    for logical, mapping in template.of_type("AWS::Lambda::EventSourceMapping").items():
        function = mapping["Properties"]["FunctionName"]["Ref"]
        props = properties(template, logical)
        assert ":sqs:" in props["EventSourceArn"], logical
        capped[function] = int(props.get("ScalingConfig", {}).get("MaximumConcurrency", 0))
    assert capped == {
        "EmbedFunction": 7,
        "JobFunction": 7,
        "AggregateFunction": 7,
        "CompactFunction": 7,
    }
    # At the defaults, the batch functions and the API's reservation fit in the default
    # account quota (1,000, of which Lambda keeps 100 unreserved).
    batch = int(default("BatchMaxConcurrency")) * len(capped)
    assert batch + int(default("ApiReservedConcurrency")) <= 900


def test_http_api_stage_is_throttled(monkeypatch) -> None:
    """In API-key mode the route itself is open: a flood of keyless requests must meet API
    Gateway's limits before each starts a 3 GB function."""
    stage = properties(
        deployed(monkeypatch, ApiThrottleRate="20", ApiThrottleBurst="40"), "HttpApiStage"
    )
    route = stage["DefaultRouteSettings"]
    assert float(route["ThrottlingRateLimit"]) == 20 and int(route["ThrottlingBurstLimit"]) == 40
    route = properties(deployed(monkeypatch), "HttpApiStage")["DefaultRouteSettings"]
    assert float(route["ThrottlingRateLimit"]) == float(default("ApiThrottleRate")) > 0
    assert int(route["ThrottlingBurstLimit"]) == int(default("ApiThrottleBurst")) > 0


KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = document.get("Statement", [])
    return found if isinstance(found, list) else [found]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def key_grants(template: Template, key: str) -> dict[str, set[str]]:
    """``{role: actions allowed on key}`` from the roles' inline policies and from every IAM
    policy resource whose condition holds and that names the role."""
    grants: dict[str, set[str]] = {role: set() for role in template.of_type("AWS::IAM::Role")}

    def add(role: str, document: dict[str, Any]) -> None:
        for statement in _statements(document):
            if statement["Effect"] == "Allow" and key in _as_list(statement["Resource"]):
                grants[role] |= set(_as_list(statement["Action"]))

    for role in grants:
        for policy in properties(template, role).get("Policies", []):
            add(role, policy["PolicyDocument"])
    for kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        for logical, resource in template.of_type(kind).items():
            if "Condition" in resource and not template.condition(resource["Condition"]):
                continue
            for ref in resource["Properties"].get("Roles", []):
                add(ref["Ref"], properties(template, logical)["PolicyDocument"])
    return grants


def photo_roles(template: Template) -> set[str]:
    """Roles whose inline policies reach the photo bucket's objects."""
    objects = template.attribute("PhotoBucket", "Arn") + "/*"
    return {
        role
        for role in template.of_type("AWS::IAM::Role")
        if objects in json.dumps(properties(template, role).get("Policies", []))
    }


def test_photos_can_be_encrypted_with_a_customer_managed_key(monkeypatch) -> None:
    plain = deployed(monkeypatch)
    rule = properties(plain, "PhotoBucket")["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule == [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    assert not any(key_grants(plain, KEY).values())

    keyed = deployed(monkeypatch, PhotoKmsKeyArn=KEY)
    (rule,) = properties(keyed, "PhotoBucket")["BucketEncryption"][
        "ServerSideEncryptionConfiguration"
    ]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": KEY,
    }
    assert rule["BucketKeyEnabled"] is True
    roles = photo_roles(keyed)
    assert {"ApiFunctionRole", "EmbedFunctionRole", "CompactFunctionRole"} <= roles
    grants = key_grants(keyed, KEY)
    for role in roles:
        assert {"kms:Decrypt", "kms:GenerateDataKey"} <= grants[role], role
    for role in set(grants) - roles:
        assert not grants[role], f"{role} never touches photos but may use the key"


def test_bucket_notifications_are_admitted_from_the_photo_bucket_only(monkeypatch) -> None:
    """A name pattern (``*photobucket*``) would let any bucket of the account send."""
    template = deployed(monkeypatch, Stage="qa")
    bucket_arn = template.attribute("PhotoBucket", "Arn")
    assert "*" not in bucket_arn and "?" not in bucket_arn
    bucket = properties(template, "PhotoBucket")
    notified = {c["Queue"] for c in bucket["NotificationConfiguration"]["QueueConfigurations"]}
    from_s3 = [
        statement
        for logical in template.of_type("AWS::SQS::QueuePolicy")
        for statement in _statements(properties(template, logical)["PolicyDocument"])
        if statement["Principal"] == {"Service": "s3.amazonaws.com"}
    ]
    assert from_s3
    for statement in from_s3:
        assert set(_as_list(statement["Resource"])) <= notified
        assert statement["Condition"] == {
            "ArnEquals": {"aws:SourceArn": bucket_arn},
            "StringEquals": {"aws:SourceAccount": "123456789012"},
        }
    assert notified <= {r for s in from_s3 for r in _as_list(s["Resource"])}
    # the name stays a valid bucket name for the longest stage, in a long region name
    name = deployed(monkeypatch, "ap-southeast-2", Stage="abcdefghijklmnop").physical["PhotoBucket"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", name), name


def _queue_policy_statements(template: Template, queue: str) -> list[dict[str, Any]]:
    url = template.queue_url(queue)
    return [
        statement
        for logical in template.of_type("AWS::SQS::QueuePolicy")
        if url in properties(template, logical)["Queues"]
        for statement in _statements(properties(template, logical)["PolicyDocument"])
    ]


def test_compaction_failures_land_in_a_dead_letter_queue(monkeypatch) -> None:
    """A schedule EventBridge cannot deliver, and a run that failed Lambda's retries, both
    leave a message instead of vanishing."""
    template = deployed(monkeypatch)
    (rule,) = [
        logical
        for logical, resource in template.of_type("AWS::Events::Rule").items()
        if any(
            t["Arn"] == {"Fn::GetAtt": ["CompactFunction", "Arn"]}
            for t in resource["Properties"]["Targets"]
        )
    ]
    (target,) = template.resources[rule]["Properties"]["Targets"]
    queue = target.get("DeadLetterConfig", {}).get("Arn", {}).get("Fn::GetAtt", ["?"])[0]
    assert template.resources.get(queue, {}).get("Type") == "AWS::SQS::Queue", target
    queue_arn = template.attribute(queue, "Arn")
    admitted = [
        s
        for s in _queue_policy_statements(template, queue)
        if s["Effect"] == "Allow" and s["Principal"] == {"Service": "events.amazonaws.com"}
    ]
    assert admitted, f"EventBridge may not send to {queue}"
    for statement in admitted:
        assert statement["Action"] == "sqs:SendMessage" and statement["Resource"] == queue_arn
        assert statement["Condition"] == {
            "ArnEquals": {"aws:SourceArn": template.attribute(rule, "Arn")}
        }
    function = properties(template, "CompactFunction")
    assert function["DeadLetterConfig"] == {"TargetArn": queue_arn}


def dead_letter_queues(template: Template) -> set[str]:
    """Queues that are some queue's redrive target or some rule's or function's DLQ."""
    found = set()
    for resource in template.resources.values():
        text = json.dumps(
            {
                k: v
                for k, v in resource.get("Properties", {}).items()
                if k in ("RedrivePolicy", "DeadLetterConfig", "Targets")
            }
        )
        found |= set(re.findall(r'"Fn::GetAtt": \["(\w+)", "Arn"\]', text))
    return {q for q in found if template.resources.get(q, {}).get("Type") == "AWS::SQS::Queue"}


def _fires(alarm: dict[str, Any], value: float) -> bool:
    threshold = float(alarm["Threshold"])
    return {
        "GreaterThanOrEqualToThreshold": value >= threshold,
        "GreaterThanThreshold": value > threshold,
    }.get(alarm["ComparisonOperator"], False)


def test_alarms_watch_compaction_errors_and_every_dead_letter_queue(monkeypatch) -> None:
    topic = "arn:aws:sns:us-east-1:123456789012:facegate-alarms"
    template = deployed(monkeypatch, AlarmTopicArn=topic)
    alarms = [properties(template, a) for a in template.of_type("AWS::CloudWatch::Alarm")]

    def watching(namespace: str, metric: str, dimension: str, value: str) -> list[dict[str, Any]]:
        return [
            a
            for a in alarms
            if (a.get("Namespace"), a.get("MetricName")) == (namespace, metric)
            and {"Name": dimension, "Value": value} in a.get("Dimensions", [])
        ]

    compact = watching("AWS/Lambda", "Errors", "FunctionName", template.physical["CompactFunction"])
    assert compact and all(_fires(a, 1) and not _fires(a, 0) for a in compact)
    dlqs = dead_letter_queues(template)
    assert {"IngestDLQ", "JobsDLQ"} < dlqs
    for queue in dlqs:
        watched = watching(
            "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", template.physical[queue]
        )
        assert watched, f"no alarm on {queue}"
        assert all(_fires(a, 1) and not _fires(a, 0) for a in watched), queue
    assert all(a["AlarmActions"] == [topic] for a in alarms)
    silent = deployed(monkeypatch)
    assert not any(
        "AlarmActions" in properties(silent, a) for a in silent.of_type("AWS::CloudWatch::Alarm")
    )


#: What a DynamoDB action must start with to change a table's items.
DYNAMODB_WRITES = ("dynamodb:Put", "dynamodb:Update", "dynamodb:Delete", "dynamodb:BatchWrite")


def _grants(template: Template, role: str) -> list[tuple[list[str], list[str]]]:
    """(actions, resources) of each Allow statement of a role's inline policies, resolved."""
    found = []
    for policy in properties(template, role).get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if statement.get("Effect") == "Allow":
                actions, resources = statement["Action"], statement.get("Resource", [])
                found.append(
                    (
                        [actions] if isinstance(actions, str) else list(actions),
                        [resources] if isinstance(resources, str) else list(resources),
                    )
                )
    return found


def test_api_keys_have_their_own_table_that_no_function_can_write(monkeypatch) -> None:
    """Fault 7 and the end of fault 1: keys lived in the subjects table, which the API role
    may write, so the API could mint keys. Now the key-checking functions read the keys
    table and no role of the template can write it; its TTL is the keys' expiry."""
    import fnmatch

    template = deployed(monkeypatch)
    table = properties(template, "ApiKeysTable")
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"] == {"SSEEnabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}

    physical = template.physical["ApiKeysTable"]
    local = Template(TEMPLATE, {}, "facegate-test", REGION)
    for function in ("ApiFunction", "JobStatusFunction"):
        assert local.environment(function)["FACEGATE_KEYS_TABLE"] == physical, function
    arn = f"arn:aws:dynamodb:{REGION}:123456789012:table/{physical}"
    readers = set()
    for role in template.of_type("AWS::IAM::Role"):
        for actions, resources in _grants(template, role):
            on_keys = any(fnmatch.fnmatchcase(arn, str(r)) for r in resources)
            if not on_keys:
                continue
            writes = [
                a for a in actions if a == "*" or a == "dynamodb:*" or a.startswith(DYNAMODB_WRITES)
            ]
            assert not writes, f"{role} may write the API keys table: {writes}"
            readers.add(role)
    assert readers == {"ApiFunctionRole", "JobStatusFunctionRole"}


# ----------------------------------------------------------------------------- retention


def _lifecycle(template: Template) -> dict[str, dict[str, Any]]:
    rules = properties(template, "PhotoBucket")["LifecycleConfiguration"]["Rules"]
    return {rule["Id"]: rule for rule in rules}


def test_photo_bucket_lifecycle_follows_the_retention_parameters(monkeypatch) -> None:
    """Uploads, jobs, results and probes expire after their parameter's days (0 keeps them);
    every old version goes after NoncurrentVersionDays, then its delete marker; enrolment
    photos and galleries never expire."""
    rules = _lifecycle(deployed(monkeypatch))
    versions = rules.pop("expire-old-versions")
    assert versions["Status"] == "Enabled" and "Prefix" not in versions
    assert int(versions["NoncurrentVersionExpiration"]["NoncurrentDays"]) == int(
        default("NoncurrentVersionDays")
    )
    assert versions["ExpiredObjectDeleteMarker"] is True
    assert int(versions["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]) == int(
        default("AbortMultipartDays")
    )
    expiring = {r["Prefix"]: int(r["ExpirationInDays"]) for r in rules.values()}
    assert expiring == {
        "uploads/": int(default("UploadsRetentionDays")),
        "jobs/": int(default("JobsRetentionDays")),
        "results/": int(default("JobsRetentionDays")),
        "erasures/": int(default("JobsRetentionDays")),
        "probes/": int(default("ProbesRetentionDays")),
    }
    assert all(r["Status"] == "Enabled" for r in rules.values())

    kept = _lifecycle(
        deployed(
            monkeypatch,
            UploadsRetentionDays="0",
            JobsRetentionDays="0",
            ProbesRetentionDays="0",
            NoncurrentVersionDays="4",
        )
    )
    assert set(kept) == {"expire-old-versions"}
    assert int(kept["expire-old-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"]) == 4
    shorter = _lifecycle(deployed(monkeypatch, UploadsRetentionDays="5", JobsRetentionDays="2"))
    assert int(shorter["expire-uploads"]["ExpirationInDays"]) == 5
    assert int(shorter["expire-results"]["ExpirationInDays"]) == 2
    assert int(shorter["expire-erasures"]["ExpirationInDays"]) == 2


def test_the_template_and_the_settings_agree_on_retention() -> None:
    """The functions read the figures the lifecycle rules use, and their own defaults are the
    template's, so that a test or the CLI expires items as a deployment does."""
    from facegate.storage.dynamo import TTL_ATTRIBUTE

    template = load_template()
    for variables in function_environment(template).values():
        assert variables["FACEGATE_UPLOADS_RETENTION_DAYS"] == {"Ref": "UploadsRetentionDays"}
        assert variables["FACEGATE_JOBS_RETENTION_DAYS"] == {"Ref": "JobsRetentionDays"}
        assert variables["FACEGATE_NONCURRENT_VERSION_DAYS"] == {"Ref": "NoncurrentVersionDays"}
    settings = Settings()
    assert settings.uploads_retention_days == int(default("UploadsRetentionDays"))
    assert settings.jobs_retention_days == int(default("JobsRetentionDays"))
    assert settings.noncurrent_version_days == int(default("NoncurrentVersionDays"))
    table = template["Resources"]["SubjectsTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def test_no_queue_keeps_a_message_longer_than_the_settings_assume(monkeypatch) -> None:
    """Tombstones and ledger entries are kept past the longest a notification can wait in a
    queue (facegate.settings.DEAD_LETTER_RETENTION_DAYS): a queue keeping messages longer
    would let a late redrive find neither."""
    from facegate.settings import DEAD_LETTER_RETENTION_DAYS

    template = deployed(monkeypatch)
    queues = template.of_type("AWS::SQS::Queue")
    assert queues
    for queue in queues:
        # SQS keeps a message 4 days (345,600 s) unless the queue says otherwise.
        seconds = int(properties(template, queue).get("MessageRetentionPeriod", 345_600))
        assert seconds <= DEAD_LETTER_RETENTION_DAYS * 86_400, queue
    assert max(int(properties(template, q).get("MessageRetentionPeriod", 0)) for q in queues) == (
        DEAD_LETTER_RETENTION_DAYS * 86_400
    )
