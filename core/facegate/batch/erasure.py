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

An erasure is planned as :class:`Task` units (:meth:`Eraser.prepare`: the tombstone, then
one listing); one that lists more object versions than the deployment answers inline
(``Settings.erasure_inline_max_objects``) is run by the jobs workers instead, its tasks fanned
out over several of them (:mod:`facegate.batch.erasure_job`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Self, TypeAlias, cast

from facegate.batch.dlq import body_names_subject, purge_dead_letters
from facegate.batch.erase_jobs import erase_from_jobs
from facegate.batch.scrub_uploads import rewrite_archive, rewrite_manifest_csv
from facegate.common import validate_id
from facegate.errors import ObjectNotFoundError, UnknownGalleryError, ValidationError
from facegate.gallery.cache import GalleryCache
from facegate.lazy import lazy_module
from facegate.settings import Settings
from facegate.storage import keys as layout
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.objects import ObjectInfo, ObjectStore
from facegate.storage.photos import PhotoStore
from facegate.storage.scrub import Scrubbed, erase_prefix, rewrite_table
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import (
    Deletion,
    Tombstones,
    check_scope,
    collection_scope,
    scope_collection,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

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

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Self:
        """Inverse of :func:`dataclasses.asdict` (a partial receipt read back)."""
        return cls(
            str(doc["store"]),
            str(doc["kind"]),
            str(doc["key"]),
            int(doc.get("versions_deleted", 0)),
            int(doc.get("rows_removed", 0)),
            bool(doc.get("rewritten", False)),
        )


def add_totals(
    totals: dict[str, dict[str, int]], removed: Sequence[Removed]
) -> dict[str, dict[str, int]]:
    """Add ``removed`` to ``totals`` (per kind: objects, tables or queues touched, versions
    destroyed, rows removed) and answer it."""
    for entry in removed:
        total = totals.setdefault(
            entry.kind, {"objects": 0, "versions_deleted": 0, "rows_removed": 0}
        )
        total["objects"] += 1
        total["versions_deleted"] += entry.versions_deleted
        total["rows_removed"] += entry.rows_removed
    return totals


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
        return dict(sorted(add_totals({}, self.removed).items()))

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


#: :attr:`Task.kind` values: one table of a gallery (part, rejects, ``gallery.parquet``); a
#: gallery's upload folder of the person; a photo set (the zip, then its CSV manifest, which
#: says which members are the person's); a manifest with no zip beside it; the verification
#: jobs of the scope's galleries; the dead-letter queues; a gallery's ANN index folder
#: (its quantised rows: removed whole, every version, and rebuilt by the next index build).
TABLE, UPLOAD_PHOTOS, PHOTO_SET, MANIFEST_CSV, JOBS, DEAD_LETTERS, ANN_INDEX = (
    "table",
    "upload_photos",
    "photo_set",
    "manifest_csv",
    "jobs",
    "dead_letters",
    "ann_index",
)
TASK_KINDS = frozenset(
    {TABLE, UPLOAD_PHOTOS, PHOTO_SET, MANIFEST_CSV, JOBS, DEAD_LETTERS, ANN_INDEX}
)


@dataclass(frozen=True)
class Task:
    """One unit of an erasure's work, done whole by one worker and safe to do again (a
    second run finds nothing). ``key`` is the object (or prefix) for the kinds that have
    one, ``gallery`` the gallery it belongs to."""

    kind: str
    key: str = ""
    gallery: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValidationError(f"unknown erasure task {self.kind!r}")
        if not isinstance(self.key, str) or not isinstance(self.gallery, str):
            raise ValidationError("an erasure task's key and gallery must be strings")

    def to_list(self) -> list[str]:
        return [self.kind, self.key, self.gallery]

    @classmethod
    def from_list(cls, item: Any) -> Task:
        if not isinstance(item, list) or len(item) != 3:
            raise ValidationError("an erasure task is [kind, key, gallery]")
        return cls(*item)


@dataclass(frozen=True)
class Plan:
    """An erasure whose tombstone is recorded, and the work it takes: ``tasks`` in the order
    an inline erasure runs them; ``objects`` the object versions its listing saw (what
    decides whether it is answered inline)."""

    subject_id: str
    scope: str
    erased_at: str
    galleries: list[str]
    tasks: list[Task]
    objects: int

    def receipt(self) -> Receipt:
        return Receipt(self.subject_id, self.scope, self.erased_at, list(self.galleries))


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

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        tombstones: Tombstones | None = None,
        cache: GalleryCache | None = None,
    ) -> Eraser:
        """The deployment's eraser: its bucket, tombstones and dead-letter queues."""
        return cls(
            aws_client("s3", settings),
            settings.bucket,
            tombstones if tombstones is not None else Tombstones.from_settings(settings),
            sqs=aws_client("sqs", settings),
            dead_letter_queues=[q for q in (settings.ingest_dlq_url, settings.jobs_dlq_url) if q],
            cache=cache,
        )

    def erase(
        self,
        subject_id: str,
        scope: str,
        enrolment: EnrolmentEraser | None = None,
        *,
        galleries: Sequence[str] | None = None,
        dead_letters: bool = True,
    ) -> Receipt:
        """Erase ``subject_id`` in ``scope`` (see the module docstring); ``enrolment`` removes
        an enrolled subject's photos and items once the tombstone is recorded (``api``).
        :class:`UnknownGalleryError` for a gallery FaceGate holds nothing of (a typo must not
        look like a done erasure). Safe to run again: what was removed stays removed, and a
        second run finds nothing. ``galleries`` and ``dead_letters`` are
        :meth:`prepare`'s."""
        plan = self.prepare(subject_id, scope, galleries=galleries, dead_letters=dead_letters)
        return self.execute(plan, enrolment)

    def prepare(
        self,
        subject_id: str,
        scope: str,
        *,
        galleries: Sequence[str] | None = None,
        dead_letters: bool = True,
    ) -> Plan:
        """Record the tombstone, then list what the erasure will go through. The scope is
        checked first (an unknown gallery records nothing); the listing comes after the
        tombstone, so that whatever it misses was written after the tombstone and drops the
        person by itself (the embedding job's check after its write).

        A collection's deletion, which erases every subject of it, passes the ``galleries``
        it found once (those exported from it, already destroyed whole: their jobs are left
        to each erasure) and purges the dead letters once for all (``dead_letters=False``).
        """
        validate_id(subject_id)
        scope = check_scope(scope)
        found = self.galleries_in_scope(scope) if galleries is None else list(galleries)
        erased_at = self.tombstones.record(scope, subject_id)
        plan = self.plan(subject_id, scope, erased_at, found)
        if not dead_letters:
            plan = replace(plan, tasks=[t for t in plan.tasks if t.kind != DEAD_LETTERS])
        return plan

    def plan(self, subject_id: str, scope: str, erased_at: str, galleries: Sequence[str]) -> Plan:
        """The tasks of an erasure whose tombstone was recorded at ``erased_at``: one listing
        of each gallery's tables and, for a gallery's own scope, of its uploads."""
        tasks: list[Task] = []
        listed = 0
        for gallery in galleries:
            inbox = layout.inbox_prefix(gallery)  # empty markers: nothing of anyone's
            versions = [
                (k, v)
                for k, v in self.objects.versions(layout.gallery_prefix(gallery))
                if not k.startswith(inbox)
            ]
            listed += len(versions)
            tables = sorted({k for k, _ in versions if k.endswith(".parquet")})
            tasks.extend(Task(TABLE, key, gallery) for key in tables)
            ann = layout.ann_prefix(gallery)
            if any(k.startswith(ann) for k, _ in versions):
                tasks.append(Task(ANN_INDEX, ann, gallery))
        if scope_collection(scope) is None:
            own = scope.removeprefix("gallery:")
            prefix = f"{layout.UPLOADS_PREFIX}{own}/"
            versions = self.objects.versions(prefix)
            listed += len(versions)
            top = sorted({k for k, _ in versions if "/" not in k[len(prefix) :]})
            tasks.append(Task(UPLOAD_PHOTOS, f"{prefix}{subject_id}/", own))
            sets = {k.removesuffix(".zip") for k in top if k.endswith(".zip")}
            tasks.extend(Task(PHOTO_SET, f"{base}.zip", own) for base in sorted(sets))
            tasks.extend(
                Task(MANIFEST_CSV, k, own)
                for k in top
                if k.endswith(".csv") and k.removesuffix(".csv") not in sets
            )
        if galleries:
            tasks.append(Task(JOBS))
        tasks.append(Task(DEAD_LETTERS))
        return Plan(subject_id, scope, erased_at, list(galleries), tasks, listed)

    def execute(self, plan: Plan, enrolment: EnrolmentEraser | None = None) -> Receipt:
        """Every task of the plan in order, in this process, then the receipt."""
        receipt = plan.receipt()
        if enrolment is not None:
            receipt.removed.extend(enrolment(plan.subject_id))
        for task in plan.tasks:
            removed, remaining = self.run_task(plan.subject_id, plan.scope, plan.galleries, task)
            receipt.removed.extend(removed)
            receipt.remaining.extend(remaining)
        return self.finish(receipt)

    def finish(self, receipt: Receipt) -> Receipt:
        """What ends every erasure: this process's cached galleries dropped, and what remains
        by design."""
        self._drop_cached(receipt.galleries, receipt)
        receipt.remaining.extend(self.by_design(receipt.scope))
        return receipt

    def run_task(
        self, subject_id: str, scope: str, galleries: Sequence[str], task: Task
    ) -> tuple[list[Removed], list[dict[str, Any]]]:
        """One task: what it removed, and what it left for the caller."""
        validate_id(subject_id)
        if task.kind == TABLE:
            return self._erase_table(subject_id, task.gallery, task.key), []
        if task.kind == ANN_INDEX:
            done = erase_prefix(self.objects, task.key, "gallery_ann")
            return ([Removed.from_scrub(done)] if done is not None else []), []
        if task.kind == UPLOAD_PHOTOS:
            done = erase_prefix(self.objects, task.key, "upload_photos")
            return ([Removed.from_scrub(done)] if done is not None else []), []
        if task.kind == PHOTO_SET:
            return self._erase_photo_set(subject_id, task.key), []
        if task.kind == MANIFEST_CSV:
            done = rewrite_manifest_csv(self.objects, task.key, subject_id)
            return ([Removed.from_scrub(done)] if done is not None else []), []
        if task.kind == JOBS:
            jobs = erase_from_jobs(self.s3, self.bucket, subject_id, set(galleries))
            remaining = [
                {"store": "s3", "kind": r.kind, "key": r.key, "reason": r.reason}
                for r in jobs.remaining
            ]
            return [Removed.from_scrub(s) for s in jobs.scrubbed], remaining
        return self._purge_dead_letters(subject_id, set(galleries), scope_collection(scope)), []

    # -- scope -----------------------------------------------------------------------------

    def galleries_in_scope(self, scope: str) -> list[str]:
        """The galleries whose rows are the scope's subjects: a gallery's own; for a
        collection, the galleries exported from it (``exports/<g>.json`` names the
        collection); and every gallery re-embedded from one of them, or for ``default``
        from its enrolled subjects (``reembed/<target>.json`` names the source),
        transitively. :class:`UnknownGalleryError` for a gallery with nothing under
        ``galleries/`` or ``uploads/``."""
        collection = scope_collection(scope)
        sources = self._reembed_sources()
        found: list[str] = []
        frontier: list[str | None] = []
        if collection is None:
            own = scope.removeprefix("gallery:")
            if not (
                self.objects.versions(layout.gallery_prefix(own))
                or self.objects.versions(f"{layout.UPLOADS_PREFIX}{own}/")
            ):
                raise UnknownGalleryError(f"gallery {own!r} not found")
            found.append(own)
            frontier.append(own)
        else:
            exported = sorted(g for g, of in self.export_sources().items() if of == collection)
            found += exported
            frontier += exported
            if collection == layout.DEFAULT_COLLECTION:
                frontier.append(None)  # re-embedding reads the default collection's subjects
        while frontier:
            origin = frontier.pop()
            for target, of in sorted(sources.items()):
                if of == origin and target not in found:
                    found.append(target)
                    frontier.append(target)
        return found

    def export_sources(self) -> dict[str, str]:
        """``gallery -> collection`` of every collection export."""
        out: dict[str, str] = {}
        for key in self.objects.list_keys(layout.EXPORTS_PREFIX):
            gallery = key.removeprefix(layout.EXPORTS_PREFIX).removesuffix(".json")
            try:
                doc = _json(self.objects.get(key).body)
            except ObjectNotFoundError:
                continue
            if isinstance(doc.get("collection"), str):
                out[gallery] = doc["collection"]
        return out

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

    # -- galleries and uploads -----------------------------------------------------------

    def _erase_table(self, subject_id: str, gallery: str, key: str) -> list[Removed]:
        """A part, rejects table or ``gallery.parquet``, every version that ever existed (a
        part whose current version is a delete marker may still have old versions)."""
        if key.startswith(layout.rejects_prefix(gallery)):
            kind = "gallery_rejects"
            drop = _rejects_of(subject_id, f"{layout.UPLOADS_PREFIX}{gallery}/{subject_id}/")
        else:
            generations = (layout.gallery_key(gallery), layout.delta_key(gallery))
            kind = "gallery" if key in generations else "gallery_part"
            drop = _rows_of(subject_id)
        done = rewrite_table(self.objects, key, kind, drop, self._writer(key))
        return [Removed.from_scrub(done)] if done is not None else []

    def _writer(self, key: str) -> Callable[[pa.Table], ObjectInfo]:
        def write(table: pa.Table) -> ObjectInfo:
            return self.galleries.write_table(key, table)

        return write

    def _erase_photo_set(self, subject_id: str, key: str) -> list[Removed]:
        """A zip photo set without the person's members, then its CSV manifest without their
        rows (in that order: the manifest says which members are the person's)."""
        csv_key = key.removesuffix(".zip") + ".csv"
        removed = []
        done = rewrite_archive(self.objects, key, subject_id, self._current_manifest(csv_key))
        if done is not None:
            removed.append(Removed.from_scrub(done))
        manifest = rewrite_manifest_csv(self.objects, csv_key, subject_id)
        if manifest is not None:
            removed.append(Removed.from_scrub(manifest))
        return removed

    def _current_manifest(self, key: str) -> bytes | None:
        try:
            return self.objects.get(key).body
        except ObjectNotFoundError:
            return None

    # -- queues and caches -----------------------------------------------------------------

    def _purge_dead_letters(
        self, subject_id: str, galleries: set[str], collection: str | None
    ) -> list[Removed]:
        """Dead letters naming the person: in the scope's galleries and, for a collection's
        scope, among its enrolment photos."""
        return self.purge_dead_letters({subject_id}, galleries, collection)

    def purge_dead_letters(
        self, subject_ids: Set[str], galleries: Set[str], collection: str | None
    ) -> list[Removed]:
        """Dead letters naming any of ``subject_ids`` (each queue read once, whatever their
        number: a collection's deletion purges for all its subjects at the end)."""
        if self.sqs is None or not subject_ids:
            return []
        removed = []

        def names_one(body: str) -> bool:
            return any(
                body_names_subject(
                    body,
                    subject_id,
                    set(galleries),
                    collection is not None,
                    collection or layout.DEFAULT_COLLECTION,
                )
                for subject_id in subject_ids
            )

        for url in self.dead_letter_queues:
            deleted = purge_dead_letters(self.sqs, url, names_one)
            if deleted:
                name = url.rstrip("/").rsplit("/", 1)[-1]
                removed.append(Removed("sqs", "dead_letters", name, 0, deleted))
        return removed

    def _drop_cached(self, galleries: Sequence[str], receipt: Receipt) -> None:
        if self.cache is None:
            return
        for gallery in galleries:
            key = layout.gallery_key(gallery)
            if self.cache.invalidate(self.bucket, key):
                receipt.removed.append(Removed("cache", "gallery_cache", key, 0, 1))

    def by_design(self, scope: str) -> list[dict[str, Any]]:
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
        if scope_collection(scope) is not None:
            left.append(
                {
                    "store": "dynamodb",
                    "kind": "point_in_time_recovery",
                    "reason": "the table's continuous backups can restore deleted items for "
                    f"{PITR_DAYS} days; a restore must be followed by erasing again",
                }
            )
        return left


_Mask: TypeAlias = "Callable[[pa.Table], pa.Array[pa.BooleanScalar]]"


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
    eraser: Eraser,
    subjects: SubjectStore,
    photos: PhotoStore,
    subject_id: str,
    *,
    must_exist: bool = True,
    galleries: Sequence[str] | None = None,
    dead_letters: bool = True,
) -> Receipt:
    """Erase an enrolled subject (:class:`UnknownSubjectError` if there is none, unless not
    ``must_exist``: a collection's deletion also erases what an interrupted DELETE left)
    inside its deletion fence (:meth:`Tombstones.begin_deletion`; the interleavings with an
    enrolment are argued at :meth:`FaceService.delete_subject`). ``galleries`` and
    ``dead_letters`` are :meth:`Eraser.prepare`'s."""
    if photos.collection != subjects.collection:
        raise ValidationError("the subject and photo stores are of different collections")
    if must_exist:
        subjects.get_subject(subject_id)
    scope = collection_scope(subjects.collection)
    deletion = eraser.tombstones.begin_deletion(subject_id, scope)
    try:
        return eraser.erase(
            subject_id,
            scope,
            enrolment_eraser(subjects, photos),
            galleries=galleries,
            dead_letters=dead_letters,
        )
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
