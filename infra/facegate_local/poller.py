"""A local SQS event source mapping: poll a queue, invoke a function, honour its answer.

Like Lambda's: up to ``BatchSize`` messages per invocation, gathered for at most
``MaximumBatchingWindowInSeconds``; the event is the real SQS event payload; with
``ReportBatchItemFailures`` only the failed messages stay on the queue, otherwise an
exception fails the whole batch. Failed messages come back after a short local retry delay
instead of the queue's visibility timeout (minutes on AWS), and the queue's redrive policy
(moto applies it on receive) moves a message to the dead-letter queue after
``maxReceiveCount`` tries. It receives and deletes with the function's role, as the event
source mapping does on AWS.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from facegate_local.stack import LambdaContext

RETRY_DELAY_SECONDS = 2


class QueuePoller(threading.Thread):
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        handler: Callable[[dict[str, Any], Any], Any],
        function_name: str,
        region: str,
        *,
        batch_size: int = 10,
        window: float = 0.0,
        report_failures: bool = True,
        service_sqs: Any = None,
    ) -> None:
        super().__init__(name=f"poll-{function_name}", daemon=True)
        self.sqs, self.queue_url, self.queue_arn = sqs, queue_url, queue_arn
        self.handler, self.function_name, self.region = handler, function_name, region
        self.batch_size, self.window, self.report_failures = batch_size, window, report_failures
        # Shortening a failed message's visibility is the local stack's own shortcut, not a
        # call of the event source mapping: it goes with other keys than the role's.
        self.service_sqs = service_sqs or sqs
        self.stopping = threading.Event()
        self.invocations = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            messages = self._gather()
            if messages:
                self._invoke(messages)

    def stop(self) -> None:
        self.stopping.set()

    def _gather(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.window
        while len(messages) < self.batch_size and not self.stopping.is_set():
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages.extend(got)
            if not got and (messages or time.monotonic() >= deadline):
                break
            if time.monotonic() >= deadline and messages:
                break
        return messages

    def _invoke(self, messages: list[dict[str, Any]]) -> None:
        event = {"Records": [self._record(m) for m in messages]}
        self.invocations += 1
        try:
            answer = self.handler(event, LambdaContext(self.function_name, self.region)) or {}
            failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
            if not self.report_failures and failed:
                failed = {m["MessageId"] for m in messages}
        except Exception:  # the whole batch fails, as on Lambda
            failed = {m["MessageId"] for m in messages}
        for message in messages:
            if message["MessageId"] in failed:
                self.service_sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=RETRY_DELAY_SECONDS,
                )
            else:
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
            "eventID": str(uuid.uuid4()),
        }
