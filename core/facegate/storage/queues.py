"""Sending to SQS: every body, ten to a request, or a :class:`StorageError`. Torch-free.

The batch steps fan work out as many messages at once (archive chunks, job chunks, erasure
chunks). ``SendMessageBatch`` takes ten, and may accept some and refuse others with a 200:
a refusal must fail the step (its message is retried and sends again; a duplicate message
costs time, the consumers are idempotent), never pass silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from facegate.errors import StorageError
from facegate.storage.aws_errors import aws_errors

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

#: SQS's most entries per ``SendMessageBatch``.
BATCH = 10


def send_messages(sqs: SQSClient, queue_url: str | None, bodies: Sequence[str], what: str) -> None:
    """Send every body to the queue, in order, ten at a time; ``what`` names them in errors
    (never a body: bodies may name people). No queue URL is a :class:`StorageError` too."""
    if not queue_url:
        raise StorageError(f"no queue configured for {what} (FACEGATE_*_QUEUE_URL)")
    for start in range(0, len(bodies), BATCH):
        entries: list[SendMessageBatchRequestEntryTypeDef] = [
            {"Id": str(n), "MessageBody": body}
            for n, body in enumerate(bodies[start : start + BATCH])
        ]
        with aws_errors(f"queueing {what}"):
            sent = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if sent.get("Failed"):
            raise StorageError(f"{len(sent['Failed'])} of {len(entries)} {what} were not queued")
