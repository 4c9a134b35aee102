"""Fixtures of the storage tests: an object store on moto's in-process S3 (``fresh_aws``)."""

from __future__ import annotations

import pytest

from facegate.storage.objects import ObjectStore


@pytest.fixture
def store(fresh_aws) -> ObjectStore:
    """The store over the test's empty, unversioned bucket."""
    return ObjectStore(fresh_aws.s3, fresh_aws.bucket)


@pytest.fixture
def versioned(fresh_aws) -> ObjectStore:
    """The store over the same bucket with versioning enabled (as the template's bucket)."""
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    return ObjectStore(fresh_aws.s3, fresh_aws.bucket)
