"""Creating the template's tables and buckets on an AWS endpoint (the local moto server).

CloudFormation property names differ from the API's in a few places (``SSEEnabled`` vs
``Enabled``, bucket encryption and lifecycle rules); this module translates the ones the
template uses, so the local table has the same keys, indexes, billing and TTL as the deployed
one, and the bucket the encryption and lifecycle rules the template's conditions choose.
"""

from __future__ import annotations

import json
import secrets
import string
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


#: CloudFormation's lifecycle rule properties the local stack knows how to translate.
_LIFECYCLE_PROPERTIES = frozenset(
    {
        "Id",
        "Status",
        "Prefix",
        "ExpirationInDays",
        "ExpiredObjectDeleteMarker",
        "NoncurrentVersionExpiration",
        "AbortIncompleteMultipartUpload",
    }
)


def lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """One resolved CloudFormation lifecycle rule in ``put_bucket_lifecycle_configuration``'s
    shape: ``Id`` is ``ID``, ``Prefix`` a ``Filter``, ``ExpirationInDays`` and
    ``ExpiredObjectDeleteMarker`` go in ``Expiration``, and the day counts become numbers
    (parameters resolve to text). A property not translated here is a ``ValueError``, so a
    rule added to the template is never silently left out of the local bucket.
    """
    unknown = set(rule) - _LIFECYCLE_PROPERTIES
    if unknown:
        raise ValueError(f"the local stack cannot translate lifecycle properties {sorted(unknown)}")
    out: dict[str, Any] = {
        "ID": rule["Id"],
        "Status": rule["Status"],
        "Filter": {"Prefix": rule.get("Prefix", "")},
    }
    expiration: dict[str, Any] = {}
    if "ExpirationInDays" in rule:
        expiration["Days"] = int(rule["ExpirationInDays"])
    if "ExpiredObjectDeleteMarker" in rule:
        expiration["ExpiredObjectDeleteMarker"] = bool(rule["ExpiredObjectDeleteMarker"])
    if expiration:
        out["Expiration"] = expiration
    if "NoncurrentVersionExpiration" in rule:
        days = rule["NoncurrentVersionExpiration"]["NoncurrentDays"]
        out["NoncurrentVersionExpiration"] = {"NoncurrentDays": int(days)}
    if "AbortIncompleteMultipartUpload" in rule:
        days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        out["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": int(days)}
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


def create_secrets(template: Template, secretsmanager: Any) -> dict[str, str]:
    """Every ``AWS::SecretsManager::Secret``, its value generated as ``GenerateSecretString``
    asks (letters and digits here; the template excludes punctuation)."""
    created = {}
    alphabet = string.ascii_letters + string.digits
    for logical, resource in template.of_type("AWS::SecretsManager::Secret").items():
        props = template.resolve(resource.get("Properties", {}))
        length = int(props.get("GenerateSecretString", {}).get("PasswordLength", 32))
        value = "".join(secrets.choice(alphabet) for _ in range(length))
        name = template.physical[logical]
        secretsmanager.create_secret(Name=name, SecretString=value)
        created[logical] = name
    return created


def create_resources(
    template: Template,
    dynamodb: Any,
    s3: Any,
    sqs: Any | None = None,
    secretsmanager: Any | None = None,
) -> dict[str, str]:
    """Create every queue, table, bucket and secret; returns ``{logical id: physical name}``."""
    created: dict[str, str] = {}
    if secretsmanager is not None:
        created.update(create_secrets(template, secretsmanager))
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
        lifecycle = [
            lifecycle_rule(r) for r in props.get("LifecycleConfiguration", {}).get("Rules", [])
        ]
        if lifecycle:
            s3.put_bucket_lifecycle_configuration(
                Bucket=name, LifecycleConfiguration={"Rules": lifecycle}
            )
        notifications = _notifications(template, props) if sqs is not None else {}
        if notifications:
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration=notifications
            )
        created[logical] = name
    return created
