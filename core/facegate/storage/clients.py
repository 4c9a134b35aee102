"""boto3 clients built from :class:`~facegate.settings.Settings`, and nothing else.

Every AWS client in the library comes from :func:`aws_client`, so pointing the whole system at
the local moto stack is one setting (``FACEGATE_AWS_ENDPOINT_URL``) and the region is the one
the template set. Credentials are left to boto3's standard chain (the Lambda role on AWS,
environment variables locally) and are never read here.

Torch-free.
"""

from __future__ import annotations

import boto3
from botocore.client import BaseClient
from botocore.config import Config

from facegate.settings import Settings

#: "standard" retries back off on throttling and transient 5xx errors with the same policy
#: across services, unlike the legacy default; three attempts keep a Lambda's worst case short.
_RETRIES = {"mode": "standard", "max_attempts": 3}


def aws_client(service: str, settings: Settings) -> BaseClient:
    """A boto3 client for ``service`` in ``settings.aws_region``.

    A fresh session per call rather than boto3's module-level default one: sessions are not
    thread-safe and the default one would share state between callers with different
    settings (tests, the local stack). With ``settings.aws_endpoint_url`` set (moto, LocalStack)
    S3 uses path-style addressing, because ``<bucket>.localhost`` does not resolve everywhere.
    """
    local = settings.aws_endpoint_url is not None
    config = Config(retries=_RETRIES, s3={"addressing_style": "path"} if local else None)
    session = boto3.session.Session(region_name=settings.aws_region)
    return session.client(service, endpoint_url=settings.aws_endpoint_url, config=config)
