"""S3 and SQS events -> the created objects they are about. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from facegate.batch.archive_chunks import _json_object, is_chunk_message
from facegate.errors import (
    ValidationError,
)
from facegate.storage.objects import ObjectRef


def object_refs(event: Mapping[str, Any]) -> list[ObjectRef]:
    """The created objects an S3 event, or an SQS event of S3 notifications, is about.

    Accepted: S3's direct Lambda event; an SQS event whose bodies are S3 notifications, also
    when they went through SNS first. Skipped: S3's ``s3:TestEvent`` (sent once when the
    notification is configured), records other than ``ObjectCreated:*`` (a delete must
    never trigger embedding), and our own chunk messages (:func:`is_chunk_message`: the
    caller dispatches those to :meth:`Chunk.from_message`). Anything else is a
    :class:`ValidationError`: a poison message that no retry will fix. To fail single
    messages of an SQS batch instead of the whole batch, call it per record:
    ``object_refs({"Records": [record]})``.
    """
    if not isinstance(event, Mapping):
        raise ValidationError("an event must be a JSON object")
    if _is_test_event(event):
        return []
    refs: list[ObjectRef] = []
    for record in _records(event):
        if "s3" in record:
            refs.extend(_s3_record_refs(record))
        elif "body" in record:
            refs.extend(_message_refs(record["body"]))
        else:
            raise ValidationError("record is neither an S3 notification nor an SQS message")
    return refs


def _is_test_event(doc: Mapping[str, Any]) -> bool:
    return doc.get("Event") == "s3:TestEvent"


def _records(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    records = doc.get("Records")
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        raise ValidationError("not an S3 or SQS event: no list of Records")
    return records


def _message_refs(body: Any) -> list[ObjectRef]:
    """An SQS body: an S3 notification, an SNS envelope around one, or our chunk message."""
    if not isinstance(body, str):
        raise ValidationError("SQS message body must be a string")
    if is_chunk_message(body):
        return []
    doc = _json_object(body, "SQS message body")
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        doc = _json_object(doc["Message"], "SNS message")
    if _is_test_event(doc):
        return []
    refs: list[ObjectRef] = []
    for record in _records(doc):
        if "s3" not in record:
            raise ValidationError("SQS message carries a record that is not an S3 notification")
        refs.extend(_s3_record_refs(record))
    return refs


def _s3_record_refs(record: Mapping[str, Any]) -> list[ObjectRef]:
    if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
        return []
    try:
        s3 = record["s3"]
        obj = s3["object"]
        bucket = s3["bucket"]["name"]
        key = unquote_plus(obj["key"])
        size = int(obj.get("size", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError("malformed S3 notification record", detail=repr(record)) from exc
    if not isinstance(bucket, str) or not bucket or not key:
        raise ValidationError("S3 notification without bucket or key", detail=repr(record))
    version = _text(obj.get("versionId"))
    return [
        ObjectRef(
            bucket=bucket,
            key=key,
            version_id=None if version == "null" else version,
            etag=_text(obj.get("eTag")),
            size=size,
        )
    ]


def _text(value: Any) -> str | None:
    """A notification's optional string, unquoted (ETags sometimes come quoted); "" is None."""
    return value.strip('"') or None if isinstance(value, str) else None
