"""S3 notifications -> the created objects they name, via Powertools event classes. Torch-free.

An SQS body that is not one of our typed messages (:mod:`facegate.batch.messages`) is an S3
event notification, sent to the queue by S3 directly or through SNS. Reading goes through
Powertools' data classes (:class:`S3Event`, :class:`SNSMessage`) rather than dict walking;
only what they leave open is checked here: that the document is a notification at all, and
that a record names a bucket and a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
from aws_lambda_powertools.utilities.data_classes.sns_event import SNSMessage

from facegate.batch.messages import parse_body
from facegate.common import iso_micros, parse_instant
from facegate.errors import ValidationError
from facegate.storage.objects import ObjectRef


def notification_refs(doc: Mapping[str, Any]) -> list[ObjectRef]:
    """The created objects an S3 notification (a parsed SQS body, or S3's direct Lambda
    event) is about.

    Unwrapped first: an SNS envelope (``"Type": "Notification"``). Skipped: S3's
    ``s3:TestEvent`` (sent once when the notification is configured) and records other than
    ``ObjectCreated:*`` (a delete must never trigger embedding). Anything else is a
    :class:`ValidationError`: a poison message that no retry will fix.
    """
    if doc.get("Type") == "Notification":
        doc = parse_body(SNSMessage(dict(doc)).message, "SNS message")
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        raise ValidationError("not an S3 notification: no list of Records")
    refs: list[ObjectRef] = []
    for record in S3Event(dict(doc)).records:
        if "s3" not in record:
            raise ValidationError("a notification record that is not from S3")
        if str(record.get("eventName", "")).startswith("ObjectCreated:"):
            refs.append(_object_ref(record))
    return refs


def _object_ref(record: S3EventRecord) -> ObjectRef:
    """``S3Object.key`` is as S3 sent it, form-encoded: decoded here, as ``S3Event.object_key``
    does for a first record."""
    try:
        bucket = record.s3.bucket.name
        obj = record.s3.get_object
        key = unquote_plus(obj.key)
        size = obj.size if "size" in obj else 0
        version = _text(obj.version_id)
        etag = _text(obj.etag)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValidationError(
            "malformed S3 notification record", detail=repr(record.raw_event)
        ) from exc
    if not isinstance(bucket, str) or not bucket or not key:
        raise ValidationError(
            "S3 notification without bucket or key", detail=repr(record.raw_event)
        )
    return ObjectRef(
        bucket=bucket,
        key=key,
        version_id=None if version == "null" else version,
        etag=etag,
        size=size,
        uploaded_at=_event_time(record),
    )


def _event_time(record: S3EventRecord) -> str | None:
    """The record's ``eventTime`` as microsecond UTC; None when absent. A malformed one is a
    poison message: its rows could not be dated against an erasure."""
    raw = record.get("eventTime")
    if raw is None:
        return None
    return iso_micros(parse_instant(raw, "the notification's eventTime"))


def _text(value: Any) -> str | None:
    """A notification's optional string, unquoted (ETags sometimes come quoted); "" is None."""
    return value.strip('"') or None if isinstance(value, str) else None
