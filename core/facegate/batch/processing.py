"""SQS batches on Powertools' batch utility: each record done, recorded or retried on its own.

The queue handlers (embedding, verification jobs, aggregation) hand their event to
:func:`process_batch`, which runs Powertools' :class:`BatchProcessor`: a record handler sees
one :class:`SQSRecord`, and whatever it raises fails that record alone (a batch item failure
that SQS redelivers, and after ``maxReceiveCount`` parks in the DLQ).

What a record handler may let out is therefore only what a retry can fix
(:func:`is_retryable`: S3/DynamoDB/SQS failures). Permanent problems are written where their
owner sees them: reject rows of the gallery, failed rows or a failed status of the job, the
``failed`` status of a re-embedding. A message that names nothing to write to (not JSON, an
unknown message type) is logged with its message id and reason code by :func:`discard` and
deleted: it would only loop to the DLQ. Log lines carry ids and codes, never keys, subject ids
or message bodies (they name people).

:class:`CollectingBatchProcessor` adds the embedding job's second phase: records are collected
one by one, then what they collected is written together (one gallery part per invocation),
and a failed write fails exactly the records whose photos it held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.exceptions import BotoCoreError, ClientError

from facegate.errors import FaceGateError, StorageError

logger = logging.getLogger("facegate.batch")

#: What a collecting processor's flush gets: each collected record and what its handler
#: returned; it answers the message ids whose write failed, with the error.
Flush = Callable[[Sequence[tuple[SQSRecord, Any]]], Mapping[str, BaseException]]


def is_retryable(exc: BaseException) -> bool:
    """Whether a retry of the record may succeed: storage and AWS failures, not bad input."""
    return isinstance(exc, StorageError | ClientError | BotoCoreError)


def is_permanent(exc: BaseException) -> bool:
    """A FaceGate error no retry will fix (bad input, a missing object, an unknown job)."""
    return isinstance(exc, FaceGateError) and not is_retryable(exc)


def discard(record: SQSRecord, exc: FaceGateError, queue: str) -> None:
    """Record a permanent failure that no row or status can hold, then let the message go."""
    logger.warning(
        "message discarded",
        extra={"message_id": record.message_id, "queue": queue, "reason": exc.code},
    )


class CollectingBatchProcessor(BatchProcessor):
    """Powertools' SQS processor, then one flush of everything the records collected.

    The record handler returns what its record contributes (and raises to fail it alone);
    ``flush`` writes the successful records' contributions together and names the records
    whose write failed, which become batch item failures too.
    """

    def __init__(self, flush: Flush) -> None:
        super().__init__(EventType.SQS, raise_on_entire_batch_failure=False)
        self._flush = flush

    def process(self) -> list[tuple[Any, ...]]:
        results = super().process()
        collected = [
            (SQSRecord(raw), value) for status, value, raw in results if status == "success"
        ]
        failed = self._flush(collected)
        for at, (status, _, raw) in enumerate(results):
            exc = failed.get(raw["messageId"]) if status == "success" else None
            if exc is not None:
                self.success_messages.remove(raw)
                info = (type(exc), exc, exc.__traceback__)
                results[at] = self.failure_handler(SQSRecord(raw), info)
        return results


def process_batch(
    event: dict[str, Any],
    record_handler: Callable[[SQSRecord], Any],
    context: Any = None,
    processor: BatchProcessor | None = None,
) -> PartialItemFailureResponse:
    """The partial batch response (``ReportBatchItemFailures``) of one SQS event.

    An all-failed batch is answered like any other (every record listed), not raised: the
    caller logs one line for the batch either way.
    """
    return process_partial_response(
        event=event,
        record_handler=record_handler,
        processor=processor or BatchProcessor(EventType.SQS, raise_on_entire_batch_failure=False),
        context=context,
    )
