"""Creating the template's tables and buckets on an AWS endpoint (the local moto server).

CloudFormation property names differ from the API's in a few places (``SSEEnabled`` vs
``Enabled``, bucket encryption rules); this module translates the ones the template uses, so
the local table has the same keys, indexes and billing as the deployed one, and the bucket the
encryption the template's conditions choose.
"""

from __future__ import annotations

import json
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


def create_queues(template: Template, sqs: Any) -> dict[str, str]:
    """Every ``AWS::SQS::Queue``, then their redrive policies (dead-letter queues first
    exist, whatever the order in the template); returns ``{logical id: queue URL}``."""
    urls: dict[str, str] = {}
    queues = template.of_type("AWS::SQS::Queue")
    for logical, resource in queues.items():
        props = resource.get("Properties", {})
        attributes = {
            k: str(template.resolve(props[k]))
            for k in ("VisibilityTimeout", "MessageRetentionPeriod")
            if k in props
        }
        urls[logical] = sqs.create_queue(
            QueueName=template.physical[logical], Attributes=attributes
        )["QueueUrl"]
    for logical, resource in queues.items():
        redrive = resource.get("Properties", {}).get("RedrivePolicy")
        if redrive:
            policy = {k: template.resolve(v) for k, v in redrive.items()}
            sqs.set_queue_attributes(
                QueueUrl=urls[logical], Attributes={"RedrivePolicy": json.dumps(policy)}
            )
    return urls


def _notifications(template: Template, props: dict[str, Any]) -> dict[str, Any]:
    """A bucket's ``NotificationConfiguration`` in the API's shape (queues only)."""
    configs = []
    for entry in props.get("NotificationConfiguration", {}).get("QueueConfigurations", []):
        config: dict[str, Any] = {
            "QueueArn": template.resolve(entry["Queue"]),
            "Events": [entry["Event"]],
        }
        rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules")
        if rules:
            config["Filter"] = {"Key": {"FilterRules": rules}}
        configs.append(config)
    return {"QueueConfigurations": configs} if configs else {}


def create_resources(
    template: Template, dynamodb: Any, s3: Any, sqs: Any | None = None
) -> dict[str, str]:
    """Create every queue, table and bucket; returns ``{logical id: physical name}``."""
    created: dict[str, str] = {}
    if sqs is not None:
        create_queues(template, sqs)
        created.update({k: template.physical[k] for k in template.of_type("AWS::SQS::Queue")})
    for logical, resource in template.of_type("AWS::DynamoDB::Table").items():
        name = template.physical[logical]
        props = template.resolve(resource.get("Properties", {}))
        dynamodb.create_table(**table_kwargs(name, props))
        dynamodb.get_waiter("table_exists").wait(TableName=name)
        ttl = props.get("TimeToLiveSpecification", {})
        if ttl.get("Enabled"):
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
            )
        pitr = props.get("PointInTimeRecoverySpecification", {})
        if pitr.get("PointInTimeRecoveryEnabled"):
            dynamodb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
        created[logical] = name
    for logical, resource in template.of_type("AWS::S3::Bucket").items():
        name = template.physical[logical]
        # Conditions decide the encryption (SSE-S3, or SSE-KMS with the deployment's key).
        props = template.resolve(resource.get("Properties", {}))
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
        notifications = _notifications(template, props) if sqs is not None else {}
        if notifications:
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration=notifications
            )
        created[logical] = name
    return created
