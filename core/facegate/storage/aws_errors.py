"""boto3 failures -> :class:`~facegate.errors.StorageError`, in one place. Torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError

from facegate.errors import StorageError


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn boto3 failures into :class:`StorageError`; domain errors raised inside pass."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise StorageError(f"{action} failed: {code}", detail=str(exc)) from exc
    except BotoCoreError as exc:
        raise StorageError(f"{action} failed", detail=str(exc)) from exc


def error_code(exc: ClientError) -> str:
    """The service's error code (``NoSuchKey``, ``ConditionalCheckFailedException``, ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))
