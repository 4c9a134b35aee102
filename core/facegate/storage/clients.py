"""boto3 clients built from :class:`~facegate.settings.Settings`, and nothing else.

Every AWS client in the library comes from :func:`aws_client`, so pointing the whole system at
the local moto stack is one setting (``FACEGATE_AWS_ENDPOINT_URL``) and the region is the one
the template set. Credentials are left to boto3's standard chain (the Lambda role on AWS,
environment variables locally) and are never read here.

Torch-free. The typed client classes (``mypy_boto3_*``) are stubs, for the type checker only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
import botocore.loaders
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config

from facegate.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient


@lru_cache(maxsize=1)
def _shared_loader() -> botocore.loaders.Loader:
    """One loader of botocore's JSON data for every session of the process. Each session
    would otherwise parse the endpoints and service models again and keep its own copy
    (45 MB of Python objects for the API's three clients): memory a Lambda function is
    billed for. The loader only caches what it read from botocore's own files; credentials
    and configuration stay per session."""
    return botocore.loaders.create_loader()


@overload
def aws_client(service: Literal["s3"], settings: Settings) -> S3Client: ...
@overload
def aws_client(service: Literal["dynamodb"], settings: Settings) -> DynamoDBClient: ...
@overload
def aws_client(service: Literal["sqs"], settings: Settings) -> SQSClient: ...
@overload
def aws_client(service: str, settings: Settings) -> BaseClient: ...


def aws_client(service: str, settings: Settings) -> Any:
    """A boto3 client for ``service`` in ``settings.aws_region``.

    A fresh session per call rather than boto3's module-level default one: sessions are not
    thread-safe and the default one would share state between callers with different
    settings (tests, the local stack). With ``settings.aws_endpoint_url`` set (moto, LocalStack)
    S3 uses path-style addressing, because ``<bucket>.localhost`` does not resolve everywhere.
    "standard" retries back off on throttling and transient 5xx errors with the same policy
    across services, unlike the legacy default; three attempts keep a Lambda's worst case short.
    """
    local = settings.aws_endpoint_url is not None
    config = Config(
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": "path"} if local else None,
    )
    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_loader())
    session = boto3.session.Session(region_name=settings.aws_region, botocore_session=core)
    make: Callable[..., Any] = session.client  # one overload per service name in the stubs
    return make(service, endpoint_url=settings.aws_endpoint_url, config=config)
