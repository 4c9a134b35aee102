"""Creating the template's tables and buckets on an AWS endpoint (the local moto server).

CloudFormation property names differ from the API's in a few places (``SSEEnabled`` vs
``Enabled``, bucket encryption rules); this module translates the ones the template uses, so
the local table has the same keys, indexes and billing as the deployed one.
"""

from __future__ import annotations

from typing import Any

from facegate_local.template import Template

_TABLE_KEYS = ("KeySchema", "AttributeDefinitions", "BillingMode", "GlobalSecondaryIndexes")


def table_kwargs(name: str, props: dict[str, Any]) -> dict[str, Any]:
    """``create_table`` arguments from an ``AWS::DynamoDB::Table``'s properties."""
    kwargs: dict[str, Any] = {"TableName": name}
    kwargs.update({k: props[k] for k in _TABLE_KEYS if k in props})
    if "SSESpecification" in props:
        kwargs["SSESpecification"] = {"Enabled": bool(props["SSESpecification"].get("SSEEnabled"))}
    return kwargs


def _encryption_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's ``ServerSideEncryptionByDefault`` is the API's
    ``ApplyServerSideEncryptionByDefault``."""
    out = {k: v for k, v in rule.items() if k != "ServerSideEncryptionByDefault"}
    if "ServerSideEncryptionByDefault" in rule:
        out["ApplyServerSideEncryptionByDefault"] = rule["ServerSideEncryptionByDefault"]
    return out


def create_resources(template: Template, dynamodb: Any, s3: Any) -> dict[str, str]:
    """Create every table and bucket; returns ``{logical id: physical name}``."""
    created: dict[str, str] = {}
    for logical, resource in template.of_type("AWS::DynamoDB::Table").items():
        name = template.physical[logical]
        props = resource.get("Properties", {})
        dynamodb.create_table(**table_kwargs(name, props))
        dynamodb.get_waiter("table_exists").wait(TableName=name)
        pitr = props.get("PointInTimeRecoverySpecification", {})
        if pitr.get("PointInTimeRecoveryEnabled"):
            dynamodb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
        created[logical] = name
    for logical, resource in template.of_type("AWS::S3::Bucket").items():
        name = template.physical[logical]
        props = resource.get("Properties", {})
        s3.create_bucket(Bucket=name)
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        rules = [
            _encryption_rule(rule)
            for rule in props.get("BucketEncryption", {}).get(
                "ServerSideEncryptionConfiguration", []
            )
        ]
        if rules:
            s3.put_bucket_encryption(
                Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules}
            )
        block = props.get("PublicAccessBlockConfiguration")
        if block:
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=block)
        created[logical] = name
    return created
