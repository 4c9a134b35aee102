"""Every gallery object a job writes is encrypted and typed as Parquet, whichever job wrote it.

The embedding job used to write its parts and rejects with a bare ``put_object`` (neither
``ServerSideEncryption`` nor ``ContentType``), bypassing the gallery store; these tests run
the real job on moto with a real photo and its real S3 notification, then read the objects'
headers back with a raw ``head_object``.
"""

from __future__ import annotations

from typing import Any

from facegate.batch.ingest_job import EmbedJob, JobConfig
from facegate.batch.reembed import get_status, put_status
from facegate.storage.clients import aws_client
from facegate.storage.keys import reembed_status_key
from facegate.storage.ledger import IngestLedger
from facegate.storage.objects import JSON_TYPE, PARQUET_TYPE


def sqs_event(fresh_aws, bodies: list[str]) -> dict[str, Any]:
    """The SQS event Lambda would get for these message bodies."""
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": f"handle-{i}",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1717236000000"},
                "messageAttributes": {},
                "md5OfBody": "0" * 32,
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{fresh_aws.settings.aws_region}:123456789012:q",
                "awsRegion": fresh_aws.settings.aws_region,
            }
            for i, body in enumerate(bodies)
        ]
    }


def uploaded(fresh_aws, uploads: dict[str, bytes]) -> list[str]:
    """Upload through a real bucket notification to a queue; the notification bodies S3 sent."""
    sqs = aws_client("sqs", fresh_aws.settings)
    url = sqs.create_queue(QueueName="ingest")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    fresh_aws.s3.put_bucket_notification_configuration(
        Bucket=fresh_aws.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "uploads/"}]}},
                }
            ]
        },
    )
    for key, body in uploads.items():
        fresh_aws.s3.put_object(Bucket=fresh_aws.bucket, Key=key, Body=body)
    bodies = []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in got:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return [b for b in bodies if "s3:TestEvent" not in b]


def test_the_embedding_job_writes_encrypted_typed_parts_and_rejects(fresh_aws, pipeline, faces_dir):
    bodies = uploaded(
        fresh_aws,
        {
            "uploads/team/alice/a1.jpg": (faces_dir / "person_a_1.jpg").read_bytes(),
            "uploads/team/bob/notes.jpg": b"shopping list: milk, eggs\n",
        },
    )
    assert len(bodies) == 2
    config = JobConfig(
        bucket=fresh_aws.bucket, queue_url=None, chunk_size=50, max_photo_bytes=15 * 1024 * 1024
    )
    ledger = IngestLedger(fresh_aws.dynamodb, fresh_aws.table)
    sqs = aws_client("sqs", fresh_aws.settings)
    job = EmbedJob(pipeline, fresh_aws.s3, sqs, ledger, config)

    assert job.handle(sqs_event(fresh_aws, bodies)) == {"batchItemFailures": []}

    listed = fresh_aws.s3.list_objects_v2(Bucket=fresh_aws.bucket, Prefix="galleries/team/")
    written = sorted(o["Key"] for o in listed.get("Contents", []) if "/inbox/" not in o["Key"])
    assert [k.split("/")[2] for k in written] == ["parts", "rejects"]
    (marker,) = [o["Key"] for o in listed["Contents"] if "/inbox/" in o["Key"]]
    assert marker == written[0].replace("/parts/", "/inbox/").removesuffix(".parquet")
    for key in written:
        head = fresh_aws.s3.head_object(Bucket=fresh_aws.bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", key
        assert head.get("ContentType") == PARQUET_TYPE, key


def test_reembed_status_is_an_encrypted_json_document(fresh_aws):
    put_status(fresh_aws.s3, fresh_aws.bucket, "g2", {"status": "queued"})
    head = fresh_aws.s3.head_object(Bucket=fresh_aws.bucket, Key=reembed_status_key("g2"))
    assert (head["ServerSideEncryption"], head["ContentType"]) == ("AES256", JSON_TYPE)
    assert get_status(fresh_aws.s3, fresh_aws.bucket, "g2") == {"status": "queued"}
