"""Deleting a collection: every subject in it erased through the erasure path, with a
receipt; inline when small, else by the jobs workers. Torch-free.

The order is what makes it exact against enrolments in flight:

1. Refused while a verification job runs on a gallery exported from the collection (its
   export is about to be destroyed under it: :class:`~facegate.errors.CollectionBusyError`).
2. The collection is marked ``deleting`` (:meth:`CollectionStore.begin_deletion`). Every
   enrolment into it commits on the condition that it is not
   (:func:`~facegate.storage.collections.collection_guard`), and every route on it refuses
   with ``collection_deleting``.
3. The subjects are listed by a strongly consistent scan: an enrolment that committed before
   the mark is listed, one that did not is cancelled and erases its own photos (an enrolment
   killed before that leaves photos no item names: step 5 sweeps them).
4. The galleries exported from the collection are destroyed whole (every version, and their
   lineage), then each subject is erased as ``DELETE /collections/{c}/subjects/{id}`` erases
   one (:func:`~facegate.batch.erasure.erase_enrolled`: tombstone, photos, items, the jobs of
   those exports), and the dead-letter queues are read once for all of them.
5. Whatever is left under the collection's photo prefix goes (every version), and the
   collection's item last: a deletion interrupted anywhere is finished by deleting again.

A collection of more than ``inline_max`` subjects is deleted by the jobs workers
(:class:`CollectionDeletionRequest` messages, ``batch`` subjects each, each sending the next
until none is left); its state, then its receipt, is ``erasures/<id>.json``, read by
``GET /erasures/{id}``. The receipt of a deletion run inline lists each subject's erasure
receipt; one run as a job gives the totals (the per-subject receipts of a large collection
would not fit an answer).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from facegate.batch.erasure import Eraser, Removed, add_totals, erase_enrolled
from facegate.batch.messages import COLLECTION_DELETION, Message
from facegate.common import check_positive, utc_now, validate_id
from facegate.errors import (
    CollectionBusyError,
    DefaultCollectionError,
    StorageError,
    UnknownCollectionError,
    ValidationError,
)
from facegate.settings import Settings
from facegate.storage import keys as layout
from facegate.storage.clients import aws_client
from facegate.storage.collections import DEFAULT_COLLECTION, CollectionStore
from facegate.storage.jobs import JobStore
from facegate.storage.photos import PhotoStore
from facegate.storage.queues import send_messages
from facegate.storage.scrub import erase_prefix
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import collection_scope

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

#: Subjects a deletion erases in the request; more go to the jobs workers. Each erasure is a
#: few DynamoDB and S3 calls (more with exports that verification jobs used): 25 keep the
#: answer well inside API Gateway's 30 s.
DEFAULT_INLINE_MAX = 25
#: Subjects one jobs worker's message erases before it hands on to the next message.
DEFAULT_BATCH = 200

QUEUED, RUNNING, DONE = "queued", "running", "done"


@dataclass(frozen=True)
class CollectionDeletionRequest(Message):
    """Go on deleting ``collection`` (deletion ``deletion_id``); ``step`` counts the messages
    of this deletion, so that a redelivered one is told from the next."""

    MESSAGE_TYPE: ClassVar[str] = COLLECTION_DELETION

    deletion_id: str
    collection: str
    step: int = 0

    def __post_init__(self) -> None:
        validate_id(self.deletion_id, "erasure_id")
        validate_id(self.collection, "collection")
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValidationError("step must be a non-negative int")

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(doc["deletion_id"], doc["collection"], doc.get("step", 0))


class CollectionDeleter:
    """Deletes collections: :meth:`delete` (the API and the CLI), :meth:`run` (a worker)."""

    def __init__(
        self,
        store: CollectionStore,
        subjects: SubjectStore,
        photos: PhotoStore,
        eraser: Eraser,
        *,
        jobs: JobStore | None = None,
        queue_url: str | None = None,
        sqs: SQSClient | None = None,
        inline_max: int = DEFAULT_INLINE_MAX,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.store = store
        self.subjects = subjects
        self.photos = photos
        self.eraser = eraser
        self.objects = eraser.objects
        self.jobs = jobs
        self.queue_url = queue_url
        self.sqs = sqs if sqs is not None else eraser.sqs
        if isinstance(inline_max, bool) or not isinstance(inline_max, int) or inline_max < 0:
            raise ValidationError("inline_max must be a non-negative int")
        self.inline_max = inline_max
        self.batch = check_positive(batch, "batch")

    @classmethod
    def from_settings(cls, settings: Settings, eraser: Eraser) -> CollectionDeleter:
        """The deployment's deleter: its table and bucket, the jobs queue, its limits."""
        dynamodb = aws_client("dynamodb", settings)
        return cls(
            CollectionStore(dynamodb, settings.table, default_model_id=settings.model_id),
            SubjectStore(dynamodb, settings.table),
            PhotoStore(eraser.s3, settings.bucket),
            eraser,
            jobs=JobStore(dynamodb, settings.table),
            queue_url=settings.jobs_queue_url,
            inline_max=settings.collection_delete_inline_max,
            batch=settings.collection_delete_batch,
        )

    # -- the API's side ---------------------------------------------------------------------

    def delete(self, name: str) -> tuple[bool, dict[str, Any]]:
        """Delete collection ``name``: ``(True, receipt)`` when done here, ``(False, state)``
        when handed to the jobs workers (the state's ``erasure_id`` is what to poll)."""
        if name == DEFAULT_COLLECTION:
            raise DefaultCollectionError(f"collection {DEFAULT_COLLECTION!r} cannot be deleted")
        collection = self.store.get(name)
        exports = self.exports_of(collection.name)
        if self.jobs is not None and exports:
            running = self.jobs.running_on(exports)
            if running:
                raise CollectionBusyError(
                    f"{len(running)} verification jobs run on galleries exported from "
                    f"collection {name!r}: retry when they have finished"
                )
        self.store.begin_deletion(collection.name)
        members = self.subjects.in_collection(collection.name).subject_ids()
        if len(members) <= self.inline_max:
            return True, self._finish(collection.name, members, exports, per_subject=True)
        deletion_id = uuid.uuid4().hex
        state = {
            "erasure_id": deletion_id,
            "status": QUEUED,
            "scope": collection_scope(collection.name),
            "collection": collection.name,
            "subjects": len(members),
            "exports": exports,
            "queued_at": utc_now(),
        }
        self._put(layout.erasure_status_key(deletion_id), state)
        self._send(CollectionDeletionRequest(deletion_id, collection.name))
        return False, state

    def exports_of(self, name: str) -> list[str]:
        """The galleries exported from collection ``name``."""
        return sorted(g for g, of in self.eraser.export_sources().items() if of == name)

    # -- the workers' side ------------------------------------------------------------------

    def run(self, request: CollectionDeletionRequest) -> None:
        """Erase up to ``batch`` more subjects of the collection; send the next message while
        any is left, else finish (exports, stragglers, the item) and write the receipt."""
        key = layout.erasure_status_key(request.deletion_id)
        state = self._get(key) or {}
        if state.get("status") == DONE or state.get("step", -1) >= request.step + 1:
            return  # finished, or this message was handled and the next one sent
        try:
            self.store.get(request.collection)
        except UnknownCollectionError:
            return  # deleted meanwhile (by a DELETE run again inline)
        members = self.subjects.in_collection(request.collection).subject_ids()
        # The first message destroys the exports (and their lineage): the later ones take
        # them from the state, so each subject is still erased from their jobs.
        kept = [g for g in state.get("exports", []) if isinstance(g, str)]
        exports = sorted(set(kept) | set(self.exports_of(request.collection)))
        totals = _Totals.from_dict(state.get("totals"))
        erased = int(state.get("subjects_erased", 0))
        if len(members) > self.batch:
            doc = self._erase(request.collection, members[: self.batch], exports, totals)
            state |= {
                "status": RUNNING,
                "step": request.step + 1,
                "subjects_erased": erased + len(doc["receipts"]),
                "subjects_left": len(members) - self.batch,
                "totals": totals.to_dict(),
                "updated_at": utc_now(),
            }
            self._put(key, state)
            self._send(
                CollectionDeletionRequest(request.deletion_id, request.collection, request.step + 1)
            )
            return
        receipt = self._finish(
            request.collection, members, exports, per_subject=False, totals=totals
        )
        receipt["subjects_erased"] += erased
        self._put(
            key,
            {
                "erasure_id": request.deletion_id,
                "status": DONE,
                "scope": collection_scope(request.collection),
                "collection": request.collection,
                "finished_at": utc_now(),
                "receipt": receipt,
            },
        )

    # -- the erasure ------------------------------------------------------------------------

    def _finish(
        self,
        name: str,
        members: Sequence[str],
        exports: Sequence[str],
        *,
        per_subject: bool,
        totals: _Totals | None = None,
    ) -> dict[str, Any]:
        """Erase the last ``members``, then what is left of the collection; the receipt."""
        totals = totals if totals is not None else _Totals()
        doc = self._erase(name, members, exports, totals)
        leftover = erase_prefix(self.objects, layout.collection_prefix(name), "enrolment_photos")
        if leftover is not None:
            totals.add([Removed.from_scrub(leftover)])
        self.store.delete(name)
        receipt: dict[str, Any] = {
            "collection": name,
            "deleted": True,
            "subjects_erased": len(members),
            "galleries_destroyed": list(exports),
            "totals": totals.to_dict(),
            "receipts": doc["receipts"] if per_subject else [],
            "remaining": self.eraser.by_design(collection_scope(name)),
        }
        return receipt

    def _erase(
        self, name: str, members: Sequence[str], exports: Sequence[str], totals: _Totals
    ) -> dict[str, Any]:
        """The exports destroyed (a no-op once done), each member erased, dead letters
        purged once for them all."""
        for gallery in exports:
            totals.add(self._destroy_gallery(gallery))
        subjects = self.subjects.in_collection(name)
        photos = self.photos.in_collection(name)
        receipts = []
        for subject_id in members:
            receipt = erase_enrolled(
                self.eraser,
                subjects,
                photos,
                subject_id,
                must_exist=False,
                galleries=exports,
                dead_letters=False,
            )
            totals.add(receipt.removed)
            receipts.append(receipt.to_dict())
        totals.add(self.eraser.purge_dead_letters(set(members), set(exports), name))
        return {"receipts": receipts}

    def _destroy_gallery(self, gallery: str) -> list[Removed]:
        """Every version under an export's prefix, its cached copy, its attachments to
        other collections, then its lineage (last: a destruction interrupted is found and
        finished by the next attempt)."""
        removed = []
        done = erase_prefix(self.objects, layout.gallery_prefix(gallery), "gallery")
        if done is not None:
            removed.append(Removed.from_scrub(done))
        if self.eraser.cache is not None and self.eraser.cache.invalidate(
            self.eraser.bucket, layout.gallery_key(gallery)
        ):
            removed.append(Removed("cache", "gallery_cache", layout.gallery_key(gallery), 0, 1))
        self.store.detach_everywhere(gallery)
        lineage = layout.export_lineage_key(gallery)
        self.objects.delete_versions([v for v in self.objects.versions(lineage) if v[0] == lineage])
        return removed

    # -- state ------------------------------------------------------------------------------

    def _get(self, key: str) -> dict[str, Any] | None:
        return self.objects.get_json(key, "a collection deletion's state")

    def _put(self, key: str, doc: Mapping[str, Any]) -> None:
        self.objects.put_json(key, doc)

    def _send(self, request: CollectionDeletionRequest) -> None:
        if self.sqs is None:
            raise StorageError("this deleter was built without a queue client")
        send_messages(self.sqs, self.queue_url, [request.to_message()], "collection deletion")


class _Totals:
    """What a deletion removed so far, per kind (:func:`~facegate.batch.erasure.add_totals`),
    carried from one worker's message to the next in the deletion's state."""

    def __init__(self, totals: dict[str, dict[str, int]] | None = None) -> None:
        self.totals = totals or {}

    @classmethod
    def from_dict(cls, doc: Any) -> _Totals:
        if not isinstance(doc, dict):
            return cls()
        return cls({str(k): {str(n): int(v) for n, v in dict(t).items()} for k, t in doc.items()})

    def add(self, removed: Sequence[Removed]) -> None:
        add_totals(self.totals, removed)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return dict(sorted(self.totals.items()))


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_INLINE_MAX",
    "CollectionDeleter",
    "CollectionDeletionRequest",
]
