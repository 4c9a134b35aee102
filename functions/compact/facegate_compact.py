"""Lambda entry point of gallery compaction: parts -> ``galleries/<g>/gallery.parquet``.

Invoked hourly by an EventBridge schedule (``CompactSchedule`` in template.yaml), it queues
one compaction per gallery that has parts on ``CompactQueue`` (``FACEGATE_COMPACT_QUEUE_URL``;
without one it compacts them all itself, one after another), and takes that queue's messages
one per invocation: galleries compact in parallel, each in an invocation of its own
(:mod:`facegate.batch.gallery_work`). Compaction is incremental (only the parts new since the
last run are read, :meth:`GalleryStore.compact`). A gallery left with at least
``FACEGATE_ANN_MIN_ROWS`` rows gets its ANN index build queued for the embedding function.
Invoked by hand with ``{"gallery": "<name>"}``, it compacts that one gallery in the call.
Rows of deleted subjects are dropped using the tombstones of the subjects table. A gallery of
any model compacts (one being re-embedded for an upgrade, an old one still serving), but its
parts must all be of one model: see :mod:`facegate.gallery.compaction`.

A zip function on the light layer (layers/light): it imports nothing that needs torch, and
tests/unit/test_layer.py imports it with only the layer and the Lambda runtime available.

One gallery's failure does not stop the others: on the queue a storage failure fails its
message (SQS retries it, then parks it in ``CompactDLQ``) and a permanent one (parts of mixed
models) is logged and dropped; in one invocation it is logged and returned under ``failed``.
Either way the next scheduled run tries again. The
tombstones are read once per invocation, before any gallery, and an invocation that cannot
read them fails as a whole: compacting without them would bring deleted subjects back.

A scheduled run then sweeps orphaned enrolment photos (:mod:`facegate.storage.orphans`:
photos no face item references, left by an enrolment killed between its photo and its
items, older than ``FACEGATE_ORPHAN_PHOTO_MIN_AGE_MINUTES``), answered and logged as counts
only (keys name subjects). A manual ``{"gallery": ...}`` run does not sweep. The sweep stops
before a subject when the invocation is about to time out; a failure of it is logged by its
code and leaves the compaction's answer as it is: the next hour sweeps again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from facegate.batch.gallery_work import CompactGallery, queue_compactions, queue_index_build
from facegate.batch.processing import discard, is_retryable, process_batch
from facegate.common import validate_id
from facegate.errors import FaceGateError, ValidationError
from facegate.settings import get_settings
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.keys import GALLERY_PREFIX, parts_prefix
from facegate.storage.orphans import OrphanPhotoSweeper
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones

logger = Logger(service="facegate")
settings = get_settings()
s3 = aws_client("s3", settings)
sqs = aws_client("sqs", settings)
store = GalleryStore(s3, settings.bucket)
tombstones = Tombstones.from_settings(settings)
orphans = OrphanPhotoSweeper(
    PhotoStore(s3, settings.bucket),
    SubjectStore.from_settings(settings),
    min_age=timedelta(minutes=settings.orphan_photo_min_age_minutes),
)
#: Stop sweeping (before the next subject) when less than this is left of the invocation:
#: enough to answer, so a long sweep never turns a compaction that worked into a timeout.
SWEEP_MARGIN_MS = 10_000


def galleries_with_parts() -> list[str]:
    """Names of the galleries under ``galleries/`` that have at least one part, sorted.

    One listing of ``galleries/`` (the storage layer follows its pages) gives every gallery
    and its parts at once, rather than one listing per gallery. A folder whose name is not a
    valid gallery id was not written by FaceGate and is skipped with a warning.
    """
    names: set[str] = set()
    skipped: set[str] = set()
    for key in store.objects.list_keys(GALLERY_PREFIX):
        name = key[len(GALLERY_PREFIX) :].partition("/")[0]
        if name in names or name in skipped:
            continue
        try:
            validate_id(name, "gallery")
        except ValidationError:
            logger.warning("skipping a prefix that is not a gallery", extra={"prefix": name})
            skipped.add(name)
            continue
        if key.startswith(parts_prefix(name)) and key.endswith(".parquet"):
            names.add(name)
    return sorted(names)


def requested_gallery(event: Any) -> str | None:
    """The gallery a manual invocation names, or None (a schedule: every gallery)."""
    if isinstance(event, dict) and "gallery" in event:
        return validate_id(event["gallery"], "gallery")
    return None


def compact_one(name: str, deleted: Any) -> dict[str, Any]:
    """One gallery compacted (any model's: one being re-embedded for an upgrade, an old one
    still serving; only parts of different models within a gallery are refused), and its
    index build queued when it is large enough and its base was rewritten."""
    report = store.compact(name, erasures=deleted)
    logger.info("compacted", extra=report.to_dict())
    # An index covers the base: an incremental run (only the delta changed) keeps it serving.
    if report.rows_out >= settings.ann_min_rows and report.mode != "incremental":
        queue_index_build(sqs, settings.ingest_queue_url, name, settings.ann_min_rows)
        logger.info("index build queued", extra={"gallery": name, "rows": report.rows_out})
    return report.to_dict()


def compact(event: Any) -> dict[str, Any]:
    """Compact the requested gallery, or queue (else compact) every gallery with parts; one
    entry per gallery. (:func:`handler` adds the orphan sweep of a scheduled run.)"""
    named = requested_gallery(event)
    names = [named] if named is not None else galleries_with_parts()
    if named is None and settings.compact_queue_url:
        queued = queue_compactions(sqs, settings.compact_queue_url, names)
        logger.info("compactions queued", extra={"galleries": queued})
        return {"queued": names, "compacted": [], "failed": []}
    deleted = tombstones.all()
    logger.info(
        "compacting",
        extra={"galleries": names, "tombstones": len(deleted.times), "model_id": settings.model_id},
    )
    compacted: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for name in names:
        try:
            compacted.append(compact_one(name, deleted))
        except FaceGateError as exc:
            # The code only: a message can name what it failed on (a part, a key).
            logger.error(
                "compaction failed",
                extra={"gallery": name, "code": exc.code, "error_type": type(exc).__name__},
            )
            failed.append({"gallery": name, "error": exc.to_dict()})
    return {"queued": [], "compacted": compacted, "failed": failed}


def compact_record(record: SQSRecord) -> None:
    """One :class:`CompactGallery` of the compaction queue; a storage failure fails the
    record (SQS retries it), a permanent one is logged and dropped (the next hour retries)."""
    try:
        compact_one(CompactGallery.from_message(record.body).gallery, tombstones.all())
    except FaceGateError as exc:
        if is_retryable(exc):
            raise
        discard(record, exc, "compact")


def sweep_orphans(context: LambdaContext) -> dict[str, Any]:
    """Sweep orphaned enrolment photos until done or nearly out of time; counts only, in the
    answer and the log. A failure is one error code: its message could name a key."""
    try:
        swept = orphans.sweep(
            should_stop=lambda: context.get_remaining_time_in_millis() < SWEEP_MARGIN_MS
        )
    except FaceGateError as exc:
        logger.error(
            "orphan sweep failed", extra={"code": exc.code, "error_type": type(exc).__name__}
        )
        return {"error": {"code": exc.code}}
    logger.info("swept orphaned enrolment photos", extra=swept.to_dict())
    return swept.to_dict()


# Never the event, whatever POWERTOOLS_LOGGER_LOG_EVENT says: events can carry photo keys
# (which name subjects), subject ids or API keys.
@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Compaction (queued, or here), then (a scheduled run only) the orphan sweep:
    ``orphan_photos`` holds its counts, None on a manual ``{"gallery": ...}`` run. The
    compaction queue's messages get a partial batch response."""
    if isinstance(event, dict) and "Records" in event:
        return dict(process_batch(event, compact_record, context))
    answer: dict[str, Any] = dict(compact(event))
    scheduled = requested_gallery(event) is None
    answer["orphan_photos"] = sweep_orphans(context) if scheduled else None
    return answer
