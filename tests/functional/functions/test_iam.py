"""The API function's role, exactly as the SAM transform expands it, against moto with IAM on.

moto allows every call by default, so a permission missing from template.yaml (or one too
many) is invisible to the rest of the suite. Here an IAM user gets the role's inline policies,
resolved with the local stack's physical names, and the API's storage code runs with that
user's keys while moto authorises every request (``set_initial_no_auth_action_count(0)``: the
fixture's setup runs before enforcement starts, the test body entirely under it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from facegate_local.resources import create_resources
from facegate_local.template import Template, load_template
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count
from tests_support import REAL_AWS_POINTERS, repo_root, sam_transform, use_fake_credentials

from facegate.storage.photos import PhotoStore

REGION = "us-east-1"
NAMES = {"PhotoBucket": "facegate-iam-photos", "SubjectsTable": "facegate-iam-subjects"}


def _resolve(template: Template, value: Any) -> Any:
    """Every intrinsic inside a policy document, resolved as the local stack resolves them."""
    if isinstance(value, list):
        return [_resolve(template, v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)).startswith(("Ref", "Fn::")):
            return template.resolve(value)
        return {k: _resolve(template, v) for k, v in value.items()}
    return value


def role_policies(template: Template, function: str) -> dict[str, dict[str, Any]]:
    """``{policy name: document}`` of the inline policies SAM writes on the function's role.

    The role's managed policies (basic execution and X-Ray write access) grant logs and traces
    only, nothing the storage code calls.
    """
    output = sam_transform(load_template(template.path), {})
    role = output["Resources"][f"{function}Role"]["Properties"]
    return {
        policy["PolicyName"]: {
            "Version": "2012-10-17",
            **_resolve(template, policy["PolicyDocument"]),
        }
        for policy in role["Policies"]
    }


@dataclass(frozen=True)
class Stack:
    """The local stack's bucket and table, clients with the API role's keys, and an auditor
    (``s3:*``) to look at what is left."""

    bucket: str
    role_s3: Any
    auditor_s3: Any
    keys: dict[str, list[str]]


def _user_clients(iam: Any, user: str, policies: dict[str, dict[str, Any]]) -> Any:
    """An S3 client with the keys of a new IAM user holding exactly ``policies``."""
    iam.create_user(UserName=user)
    for name, document in policies.items():
        iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return boto3.client(
        "s3",
        region_name=REGION,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, faces_dir: Path) -> Iterator[Stack]:
    """Before enforcement: the template's table and versioned bucket, the users, and photos.

    alice has a photo in two versions and one hidden behind a delete marker (what erasing her
    must remove entirely); bob has the photos of an enrolment that failed midway; carol's photo
    must survive both.
    """
    for name in REAL_AWS_POINTERS:
        monkeypatch.delenv(name, raising=False)
    use_fake_credentials(monkeypatch, REGION)
    template = Template(repo_root() / "template.yaml", NAMES, "facegate-iam", REGION)
    with mock_aws():
        admin = {name: boto3.client(name, region_name=REGION) for name in ("s3", "dynamodb")}
        create_resources(template, admin["dynamodb"], admin["s3"])
        iam = boto3.client("iam", region_name=REGION)
        role_s3 = _user_clients(iam, "api-function", role_policies(template, "ApiFunction"))
        auditor = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        auditor_s3 = _user_clients(iam, "auditor", {"audit": auditor})
        bucket = NAMES["PhotoBucket"]
        photos = PhotoStore(admin["s3"], bucket)
        jpeg = [(faces_dir / f"person_a_{i}.jpg").read_bytes() for i in (1, 2)]
        keys = {
            "alice": [
                photos.put("alice", "f1", jpeg[0], "image/jpeg"),
                photos.put("alice", "f1", jpeg[1], "image/jpeg"),
                photos.put("alice", "f2", jpeg[0], "image/jpeg"),
            ],
            "bob": [photos.put("bob", f"f{i}", jpeg[i], "image/jpeg") for i in (0, 1)],
            "carol": [photos.put("carol", "f1", jpeg[0], "image/jpeg")],
        }
        photos.objects.delete(keys["alice"][2])
        yield Stack(bucket, role_s3, auditor_s3, keys)


def _versions(s3: Any, bucket: str) -> list[str]:
    """Every key that still has a version or a delete marker."""
    answer = s3.list_object_versions(Bucket=bucket)
    entries = answer.get("Versions", []) + answer.get("DeleteMarkers", [])
    return sorted(entry["Key"] for entry in entries)


@set_initial_no_auth_action_count(0)
def test_api_role_erases_a_subject_and_undoes_a_failed_enrolment(stack: Stack) -> None:
    store = PhotoStore(stack.role_s3, stack.bucket)

    assert store.delete_subject("alice") == 2
    store.delete_keys(stack.keys["bob"])

    assert _versions(stack.auditor_s3, stack.bucket) == stack.keys["carol"]


@set_initial_no_auth_action_count(0)
def test_api_role_cannot_change_the_bucket_lifecycle(stack: Stack) -> None:
    """Expiring old versions is what makes a deleted photo really go: not the API's to change."""
    with pytest.raises(ClientError) as refused:
        stack.role_s3.put_bucket_lifecycle_configuration(
            Bucket=stack.bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "keep-nothing",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "Expiration": {"Days": 1},
                    }
                ]
            },
        )
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    stack.role_s3.get_object(Bucket=stack.bucket, Key=stack.keys["carol"][0])  # the keys work
