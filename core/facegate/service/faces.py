"""Subjects and probe photos over the stores: enrol, verify (1:1), identify (1:N), embed.

It receives the face processor and the stores by injection, so the API, the local stack and
tests wire it the same way. Routes stay one call deep; the rules live here:

- Enrolment keeps one face per photo (the multi-face policy of the settings) and stores the
  embedding (DynamoDB) and the photo itself (S3, private prefix) so a later model can
  re-embed it. Each photo gets its own verdict; a bad photo never fails the others.
- Enrolment is all or nothing: a failure at any photo or at the record erases every
  photo it stored, and so does a DELETE of the subject that overlaps it (see
  :meth:`FaceService.delete_subject`): a deleted person is gone from every store.
- Every decision is taken at :func:`~facegate.service.probes.decision_threshold`: the
  request's ``threshold`` or ``far``, else the deployment's, never below the deployment's
  floor; answers show scores to 3 decimals.
- Verifying a photo against a subject compares it with every enrolled embedding of that
  subject and decides on the best (maximum) similarity: one good enrolment photo is enough,
  as a person expects, and poor ones cannot veto it.
- Identification ranks subjects by their best similarity, from the enrolled subjects and/or
  a named Parquet gallery in the bucket, names only those that clear the threshold and
  says "no match" when none does.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.batch.erasure import (
    Eraser,
    Removed,
    end_deletion,
    enrolment_eraser,
    erase_enrolled,
)
from facegate.common import validate_id
from facegate.errors import (
    FaceGateError,
    ModelMismatchError,
    NoEnrolledFacesError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.gallery.cache import GalleryCache
from facegate.gallery.search import SearchResult, search_gallery
from facegate.pipeline.image import content_type
from facegate.pipeline.verify import verify_embeddings
from facegate.service.probes import (
    check_policy,
    compare_photos,
    decision_threshold,
    embedding_response,
    reference_embedding,
    shown_face,
    shown_score,
    verification_response,
)
from facegate.storage.collections import DEFAULT_COLLECTION, collection_guard
from facegate.storage.galleries import GalleryStore
from facegate.storage.gallery_ann import gallery_loader
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import (
    MAX_FACES_PER_PUT,
    StoredFace,
    SubjectStore,
    validate_metadata,
)
from facegate.storage.tombstones import Tombstones, collection_scope
from facegate.types import FaceProcessor, FaceResult

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

logger = logging.getLogger("facegate.service")


@dataclass(frozen=True)
class PhotoOutcome:
    """One photo's verdict in an enrolment."""

    index: int
    accepted: bool
    face_id: str | None = None
    face: dict[str, Any] | None = None
    error: FaceGateError | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.accepted:
            return {
                "index": self.index,
                "accepted": True,
                "face_id": self.face_id,
                "face": self.face,
            }
        assert self.error is not None
        return {"index": self.index, "accepted": False, "error": self.error.to_dict()}


