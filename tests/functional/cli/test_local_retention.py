"""The local stack creates the template's retention: the bucket's lifecycle rules (with the
template's parameters) and the subjects table's TTL, on moto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from facegate_local.config import LocalConfig
from facegate_local.resources import create_resources, lifecycle_rule

REPO = Path(__file__).resolve().parents[3]


def _created(aws: Any, tag: str, parameters: dict[str, str]) -> tuple[Any, Any, dict[str, str]]:
    """Every table and bucket of the template under names of this test's own."""
    from facegate.storage.clients import aws_client

    template = LocalConfig.load(REPO).template()
    names = {k: f"{tag}-{k.lower()}" for k in template.resources}
    local = LocalConfig(root=REPO, resources=names, parameters=parameters).template()
    dynamodb, s3 = aws_client("dynamodb", aws), aws_client("s3", aws)
    return dynamodb, s3, create_resources(local, dynamodb, s3)


def _rules(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    return {rule["ID"]: rule for rule in rules}


def test_the_local_bucket_expires_what_the_template_expires(aws) -> None:
    dynamodb, s3, created = _created(aws, "retention", {})
    rules = _rules(s3, created["PhotoBucket"])
    assert set(rules) == {
        "expire-old-versions",
        "expire-uploads",
        "expire-jobs",
        "expire-results",
        "expire-erasures",
        "expire-probes",
    }
    versions = rules["expire-old-versions"]
    assert versions["Status"] == "Enabled"
    assert versions["Filter"] == {"Prefix": ""}
    assert versions["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1
    assert versions["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    assert versions["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    for rule_id, prefix, days in (
        ("expire-uploads", "uploads/", 30),
        ("expire-jobs", "jobs/", 30),
        ("expire-results", "results/", 30),
        ("expire-erasures", "erasures/", 30),
        ("expire-probes", "probes/", 7),
    ):
        rule = rules[rule_id]
        assert (rule["Status"], rule["Filter"], rule["Expiration"]) == (
            "Enabled",
            {"Prefix": prefix},
            {"Days": days},
        ), rule_id
    # Only these expire: enrolment photos and galleries are what the service serves.
    expiring = {r["Filter"]["Prefix"] for r in rules.values() if "Days" in r.get("Expiration", {})}
    assert expiring == {"uploads/", "jobs/", "results/", "erasures/", "probes/"}

    ttl = dynamodb.describe_time_to_live(TableName=created["SubjectsTable"])
    assert ttl["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "expires_at",
    }


def test_the_local_lifecycle_follows_the_parameters(aws) -> None:
    """0 keeps a prefix (its rule is an ``Fn::If`` dropping to ``AWS::NoValue``); days given
    as parameters reach the rules as numbers."""
    parameters = {
        "UploadsRetentionDays": "0",
        "JobsRetentionDays": "12",
        "ProbesRetentionDays": "0",
        "NoncurrentVersionDays": "3",
        "AbortMultipartDays": "2",
    }
    _, s3, created = _created(aws, "kept", parameters)
    rules = _rules(s3, created["PhotoBucket"])
    assert set(rules) == {
        "expire-old-versions",
        "expire-jobs",
        "expire-results",
        "expire-erasures",
    }
    assert rules["expire-jobs"]["Expiration"] == {"Days": 12}
    assert rules["expire-results"]["Expiration"] == {"Days": 12}
    versions = rules["expire-old-versions"]
    assert versions["NoncurrentVersionExpiration"]["NoncurrentDays"] == 3
    assert versions["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}


def test_a_lifecycle_property_the_local_stack_cannot_translate_is_refused() -> None:
    """A rule the template gains must not be silently left out of the local bucket."""
    with pytest.raises(ValueError, match="Transitions"):
        lifecycle_rule({"Id": "archive", "Status": "Enabled", "Transitions": []})
