"""Erasure: one person out of every store FaceGate writes, in one scope, with a receipt.

A person is erased within a scope (:mod:`facegate.storage.tombstones`): the enrolled subjects
(``api``, ``DELETE /subjects/{id}``) or one gallery (``gallery:<g>``,
``DELETE /galleries/{g}/subjects/{id}``); the same id elsewhere is someone else. The order is
what makes the erasure hold against work in flight:

1. The tombstone is recorded first (scope, keyed hash of the id, time). From then on every
   part written from a photo uploaded before it drops the person's rows: compaction, the
   embedding job before and after it writes a part, re-embedding.
2. Enrolment (``api``): photos (every version) and DynamoDB items, under the deletion fence
   of :class:`~facegate.service.faces.FaceService`.
3. Each gallery of the scope (the gallery itself, and every gallery re-embedded from it,
   which holds the same people under another model; for ``api``, those re-embedded from the
   enrolled subjects): gallery parts, rejects tables and ``gallery.parquet`` rewritten
   without the person, every older version destroyed; then, for a gallery's own uploads,
   ``uploads/<g>/<id>/`` destroyed, zip photo sets rewritten without the person's members (or
   destroyed when nothing else is left) and their CSV manifests without the person's rows.
4. Verification jobs of those galleries: manifest rows, probe photos, result rows
   (:mod:`facegate.batch.erase_jobs`).
5. Dead-letter queues: every message that names the person (:mod:`facegate.batch.dlq`).
6. This process's gallery cache; every other warm function revalidates ``gallery.parquet``
   by ETag on each request, and the rewrite gave it a new one.

The receipt lists every object, table and queue the person was removed from, with counts, and
what remains by design. It names the person's keys: it is the caller's answer, never a log.

A gallery erasure that would scan more object versions than the deployment answers inline
(``Settings.erasure_inline_max_objects``) runs as a job instead (:meth:`Eraser.submit`): an
:class:`ErasureRequest` on the jobs queue, run by the jobs worker (:meth:`Eraser.run`), its
state and then its receipt in ``erasures/<id>.json`` (encrypted like every object, expiring
with the jobs). The tombstone is recorded before the request is queued, so from the moment
the API answers 202 no part written from an older photo holds the person.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

import pyarrow as pa
import pyarrow.compute as pc

from facegate.batch.dlq import body_names_subject, purge_dead_letters
from facegate.batch.erase_jobs import erase_from_jobs
from facegate.batch.messages import ERASURE, Message
from facegate.batch.scrub_uploads import rewrite_archive, rewrite_manifest_csv
from facegate.common import utc_now, validate_id
from facegate.errors import (
    FaceGateError,
    ObjectNotFoundError,
    StorageError,
    UnknownErasureError,
    UnknownGalleryError,
)
from facegate.gallery.cache import GalleryCache
from facegate.storage import keys as layout
from facegate.storage.aws_errors import aws_errors
from facegate.storage.galleries import GalleryStore
from facegate.storage.objects import JSON_TYPE, ObjectInfo, ObjectStore
from facegate.storage.photos import PhotoStore
from facegate.storage.scrub import Scrubbed, erase_prefix, rewrite_table
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import API_SCOPE, Deletion, Tombstones, check_scope

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

logger = logging.getLogger("facegate.service")

#: Days DynamoDB point-in-time recovery keeps a deleted item restorable (AWS's window).
PITR_DAYS = 35

#: What an enrolment erasure reports (:meth:`FaceService.delete_subject` runs it inside the
#: deletion fence and hands the entries here).
EnrolmentEraser = Callable[[str], list["Removed"]]


@dataclass(frozen=True)
class Removed:
    """One place the person was removed from: a key (or prefix) of the bucket, a table, a
    queue or a cache. ``versions_deleted``: object versions destroyed for good;
    ``rows_removed``: rows, members, items or messages of the person taken out."""

    store: str
    kind: str
    key: str
    versions_deleted: int = 0
    rows_removed: int = 0
    rewritten: bool = False

    @classmethod
    def from_scrub(cls, scrubbed: Scrubbed) -> Removed:
        return cls(
            "s3",
            scrubbed.kind,
            scrubbed.key,
            scrubbed.versions_deleted,
            scrubbed.rows_removed,
            scrubbed.rewritten,
        )


@dataclass
class Receipt:
    """What one erasure did: ``removed`` in the order it happened, ``remaining`` what it left
    and why (by design, or for the caller to act on)."""

    subject_id: str
    scope: str
    erased_at: str
    galleries: list[str]
    removed: list[Removed] = field(default_factory=list)
    remaining: list[dict[str, Any]] = field(default_factory=list)

    def totals(self) -> dict[str, dict[str, int]]:
        """Per kind: objects (or tables, queues) touched, versions destroyed, rows removed."""
        out: dict[str, dict[str, int]] = {}
        for entry in self.removed:
            total = out.setdefault(
                entry.kind, {"objects": 0, "versions_deleted": 0, "rows_removed": 0}
            )
            total["objects"] += 1
            total["versions_deleted"] += entry.versions_deleted
            total["rows_removed"] += entry.rows_removed
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject_id": self.subject_id,
            "scope": self.scope,
            "erased_at": self.erased_at,
            "found": bool(self.removed),
            "galleries": self.galleries,
            "removed": [asdict(r) for r in self.removed],
            "totals": self.totals(),
            "remaining": self.remaining,
        }


@dataclass(frozen=True)
class ErasureRequest(Message):
    """Erase ``subject_id`` in ``scope`` as a job; a :data:`~facegate.batch.messages.ERASURE`
    message. Its body names the person, as the request did: a dead-lettered one is found and
    deleted by the next erasure of them."""

    MESSAGE_TYPE: ClassVar[str] = ERASURE

    erasure_id: str
    subject_id: str
    scope: str

    def __post_init__(self) -> None:
        validate_id(self.erasure_id, "erasure_id")
        validate_id(self.subject_id)
        check_scope(self.scope)

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(doc.get("erasure_id", ""), doc.get("subject_id", ""), doc.get("scope", ""))


class Eraser:
    """Runs erasures over the bucket, the table and the dead-letter queues."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        tombstones: Tombstones,
        *,
        sqs: SQSClient | None = None,
        dead_letter_queues: Sequence[str] = (),
        cache: GalleryCache | None = None,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.objects = ObjectStore(s3, bucket)
        self.galleries = GalleryStore(s3, bucket)
        self.tombstones = tombstones
        self.sqs = sqs
        self.dead_letter_queues = [q for q in dead_letter_queues if q]
        self.cache = cache

    def erase(
        self, subject_id: str, scope: str, enrolment: EnrolmentEraser | None = None
    ) -> Receipt:
        """Erase ``subject_id`` in ``scope`` (see the module docstring); ``enrolment`` removes
        an enrolled subject's photos and items once the tombstone is recorded (``api``).
        :class:`UnknownGalleryError` for a gallery FaceGate holds nothing of (a typo must not
        look like a done erasure). Safe to run again: what was removed stays removed, and a
        second run finds nothing."""
        validate_id(subject_id)
        scope = check_scope(scope)
        galleries = self.galleries_in_scope(scope)
        erased_at = self.tombstones.record(scope, subject_id)
        receipt = Receipt(subject_id, scope, erased_at, galleries)
        if enrolment is not None:
            receipt.removed.extend(enrolment(subject_id))
        for gallery in galleries:
            self._erase_gallery(subject_id, gallery, receipt)
        if scope != API_SCOPE:
            self._erase_uploads(subject_id, scope.removeprefix("gallery:"), receipt)
        if galleries:
            jobs = erase_from_jobs(self.s3, self.bucket, subject_id, set(galleries))
            receipt.removed.extend(Removed.from_scrub(s) for s in jobs.scrubbed)
            receipt.remaining.extend(
                {"store": "s3", "kind": r.kind, "key": r.key, "reason": r.reason}
                for r in jobs.remaining
            )
        self._purge_dead_letters(subject_id, set(galleries), scope == API_SCOPE, receipt)
        self._drop_cached(galleries, receipt)
        receipt.remaining.extend(self._by_design(scope))
        return receipt

    # -- as a job ---------------------------------------------------------------------------

    def objects_in_scope(self, scope: str) -> int:
        """How many object versions an erasure in ``scope`` lists and may read: its galleries'
        tables and, for a gallery, its uploads (one listing each; jobs and results, shared by
        every gallery, are not counted). What decides whether it is answered inline."""
        galleries = self.galleries_in_scope(scope)
        count = sum(len(self.objects.versions(layout.gallery_prefix(g))) for g in galleries)
        if scope != API_SCOPE:
            own = scope.removeprefix("gallery:")
            count += len(self.objects.versions(f"{layout.UPLOADS_PREFIX}{own}/"))
        return count

    def submit(self, subject_id: str, scope: str, queue_url: str | None) -> dict[str, Any]:
        """Record the tombstone, then queue the erasure for the jobs worker; returns the
        ``queued`` state (``GET /erasures/{erasure_id}`` follows it)."""
        if self.sqs is None or not queue_url:
            raise StorageError("no jobs queue configured (FACEGATE_JOBS_QUEUE_URL)")
        request = ErasureRequest(uuid.uuid4().hex, validate_id(subject_id), check_scope(scope))
        self.galleries_in_scope(request.scope)  # an unknown gallery is refused before anything
        erased_at = self.tombstones.record(request.scope, subject_id)
        status = {
            "erasure_id": request.erasure_id,
            "status": "queued",
            "scope": request.scope,
            "erased_at": erased_at,
            "queued_at": utc_now(),
        }
        self._put_status(request.erasure_id, status)
        with aws_errors("queueing the erasure"):
            self.sqs.send_message(QueueUrl=queue_url, MessageBody=request.to_message())
        return status

    def run(self, request: ErasureRequest) -> Receipt | None:
        """The jobs worker's side: the erasure, then its receipt as the request's state. A
        permanent failure is recorded there (and returns None); a storage failure raises, so
        the message is retried (what was removed stays removed)."""
        try:
            receipt = self.erase(request.subject_id, request.scope)
        except FaceGateError as exc:
            if isinstance(exc, StorageError):
                raise
            failed = {"erasure_id": request.erasure_id, "status": "failed", "scope": request.scope}
            self._put_status(request.erasure_id, failed | {"error": exc.to_dict()})
            return None
        done = {"erasure_id": request.erasure_id, "status": "done", "finished_at": utc_now()}
        self._put_status(request.erasure_id, done | {"receipt": receipt.to_dict()})
        return receipt

    def status(self, erasure_id: str) -> dict[str, Any]:
        """``queued``, then ``done`` with the receipt or ``failed`` with the error."""
        try:
            found = self.objects.get(layout.erasure_status_key(erasure_id))
        except ObjectNotFoundError as exc:
            raise UnknownErasureError(f"no erasure {erasure_id!r}") from exc
        return _json(found.body)

    def _put_status(self, erasure_id: str, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.objects.put(layout.erasure_status_key(erasure_id), body, content_type=JSON_TYPE)

    # -- scope -----------------------------------------------------------------------------

    def galleries_in_scope(self, scope: str) -> list[str]:
        """The galleries whose rows are the scope's subjects: a gallery's own, and every
        gallery re-embedded from one of them (``reembed/<target>.json`` names its source),
        transitively. :class:`UnknownGalleryError` for a gallery with nothing under
        ``galleries/`` or ``uploads/``."""
        sources = self._reembed_sources()
        found: list[str] = []
        if scope != API_SCOPE:
            own = scope.removeprefix("gallery:")
            if not (
                self.objects.versions(layout.gallery_prefix(own))
                or self.objects.versions(f"{layout.UPLOADS_PREFIX}{own}/")
            ):
                raise UnknownGalleryError(f"gallery {own!r} not found")
            found.append(own)
        source = None if scope == API_SCOPE else found[0]
        frontier = [source]
        while frontier:
            origin = frontier.pop()
            for target, of in sorted(sources.items()):
                if of == origin and target not in found:
                    found.append(target)
                    frontier.append(target)
        return found

    def _reembed_sources(self) -> dict[str, str | None]:
        """``target -> source gallery`` (None: the enrolled subjects) of every re-embedding."""
        out: dict[str, str | None] = {}
        for key in self.objects.list_keys(layout.REEMBED_PREFIX):
            target = key.removeprefix(layout.REEMBED_PREFIX).removesuffix(".json")
            try:
                doc = _json(self.objects.get(key).body)
            except ObjectNotFoundError:
                continue
            source = doc.get("source")
            if isinstance(source, str):
                out[target] = None if source == "subjects" else source
        return out

    # -- galleries ---------------------------------------------------------------------------

    def _erase_gallery(self, subject_id: str, gallery: str, receipt: Receipt) -> None:
        """Parts, rejects and ``gallery.parquet`` of one gallery, every key that ever existed
        (a part whose current version is a delete marker may still have old versions)."""
        uploads = f"{layout.UPLOADS_PREFIX}{gallery}/{subject_id}/"
        keys = sorted({k for k, _ in self.objects.versions(layout.gallery_prefix(gallery))})
        for key in keys:
            if not key.endswith(".parquet"):
                continue
            if key.startswith(layout.rejects_prefix(gallery)):
                kind = "gallery_rejects"
                drop = _rejects_of(subject_id, uploads)
            else:
                kind = "gallery" if key == layout.gallery_key(gallery) else "gallery_part"
                drop = _rows_of(subject_id)
            done = rewrite_table(self.objects, key, kind, drop, self._writer(key))
            if done is not None:
                receipt.removed.append(Removed.from_scrub(done))

    def _writer(self, key: str) -> Callable[[pa.Table], ObjectInfo]:
        def write(table: pa.Table) -> ObjectInfo:
            return self.galleries.write_table(key, table)

        return write

    def _erase_uploads(self, subject_id: str, gallery: str, receipt: Receipt) -> None:
        """The person's single-photo uploads, then the photo sets (before their manifests:
        a set's manifest says which members are the person's)."""
        photos = erase_prefix(
            self.objects, f"{layout.UPLOADS_PREFIX}{gallery}/{subject_id}/", "upload_photos"
        )
        if photos is not None:
            receipt.removed.append(Removed.from_scrub(photos))
        prefix = f"{layout.UPLOADS_PREFIX}{gallery}/"
        keys = sorted({k for k, _ in self.objects.versions(prefix)})
        for key in (k for k in keys if k.endswith(".zip") and "/" not in k[len(prefix) :]):
            manifest = self._current_manifest(key.removesuffix(".zip") + ".csv")
            done = rewrite_archive(self.objects, key, subject_id, manifest)
            if done is not None:
                receipt.removed.append(Removed.from_scrub(done))
        for key in (k for k in keys if k.endswith(".csv") and "/" not in k[len(prefix) :]):
            done = rewrite_manifest_csv(self.objects, key, subject_id)
            if done is not None:
                receipt.removed.append(Removed.from_scrub(done))

    def _current_manifest(self, key: str) -> bytes | None:
        try:
            return self.objects.get(key).body
        except ObjectNotFoundError:
            return None

    # -- queues and caches -----------------------------------------------------------------

    def _purge_dead_letters(
        self, subject_id: str, galleries: set[str], api: bool, receipt: Receipt
    ) -> None:
        if self.sqs is None:
            return
        for url in self.dead_letter_queues:
            deleted = purge_dead_letters(
                self.sqs,
                url,
                lambda body: body_names_subject(body, subject_id, galleries, api),
            )
            if deleted:
                name = url.rstrip("/").rsplit("/", 1)[-1]
                receipt.removed.append(Removed("sqs", "dead_letters", name, 0, deleted))

    def _drop_cached(self, galleries: Sequence[str], receipt: Receipt) -> None:
        if self.cache is None:
            return
        for gallery in galleries:
            key = layout.gallery_key(gallery)
            if self.cache.invalidate(self.bucket, key):
                receipt.removed.append(Removed("cache", "gallery_cache", key, 0, 1))

    def _by_design(self, scope: str) -> list[dict[str, Any]]:
        """What stays after any erasure, and until when."""
        days = self.tombstones.retention_days
        left = [
            {
                "store": "dynamodb",
                "kind": "tombstone",
                "reason": "a keyed hash of the scope and id, and the erasure time, so that "
                "nothing uploaded before the erasure brings the person back"
                + (f"; expires {days} days after the erasure" if days else "; kept"),
            },
        ]
        if scope == API_SCOPE:
            left.append(
                {
                    "store": "dynamodb",
                    "kind": "point_in_time_recovery",
                    "reason": "the table's continuous backups can restore deleted items for "
                    f"{PITR_DAYS} days; a restore must be followed by erasing again",
                }
            )
        return left


_Mask = Callable[[pa.Table], "pa.Array[pa.BooleanScalar]"]


def _rows_of(subject_id: str) -> _Mask:
    def drop(table: pa.Table) -> pa.Array[pa.BooleanScalar]:
        return pc.equal(table["subject_id"].combine_chunks(), pa.scalar(subject_id))

    return drop


def _rejects_of(subject_id: str, uploads: str) -> _Mask:
    """A reject is the person's when it says so, or when its photo lies in their upload
    folder (rejects written before the table named subjects)."""

    def drop(table: pa.Table) -> pa.Array[pa.BooleanScalar]:
        mask: pa.Array[pa.BooleanScalar] = pc.starts_with(
            table["image_key"].combine_chunks(), uploads
        )
        if "subject_id" in table.column_names:
            equal = pc.equal(table["subject_id"].combine_chunks(), pa.scalar(subject_id))
            named = cast("pa.Array[pa.BooleanScalar]", pc.fill_null(equal, pa.scalar(False)))
            mask = pc.or_(mask, named)
        return mask

    return drop


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


# --------------------------------------------------------------------------------------
# Enrolled subjects
# --------------------------------------------------------------------------------------


def enrolment_eraser(subjects: SubjectStore, photos: PhotoStore) -> EnrolmentEraser:
    """Every version of the subject's enrolment photos, then its items (photos first: an
    interrupted erasure leaves a subject that still exists and can be erased again)."""

    def erase(subject_id: str) -> list[Removed]:
        removed = []
        folder = photos.delete_subject(subject_id)
        if folder is not None:
            removed.append(Removed.from_scrub(folder))
        image_keys = subjects.delete_subject(subject_id)
        removed.append(Removed("dynamodb", "subject_items", subjects.table, 0, len(image_keys) + 1))
        return removed

    return erase


def erase_enrolled(
    eraser: Eraser, subjects: SubjectStore, photos: PhotoStore, subject_id: str
) -> Receipt:
    """Erase an enrolled subject (:class:`UnknownSubjectError` if there is none) inside its
    deletion fence (:meth:`Tombstones.begin_deletion`; the interleavings with an enrolment
    are argued at :meth:`FaceService.delete_subject`)."""
    subjects.get_subject(subject_id)
    deletion = eraser.tombstones.begin_deletion(subject_id)
    try:
        return eraser.erase(subject_id, API_SCOPE, enrolment_eraser(subjects, photos))
    finally:
        end_deletion(eraser.tombstones, deletion)


def end_deletion(tombstones: Tombstones, deletion: Deletion) -> None:
    """Take a DELETE's mark out. Failing to must not fail a DELETE that did its work (or hide
    the error that stopped it): the mark only delays re-enrolling the id until it expires, so
    it is logged (never the id) and the DELETE answers as it would have."""
    try:
        tombstones.end_deletion(deletion)
    except Exception:
        logger.warning("a deletion mark could not be removed; it expires by itself")