class FaceService:
    """Everything the API does with faces and subjects, without HTTP."""

    def __init__(
        self,
        pipeline: FaceProcessor,
        subjects: SubjectStore,
        photos: PhotoStore,
        tombstones: Tombstones | None = None,
        galleries: GalleryCache | None = None,
        *,
        min_threshold: float | None = None,
        eraser: Eraser | None = None,
    ) -> None:
        """``min_threshold`` is the deployment's floor (``Settings.min_threshold``); None: the
        card's (:func:`~facegate.service.probes.decision_floor`)."""
        self.pipeline = pipeline
        self.subjects = subjects
        self.photos = photos
        self.tombstones = tombstones
        self.galleries = galleries or GalleryCache(expected_model_id=pipeline.model_id)
        self.min_threshold = min_threshold
        #: Erases the person from every other store on DELETE (None: the enrolment only).
        self.eraser = eraser
        if photos.collection != subjects.collection:
            raise ValidationError("the subject and photo stores are of different collections")
        #: The tombstone scope of this service's collection (its subjects' fence, erasures).
        self.scope = collection_scope(subjects.collection)
        #: The collection's decision rule, used when a request gives none (None: the
        #: deployment's).
        self.default_threshold: float | None = None
        self.default_far: float | None = None
        #: The galleries identify may search (None: any gallery a request names; a
        #: collection's own: its attached galleries, searched by default too).
        self.attached: tuple[str, ...] | None = None

    @property
    def collection(self) -> str:
        return self.subjects.collection

    def in_collection(
        self,
        collection: str,
        *,
        threshold: float | None = None,
        far: float | None = None,
        galleries: Sequence[str] = (),
    ) -> FaceService:
        """The same service over ``collection``'s subjects and photos, deciding at the
        collection's ``threshold`` or ``far`` when a request names neither, identifying among
        its subjects and its attached ``galleries`` (and no other gallery: a tenant's key
        must not search another tenant's gallery by naming it). Subjects of other
        collections are neither seen, nor searched, nor deleted by it."""
        bound = FaceService(
            self.pipeline,
            self.subjects.in_collection(collection),
            self.photos.in_collection(collection),
            self.tombstones,
            self.galleries,
            min_threshold=self.min_threshold,
            eraser=self.eraser,
        )
        bound.default_threshold, bound.default_far = threshold, far
        bound.attached = tuple(galleries)
        return bound

    # -- enrolment -----------------------------------------------------------------------

    def enrol(
        self, subject_id: str, photos: Sequence[bytes], metadata: object = None
    ) -> dict[str, Any]:
        """Each photo's verdict, and the subject's face count once the accepted ones are
        stored. ``metadata`` (string to string) replaces the subject's when given.

        All or nothing: the photos and the subject's items are written in one ``try``; on any
        failure every photo it may have stored is erased (every version) before the error
        is raised, and the items, one DynamoDB transaction, were not written. No photo is
        left that no record points at and no DELETE could reach. The deletion fence is read
        before the first photo is stored and checked by that transaction: a DELETE running
        at the start, or begun before the commit, is a :class:`SubjectDeletedError` (409)
        and the enrolment leaves nothing (the ordering is argued at :meth:`delete_subject`).
        """
        validate_id(subject_id)
        checked = None if metadata is None else validate_metadata(metadata)
        if not photos:
            raise ValidationError("no photos to enrol")
        if len(photos) > MAX_FACES_PER_PUT:  # one transaction holds at most this many faces
            raise ValidationError(f"enrol at most {MAX_FACES_PER_PUT} photos at a time")
        fence = (
            self.tombstones.fence(subject_id, self.scope) if self.tombstones is not None else None
        )
        results = self.pipeline.process_many(list(photos))
        outcomes: list[PhotoOutcome] = []
        faces: list[StoredFace] = []
        written: list[str] = []
        try:
            for index, (data, result) in enumerate(zip(photos, results, strict=True)):
                if not isinstance(result, FaceResult):
                    outcomes.append(PhotoOutcome(index, False, error=result))
                    continue
                faces.append(self._store_photo(subject_id, data, result, written))
                outcomes.append(
                    PhotoOutcome(
                        index, True, faces[-1].face_id, shown_face(result.primary.detection)
                    )
                )
            if faces:
                self.subjects.write_faces(
                    subject_id,
                    faces,
                    self.pipeline.model_id,
                    weights_sha256=self.pipeline.card.weights_sha256,
                    metadata=checked,
                    fence=fence,
                    guard=self._collection_guard(),
                )
        except BaseException:
            self._erase_photos(written)
            raise
        subject = self.subjects.get_subject(subject_id) if faces else None
        return {
            "subject_id": subject_id,
            "model_id": self.pipeline.model_id,
            "accepted": len(faces),
            "rejected": len(outcomes) - len(faces),
            "face_count": subject.face_count if subject else None,
            "photos": [o.to_dict() for o in outcomes],
        }

    def _collection_guard(self) -> TransactWriteItemTypeDef | None:
        """The commit's check that the collection is not being deleted (``default`` never
        is, and may have no item)."""
        if self.collection == DEFAULT_COLLECTION:
            return None
        return collection_guard(self.subjects.table, self.collection)

    def _store_photo(
        self, subject_id: str, data: bytes, result: FaceResult, written: list[str]
    ) -> StoredFace:
        """Store one accepted photo, its key noted in ``written`` before the put (S3 may
        store it and the answer be lost), and return its face record."""
        face = result.primary
        face_id = uuid.uuid4().hex
        mime = content_type(data)
        written.append(self.photos.photo_key(subject_id, face_id, mime))
        key = self.photos.put(subject_id, face_id, data, mime)
        x1, y1, x2, y2 = (float(v) for v in face.detection.box)
        return StoredFace(
            face_id=face_id,
            embedding=face.vector,
            image_key=key,
            bbox=(x1, y1, x2, y2),
            det_score=float(face.detection.score),
        )

    def _erase_photos(self, keys: Sequence[str]) -> None:
        """Undo a failed enrolment's photos. A failure here must not hide the one that
        stopped the enrolment: it is logged (a count, never a key: keys name subjects) and
        the caller raises the original error."""
        if not keys:
            return
        try:
            self.photos.delete_keys(keys)
        except Exception:
            logger.warning("a failed enrolment left %d photos it could not erase", len(keys))

    # -- 1:1 -----------------------------------------------------------------------------

    def decision_threshold(self, threshold: float | None = None, far: float | None = None) -> float:
        """A request's own threshold or target FAR, else the deployment's; never below the
        deployment's floor (a request asking for less is refused). A collection's own rule
        stands in for the deployment's."""
        if threshold is None and far is None:
            threshold, far = self.default_threshold, self.default_far
        return decision_threshold(self.pipeline, threshold, far, min_threshold=self.min_threshold)

    def compare_photos(
        self,
        first: bytes,
        second: bytes,
        *,
        threshold: float | None = None,
        far: float | None = None,
    ) -> dict[str, Any]:
        """The largest face of each photo, compared."""
        decided = self.decision_threshold(threshold, far)
        return verification_response(
            compare_photos(self.pipeline, first, second, threshold=decided)
        )

    def compare_embedding(
        self,
        photo: bytes,
        reference: object,
        *,
        model_id: str | None = None,
        threshold: float | None = None,
        far: float | None = None,
    ) -> dict[str, Any]:
        """The photo's largest face against a caller's ``reference`` embedding of
        ``model_id`` (checked before the photo is decoded)."""
        decided = self.decision_threshold(threshold, far)
        vector = reference_embedding(self.pipeline, reference, model_id)
        face = self.pipeline.process(photo, policy="largest").primary
        return verification_response(
            verify_embeddings(
                face.vector,
                vector,
                threshold=decided,
                model_id=self.pipeline.model_id,
                faces=(face.detection, None),
            )
        )

    def enrolled(self, subject_id: str) -> tuple[np.ndarray, list[StoredFace]]:
        """The subject's enrolled embeddings ``(N, D)`` and their face records, of the served
        model: :class:`ModelMismatchError` (409) for another model's subject and
        :class:`NoEnrolledFacesError` (409) for a subject left with none."""
        subject = self.subjects.get_subject(subject_id)
        if subject.model_id != self.pipeline.model_id:
            raise ModelMismatchError(
                f"subject {subject_id!r} was enrolled with {subject.model_id!r}; "
                f"this API serves {self.pipeline.model_id!r}"
            )
        enrolled, faces = self.subjects.get_embeddings(subject_id)
        if not faces:
            raise NoEnrolledFacesError(f"subject {subject_id!r} has no enrolled faces")
        return enrolled, faces

    def compare_subject(
        self,
        photo: bytes,
        subject_id: str,
        *,
        threshold: float | None = None,
        far: float | None = None,
    ) -> dict[str, Any]:
        """The photo's largest face against the best of the subject's enrolled faces;
        :class:`NoEnrolledFacesError` (409) for a subject left with none, before the photo
        is decoded."""
        decided = self.decision_threshold(threshold, far)
        enrolled, faces = self.enrolled(subject_id)
        face = self.pipeline.process(photo, policy="largest").primary
        similarities = enrolled @ face.vector
        best = int(np.argmax(similarities))
        result = verification_response(
            verify_embeddings(
                face.vector,
                enrolled[best],
                threshold=decided,
                model_id=self.pipeline.model_id,
                faces=(face.detection, None),
            )
        )
        result |= {
            "subject_id": subject_id,
            "aggregation": "max",
            "enrolled_faces": len(faces),
            "best_face_id": faces[best].face_id,
        }
        return result

    # -- 1:N and embeddings --------------------------------------------------------------

    def identify(
        self,
        photo: bytes,
        *,
        top_k: int = 5,
        gallery: str | None = None,
        subjects: bool = True,
        threshold: float | None = None,
        far: float | None = None,
    ) -> dict[str, Any]:
        """Up to ``top_k`` subjects at or above the decision threshold, best first, among the
        enrolled subjects and/or ``gallery`` (in a collection: one of its attached galleries,
        all of them when none is named). Subjects below it are never named: a ranked list of
        non-matches would tell a caller who looks most like a face."""
        galleries = self._searched_galleries(gallery)
        if not subjects and not galleries:
            raise ValidationError("nothing to search: name a gallery or include subjects")
        decided = self.decision_threshold(threshold, far)
        face = self.pipeline.process(photo, policy="largest").primary
        found: list[SearchResult] = []
        if subjects:
            found.append(self._search_subjects(face.vector, top_k, decided))
        for name in galleries:
            try:
                found.append(self._search_named_gallery(face.vector, name, top_k, decided))
            except UnknownGalleryError:
                # An attached gallery destroyed since (its collection deleted) must not fail
                # the collection's own identify; a gallery the request named must.
                if gallery is not None:
                    raise
                logger.warning("an attached gallery is gone; identify skipped it")
        ranked = sorted(
            (c for result in found for c in result.candidates),
            key=lambda c: c.similarity,
            reverse=True,
        )
        seen: set[str] = set()
        candidates: list[dict[str, Any]] = []
        for c in ranked:
            if c.similarity >= decided and c.subject_id not in seen:
                seen.add(c.subject_id)
                shown = shown_score(c.similarity, match=True)
                candidates.append({"subject_id": c.subject_id, "similarity": shown})
        candidates = candidates[:top_k]
        best = candidates[0] if candidates else None
        return {
            "match": best is not None,
            "best": best,
            "candidates": candidates,
            "threshold": round(decided, 6),
            "model_id": self.pipeline.model_id,
            "face": shown_face(face.detection),
        }

    def _searched_galleries(self, gallery: str | None) -> list[str]:
        if self.attached is None:
            return [] if gallery is None else [gallery]
        if gallery is None:
            return list(self.attached)
        if gallery not in self.attached:
            raise UnknownGalleryError(
                f"gallery {gallery!r} is not attached to collection {self.collection!r}"
            )
        return [gallery]

    def _search_named_gallery(
        self, vector: np.ndarray, name: str, top_k: int, threshold: float
    ) -> SearchResult:
        """Through the process's gallery cache: a warm function keeps the index in memory
        and only asks S3 whether the gallery changed."""
        key = GalleryStore.gallery_key(name)
        load = gallery_loader(self.photos.objects, name)
        index = self.galleries.get(self.photos.bucket, key, load)
        return index.search(vector, top_k, threshold)

    def embed(self, photo: bytes, *, multi_face: object = "all") -> dict[str, Any]:
        """Every face ``multi_face`` keeps (all, largest, center or reject), embedded."""
        result = self.pipeline.process(photo, policy=check_policy(multi_face))
        return embedding_response(self.pipeline, result)

    # -- subjects ------------------------------------------------------------------------

    def list_subjects(self, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        """One page of subjects and the cursor of the next (None on the last page)."""
        subjects, next_cursor = self.subjects.list_subjects(limit, cursor)
        return {"subjects": [s.to_dict() for s in subjects], "next_cursor": next_cursor}

    def describe_subject(self, subject_id: str) -> dict[str, Any]:
        subject = self.subjects.get_subject(subject_id)
        _, faces = self.subjects.get_embeddings(subject_id)
        return subject.to_dict() | {
            "faces": [
                {
                    "face_id": f.face_id,
                    "bbox": f.bbox,
                    "det_score": f.det_score,
                    "created_at": f.created_at,
                }
                for f in faces
            ]
        }

    def _search_subjects(self, vector: np.ndarray, top_k: int, decided: float) -> SearchResult:
        """The enrolled subjects' best ``top_k`` at or above ``decided``, each confirmed
        enrolled. The faces come from an eventually consistent index through this process's
        cache (:mod:`facegate.storage.face_index`): a subject deleted a moment ago may still
        be in it, and must not be named. When one is, the cache is read again, once."""
        model_id = self.pipeline.model_id
        result = SearchResult(candidates=(), threshold=decided)
        for _ in range(2):
            ids, matrix = self.subjects.all_embeddings(model_id)
            if not ids:
                return SearchResult(candidates=(), threshold=decided)
            result = search_gallery(vector, matrix, top_k, decided, subject_ids=ids)
            named = {c.subject_id for c in result.matches}
            enrolled = self.subjects.existing(sorted(named))
            if enrolled == named:
                return result
            self.subjects.faces.drop_cached(model_id)
        kept = tuple(c for c in result.matches if c.subject_id in enrolled)
        return SearchResult(candidates=kept, threshold=decided)

    def delete_subject(self, subject_id: str) -> dict[str, Any]:
        """Photos first, then the records: if anything fails midway, the subject still exists
        and a retried DELETE finishes the job; nothing biometric is left unreferenced.

        With tombstones, the DELETE first moves the subject's deletion fence
        (:meth:`Tombstones.begin_deletion`: the generation goes up and its mark goes in, in
        one update ``b``), then sweeps every photo version under the prefix and deletes the
        items, and takes its mark out at the end (``f``). An enrolment reads the fence at
        ``r``, before its first photo, and commits its items at ``c`` only if the generation
        is still the one it read. For any DELETE and enrolment of one subject:

        - ``f`` before ``r``: the DELETE ended before the enrolment began; they never meet.
        - ``b`` before ``r`` before ``f``: the enrolment sees the live mark and is refused
          before it stores anything (that DELETE's sweep could follow its puts).
        - ``r`` before ``b`` before ``c``: the generation moved, the transaction is cancelled,
          and the enrolment erases the photos it stored (all of them: its puts all precede
          ``c``); the DELETE removes the rest.
        - ``c`` before ``b``: every photo and item of the enrolment precedes the sweep and the
          (strongly consistent) item query, and the DELETE removes them with the rest.

        So every interleaving ends with the whole subject or nothing of it. A DELETE killed
        before ``f`` (a timeout) leaves its mark to expire
        (:data:`~facegate.storage.tombstones.DELETION_LEASE`).
        """
        if self.eraser is not None:
            receipt = erase_enrolled(self.eraser, self.subjects, self.photos, subject_id)
            return self._counts(subject_id, receipt.removed) | receipt.to_dict()
        self.subjects.get_subject(subject_id)
        erase = enrolment_eraser(self.subjects, self.photos)
        if self.tombstones is None:
            return self._counts(subject_id, erase(subject_id))
        deletion = self.tombstones.begin_deletion(subject_id, self.scope)
        try:
            self.tombstones.record(self.scope, subject_id)
            return self._counts(subject_id, erase(subject_id))
        finally:
            end_deletion(self.tombstones, deletion)

    @staticmethod
    def _counts(subject_id: str, removed: Sequence[Removed]) -> dict[str, Any]:
        """The answer's summary: faces and photo keys of the enrolment."""
        faces = sum(r.rows_removed - 1 for r in removed if r.kind == "subject_items")
        photos = sum(r.rows_removed for r in removed if r.kind == "enrolment_photos")
        return {"subject_id": subject_id, "deleted_faces": faces, "deleted_photos": photos}
