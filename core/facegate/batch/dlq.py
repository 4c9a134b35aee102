"""Dead letters naming a subject: which bodies do, the purge, the read-only look. Torch-free.

The DLQs (``IngestDLQ``, ``JobsDLQ``, ``CompactDLQ`` in template.yaml) keep failed messages
for 14 days, and some of them name people: an S3 notification of
``uploads/<gallery>/<subject>/<photo>``, an archive chunk's ``(path, subject_id)`` members, a
job chunk's rows with their claimed subjects and probe keys. An erasure deletes those and
leaves every other message where it was, at once visible again
(:func:`purge_dead_letters`); a data-subject access export only counts them and leaves every
message where it was (:func:`find_dead_letters`). Both scan the same way.

:func:`body_names_subject` decides one body by its kind, read with the project's own parsers
(:mod:`facegate.batch.messages`, :mod:`facegate.batch.events`,
:func:`~facegate.storage.keys.classify`):

- an S3 notification (direct, or in an SNS envelope): names the subject when one of its
  created objects lies in ``uploads/<g>/<subject>/`` of a scope gallery (a photo, or a file
  the layout refuses or ignores in that folder), or, for the ``api`` scope, under the
  enrolment prefix ``enrolments/<subject>/``. A photo set (``uploads/<g>/<set>.zip``) or a
  job manifest names nobody by its key: what it holds is erased where it is stored;
- a job chunk (``facegate.job_chunk``): a row claims the subject in a scope gallery. The
  whole message goes (its other rows are lost with it: it failed three times already);
- an archive chunk (``facegate.archive_chunk``) of a scope gallery with a member of the
  subject;
- aggregation and re-embedding requests, the compaction function's events (``{"gallery"}``
  by hand, EventBridge's scheduled event): they name no subject and stay;
- anything else (not JSON, an unknown type or version, a message or notification that does
  not validate) is decided conservatively: it names the subject when the id appears in it as
  text (or form-encoded, as S3 writes keys), even inside a longer word.

Only bodies are read, never message attributes (a Lambda DLQ's ``ErrorMessage`` holds no id).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from facegate.batch.events import notification_refs
from facegate.batch.messages import (
    ARCHIVE_CHUNK,
    JOB_AGGREGATE,
    JOB_CHUNK,
    REEMBED,
    AggregateRequest,
    ArchiveChunk,
    JobChunk,
    message_type,
    parse_body,
)
from facegate.batch.processing import logger
from facegate.batch.reembed import ReembedRequest
from facegate.common import check_positive, validate_id
from facegate.errors import StorageError, ValidationError
from facegate.storage.aws_errors import aws_errors
from facegate.storage.keys import (
    DEFAULT_COLLECTION,
    UPLOADS_PREFIX,
    PhotoUpload,
    classify,
    subject_prefix,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        MessageTypeDef,
    )

#: How long a scanned message stays hidden: long enough for the whole scan (a kept message
#: seen twice costs nothing but time), and every kept one is released as soon as it ends.
SCAN_VISIBILITY_SECONDS = 900
#: Long polling asks every SQS server, so an empty answer means an empty queue.
SCAN_WAIT_SECONDS = 1
_BATCH = 10
#: Release failures that mean the message is visible already.
_ALREADY_VISIBLE = frozenset({"MessageNotInflight", "ReceiptHandleIsInvalid"})


def body_names_subject(
    body: str,
    subject_id: str,
    galleries: Set[str] | None,
    api: bool,
    collection: str = DEFAULT_COLLECTION,
) -> bool:
    """Whether a DLQ message body names ``subject_id`` within the scope: ``galleries`` (None:
    every gallery; an empty set: none) and, with ``api``, the enrolled subjects. See the
    module docstring for each kind of message."""
    validate_id(subject_id)
    try:
        return _names(parse_body(body), subject_id, galleries, api, collection)
    except ValidationError:
        return _appears(body, subject_id)


def purge_dead_letters(
    sqs: SQSClient,
    queue_url: str,
    names_subject: Callable[[str], bool],
    *,
    max_messages: int | None = None,
    visibility_seconds: int = SCAN_VISIBILITY_SECONDS,
    wait_seconds: int = SCAN_WAIT_SECONDS,
) -> int:
    """Delete every message of the queue whose body ``names_subject``; the count deleted.

    Messages are received ten at a time, hidden for ``visibility_seconds`` so that the scan
    never sees one twice, until the queue answers empty (or ``max_messages`` were received:
    a bounded scan may leave messages naming the subject for the next one). Those naming the
    subject are deleted batch by batch; all the others are made visible again together when
    the scan ends (``ChangeMessageVisibility`` 0), also when it fails, so that none is
    delayed by the scan. A delete SQS refuses is a :class:`StorageError` (run it again).
    """
    deleted = 0

    def settle(messages: list[MessageTypeDef]) -> list[str]:
        nonlocal deleted
        doomed = [m for m in messages if names_subject(m.get("Body", ""))]
        deleted += _delete(sqs, queue_url, [m["ReceiptHandle"] for m in doomed])
        return [m["MessageId"] for m in doomed]

    _scan(sqs, queue_url, settle, max_messages, visibility_seconds, wait_seconds, "an erasure")
    return deleted


def find_dead_letters(
    sqs: SQSClient,
    queue_url: str,
    names_subject: Callable[[str], bool],
    *,
    max_messages: int | None = None,
    visibility_seconds: int = SCAN_VISIBILITY_SECONDS,
    wait_seconds: int = SCAN_WAIT_SECONDS,
) -> list[str]:
    """The ids of the queue's messages whose body ``names_subject``, in the order received;
    nothing is deleted.

    For a data-subject access export: the scan is :func:`purge_dead_letters`'s (the same
    receive, hiding and bounds), but every message, naming the subject or not, is made
    visible again when it ends, also when it fails. Hiding them meanwhile is what makes the
    scan see each message once; a consumer of the queue (a redrive) waits at most for the
    scan. Ids only, never bodies: a body may hold the person's keys and ids.
    """
    found: dict[str, None] = {}

    def settle(messages: list[MessageTypeDef]) -> list[str]:
        found.update(
            dict.fromkeys(m["MessageId"] for m in messages if names_subject(m.get("Body", "")))
        )
        return []

    _scan(sqs, queue_url, settle, max_messages, visibility_seconds, wait_seconds, "an export")
    return list(found)


def _scan(
    sqs: SQSClient,
    queue_url: str,
    settle: Callable[[list[MessageTypeDef]], list[str]],
    max_messages: int | None,
    visibility_seconds: int,
    wait_seconds: int,
    purpose: str,
) -> None:
    """Receive every message (at most ``max_messages``), hidden for ``visibility_seconds``,
    and hand each batch to ``settle``, which answers the ids it took care of (deleted); all
    the others are released when the scan ends, also when ``settle`` or SQS fails, so that
    no scan leaves a message hidden. ``purpose`` names the scan in the release warning."""
    if max_messages is not None:
        check_positive(max_messages, "max_messages")
    kept: dict[str, str] = {}
    received = 0
    try:
        while max_messages is None or received < max_messages:
            want = _BATCH if max_messages is None else min(_BATCH, max_messages - received)
            with aws_errors("receiving dead letters"):
                answer = sqs.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=want,
                    VisibilityTimeout=visibility_seconds,
                    WaitTimeSeconds=wait_seconds,
                )
            messages = answer.get("Messages", [])
            if not messages:
                break
            received += len(messages)
            # Kept until settled: a failing decision or delete still releases the batch.
            kept.update({m["MessageId"]: m["ReceiptHandle"] for m in messages})
            for message_id in settle(messages):
                del kept[message_id]
    finally:
        _release(sqs, queue_url, list(kept.values()), purpose)


# --------------------------------------------------------------------------------------
# Deciding a body
# --------------------------------------------------------------------------------------


def _names(
    doc: dict[str, Any], subject: str, galleries: Set[str] | None, api: bool, collection: str
) -> bool:
    """The decision for a body that is a JSON object; :class:`ValidationError` when it is
    not one of the kinds FaceGate sends (the caller then falls back to the text)."""

    def covers(gallery: str) -> bool:
        return galleries is None or gallery in galleries

    kind = message_type(doc)
    if kind == JOB_CHUNK:
        rows = JobChunk.from_message(doc).rows
        return any(r.claimed_subject == subject and covers(r.gallery) for r in rows)
    if kind == ARCHIVE_CHUNK:
        chunk = ArchiveChunk.from_message(doc)
        return covers(chunk.gallery) and any(member == subject for _, member in chunk.members)
    if kind == JOB_AGGREGATE:
        AggregateRequest.from_message(doc)
        return False
    if kind == REEMBED:
        ReembedRequest.from_message(doc)
        return False
    if kind is not None:
        raise ValidationError(f"not a message FaceGate sends: {kind!r}")
    if _is_compaction_event(doc):
        return False
    return any(
        _key_names(ref.key, subject, covers, api, collection) for ref in notification_refs(doc)
    )


def _key_names(
    key: str, subject: str, covers: Callable[[str], bool], api: bool, collection: str
) -> bool:
    """Whether an object key lies in the subject's folder of a scope gallery's uploads, or
    (``api``) among the subject's enrolment photos."""
    if api and key.startswith(subject_prefix(subject, collection)):
        return True
    upload = classify(key)
    if isinstance(upload, PhotoUpload):
        return upload.subject_id == subject and covers(upload.gallery)
    # A file the layout refuses or ignores (nested too deep, hidden) in the subject's folder.
    parts = key.removeprefix(UPLOADS_PREFIX).split("/")
    return (
        key.startswith(UPLOADS_PREFIX)
        and len(parts) > 2
        and parts[1] == subject
        and covers(parts[0])
    )


