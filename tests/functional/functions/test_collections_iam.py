"""The collection store under the API function's role, exactly as the SAM transform expands
it, against moto with IAM on (as ``test_iam.py`` runs the other stores).

The demo does not call ``/collections`` yet, so the demo test cannot see whether the role
allows what collections need (``dynamodb:DeleteItem`` is granted for them alone: it is in
that test's ``NOT_IN_THE_DEMO``). Here every call of :class:`CollectionStore` runs with the
role's session keys while moto authorises each request against the table's ARN.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from facegate_local.resources import create_resources
from facegate_local.roles import (
    LOAD_MANAGED_POLICIES,
    authorise_dynamodb_by_table,
    create_role,
    function_roles,
    permission_usage,
    read_authorisations,
    record_authorisations,
)
from facegate_local.template import Template
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count
from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import IAMRequestBase
from tests_support import REAL_AWS_POINTERS, repo_root, use_fake_credentials

from facegate.errors import CollectionExistsError, StorageError, UnknownCollectionError
from facegate.storage.collections import Collection, CollectionStore

REGION = "us-east-1"
NAMES = {
    "PhotoBucket": "facegate-iam-photos",
    "SubjectsTable": "facegate-iam-subjects",
    "ApiKeysTable": "facegate-iam-keys",
}


@pytest.fixture
def role(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Before enforcement: the template's tables, the API role and its DynamoDB client, moto
    patched as the local stack patches it (per table, every decision recorded), restored
    after."""
    monkeypatch.setattr(
        IAMRequestBase, "check_action_permitted", IAMRequestBase.check_action_permitted
    )
    for name in ("_determine_resource", "_authenticate_and_authorize_normal_action"):
        monkeypatch.setattr(DynamoHandler, name, getattr(DynamoHandler, name, None), raising=False)
    authorisations = tmp_path / "authorisations.jsonl"
    record_authorisations(authorisations)
    authorise_dynamodb_by_table()
    for name in REAL_AWS_POINTERS:
        monkeypatch.delenv(name, raising=False)
    use_fake_credentials(monkeypatch, REGION)
    monkeypatch.setenv(LOAD_MANAGED_POLICIES, "true")
    template = Template(repo_root() / "template.yaml", NAMES, "facegate-iam", REGION)
    with mock_aws():
        admin = {name: boto3.client(name, region_name=REGION) for name in ("s3", "dynamodb")}
        create_resources(template, admin["dynamodb"], admin["s3"])
        iam, sts = (boto3.client(name, region_name=REGION) for name in ("iam", "sts"))
        keys = create_role(iam, sts, function_roles(template)["ApiFunction"])
        yield {
            "dynamodb": boto3.client("dynamodb", region_name=REGION, **keys.client_kwargs()),
            "template": template,
            "authorisations": authorisations,
        }


@set_initial_no_auth_action_count(0)
def test_api_role_creates_lists_reads_and_deletes_collections(role: dict[str, Any]) -> None:
    store = CollectionStore(role["dynamodb"], NAMES["SubjectsTable"], default_model_id="sface")
    created = store.create(Collection("lobby", "sface", far=0.001))
    with pytest.raises(CollectionExistsError):  # the condition is evaluated, not refused
        store.create(Collection("lobby", "sface"))
    assert store.get("lobby") == created
    page, cursor = store.list(limit=1)
    assert [c.name for c in page] == ["default"]
    assert [c.name for c in store.list(limit=10, cursor=cursor)[0]] == ["lobby"]
    store.delete("lobby")
    with pytest.raises(UnknownCollectionError):
        store.delete("lobby")
    with pytest.raises(StorageError, match="403"):  # another table is not the role's to write
        CollectionStore(role["dynamodb"], NAMES["ApiKeysTable"], default_model_id="x").create(
            Collection("lobby", "sface")
        )
    usage = permission_usage(role["template"], read_authorisations(role["authorisations"]))
    api = usage["ApiFunction"]
    assert api.refused == {"dynamodb:PutItem"}  # only the keys table's
    assert {"dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:DeleteItem"} <= (
        api.used
    )
