"""The queue handlers as Lambda runs them: the real ``functions/<name>/facegate_<name>.py``
modules, imported from their code folders, bound to moto, called with SQS events built from
the messages really on the queues (S3 bucket notifications included).

Only the face pipeline is the session's (``FacePipeline`` is replaced while a handler module
is imported, so the module's init does not load the models a second time).
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from facegate_local.stack import LambdaContext
from tests_support import repo_root

from facegate.gallery.format import build_gallery_table, write_gallery
from facegate.settings import get_settings
from facegate.storage.clients import aws_client

REPO = repo_root()
REGION = "us-east-1"


@pytest.fixture(scope="module")
def load_handler(aws, pipeline) -> Iterator[Callable[..., ModuleType]]:
    """``load_handler(name, **settings)``: the handler module of ``functions/<name>``, its
    settings read from ``FACEGATE_*`` variables set from ``settings`` (queue URLs, sizes)."""
    from facegate.pipeline import face_pipeline

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(face_pipeline, "FacePipeline", lambda settings=None, **_: pipeline)

        def load(name: str, **settings: Any) -> ModuleType:
            for key, value in settings.items():
                patch.setenv(f"FACEGATE_{key.upper()}", str(value))
            get_settings.cache_clear()
            path = REPO / "functions" / name / f"facegate_{name}.py"
            spec = importlib.util.spec_from_file_location(f"facegate_{name}_under_test", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module

        yield load
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def invoke() -> Callable[[ModuleType, dict[str, Any], str], list[str]]:
    """``invoke(module, event, function)``: run the module's handler; the message ids of its
    batch item failures."""

    def run(module: ModuleType, event: dict[str, Any], function: str) -> list[str]:
        answer = module.handler(event, LambdaContext(function, REGION))
        assert set(answer) == {"batchItemFailures"}
        return [failure["itemIdentifier"] for failure in answer["batchItemFailures"]]

    return run


@dataclass
class Queue:
    """An SQS queue on moto, and the Lambda event records of what is on it."""

    aws: Any
    url: str
    arn: str

    def record(self, body: str, message_id: str) -> dict[str, Any]:
        """One record of the SQS event Lambda receives, as AWS documents it."""
        return {
            "messageId": message_id,
            "receiptHandle": f"handle-{message_id}",
            "body": body,
            "attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": "1717236000000",
                "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                "ApproximateFirstReceiveTimestamp": "1717236000001",
            },
            "messageAttributes": {},
            "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
            "eventSource": "aws:sqs",
            "eventSourceARN": self.arn,
            "awsRegion": REGION,
        }

    def drain(self) -> list[dict[str, Any]]:
        """Every message now on the queue (deleted from it), as SQS event records."""
        sqs = aws_client("sqs", self.aws)
        records = []
        while got := sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages"):
            for message in got:
                records.append(self.record(message["Body"], message["MessageId"]))
                sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return records

    def notify(self, prefix: str, suffix: str = "") -> None:
        """Send created-object notifications of ``prefix`` keys here, as template.yaml does
        (S3 sends one ``s3:TestEvent`` at once; it is drained)."""
        rules = [{"Name": "prefix", "Value": prefix}]
        rules += [{"Name": "suffix", "Value": suffix}] if suffix else []
        aws_client("s3", self.aws).put_bucket_notification_configuration(
            Bucket=self.aws.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": self.arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": rules}},
                    }
                ]
            },
        )
        assert all("s3:TestEvent" in r["body"] for r in self.drain())


@pytest.fixture(scope="module")
def make_queue(aws) -> Callable[[str], Queue]:
    def make(name: str) -> Queue:
        sqs = aws_client("sqs", aws)
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return Queue(aws, url, attributes["Attributes"]["QueueArn"])

    return make


@pytest.fixture(scope="module")
def gallery(aws, pipeline, faces_dir):
    """galleries/demo/gallery.parquet with person_a, person_b and impostor_1 (the test module's
    ``aws`` stack and the session's pipeline)."""
    from facegate.batch.embedding import gallery_meta

    names = {"person_a": "person_a_1", "person_b": "person_b_1", "impostor_1": "impostor_1"}
    faces = [pipeline.process(faces_dir / f"{n}.jpg").primary for n in names.values()]
    table = build_gallery_table(
        subject_ids=list(names),
        image_keys=[f"{n}.jpg" for n in names.values()],
        face_indices=np.zeros(3, np.int32),
        bboxes=np.array([f.detection.box for f in faces], np.float32),
        det_scores=np.array([f.detection.score for f in faces], np.float32),
        embeddings=np.stack([f.vector for f in faces]),
        meta=gallery_meta(pipeline),
    )
    sink = io.BytesIO()
    write_gallery(table, sink)
    aws_client("s3", aws).put_object(
        Bucket=aws.bucket, Key="galleries/demo/gallery.parquet", Body=sink.getvalue()
    )