def _is_compaction_event(doc: Mapping[str, Any]) -> bool:
    """The compaction function's events: ``{"gallery": <name>}`` or EventBridge's schedule."""
    if set(doc) == {"gallery"} and isinstance(doc["gallery"], str):
        return True
    return doc.get("source") == "aws.events" and doc.get("detail-type") == "Scheduled Event"


def _appears(body: Any, subject: str) -> bool:
    """The conservative reading of a body no parser accepts: the id anywhere in its text."""
    text = body if isinstance(body, str) else repr(body)
    return subject in text or quote_plus(subject) in text


# --------------------------------------------------------------------------------------
# SQS
# --------------------------------------------------------------------------------------


def _delete(sqs: SQSClient, queue_url: str, handles: list[str]) -> int:
    """Delete these messages (at most ten); every refusal is a :class:`StorageError`."""
    if not handles:
        return 0
    entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
        {"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)
    ]
    with aws_errors("deleting dead letters"):
        answer = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
    failed = answer.get("Failed", [])
    if failed:
        raise StorageError(
            f"{len(failed)} dead letters naming the subject were not deleted",
            detail=str(failed[0].get("Code")),
        )
    return len(handles)


def _release(sqs: SQSClient, queue_url: str, handles: list[str], purpose: str) -> None:
    """Make kept messages visible now. A release SQS refuses only delays that message until
    its scan visibility ends, so it is logged (a count and a code), not raised; ``purpose``
    says which scan (an erasure's, an export's)."""
    refused: list[str] = []
    for start in range(0, len(handles), _BATCH):
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(handles[start : start + _BATCH])
        ]
        with aws_errors("releasing dead letters"):
            answer = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        refused += [
            str(f.get("Code"))
            for f in answer.get("Failed", [])
            if f.get("Code") not in _ALREADY_VISIBLE
        ]
    if refused:
        logger.warning(
            f"dead letters not released after {purpose} scan",
            extra={"count": len(refused), "code": refused[0]},
        )
