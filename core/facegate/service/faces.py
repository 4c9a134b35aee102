"""Subjects and probe photos over the stores: enrol, verify (1:1), identify (1:N), embed.

It receives the face processor and the stores by injection, so the API, the local stack and
tests wire it the same way. Routes stay one call deep; the rules live here:

- Enrolment keeps one face per photo (the multi-face policy of the settings) and stores the
  embedding (DynamoDB) and the photo itself (S3, private prefix) so a later model can
  re-embed it. Each photo gets its own verdict; a bad photo never fails the others.
- Every decision is taken at :func:`~facegate.service.probes.decision_threshold`: the
  request's ``threshold`` or ``far``, else the deployment's.
- Verifying a photo against a subject compares it with every enrolled embedding of that
  subject and decides on the best (maximum) similarity: one good enrolment photo is enough,
  as a person expects, and poor ones cannot veto it.
- Identification ranks subjects by their best similarity, from the enrolled subjects and/or
  a named Parquet gallery in the bucket, and says "no match" when none clears the threshold.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facegate.common import validate_id
from facegate.errors import (
    FaceGateError,
    InvalidImageError,
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
)
from facegate.storage.galleries import GalleryStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import StoredFace, SubjectStore, validate_metadata
from facegate.storage.tombstones import Tombstones
from facegate.types import FaceProcessor, FaceResult


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
    ) -> None:
        self.pipeline = pipeline
        self.subjects = subjects
        self.photos = photos
        self.tombstones = tombstones
        self.galleries = galleries or GalleryCache(expected_model_id=pipeline.model_id)

    # -- enrolment -----------------------------------------------------------------------

    def enrol(
        self, subject_id: str, photos: Sequence[bytes], metadata: object = None
    ) -> dict[str, Any]:
        """Each photo's verdict, and the subject's face count once the accepted ones are
        stored. ``metadata`` (string to string) replaces the subject's when given."""
        validate_id(subject_id)
        checked = None if metadata is None else validate_metadata(metadata)
        if not photos:
            raise ValidationError("no photos to enrol")
        results = self.pipeline.process_many(list(photos))
        outcomes: list[PhotoOutcome] = []
        faces: list[StoredFace] = []
        for index, (data, result) in enumerate(zip(photos, results, strict=True)):
            if not isinstance(result, FaceResult):
                outcomes.append(PhotoOutcome(index, False, error=result))
                continue
            face = result.primary
            face_id = uuid.uuid4().hex
            key = self.photos.put(subject_id, face_id, data, content_type(data))
            x1, y1, x2, y2 = (float(v) for v in face.detection.box)
            faces.append(
                StoredFace(
                    face_id=face_id,
                    embedding=face.vector,
                    image_key=key,
                    bbox=(x1, y1, x2, y2),
                    det_score=float(face.detection.score),
                )
            )
            outcomes.append(PhotoOutcome(index, True, face_id, face.detection.to_dict()))
        subject = None
        if faces:
            try:
                subject = self.subjects.put_faces(
                    subject_id,
                    faces,
                    self.pipeline.model_id,
                    weights_sha256=self.pipeline.card.weights_sha256,
                    metadata=checked,
                )
            except FaceGateError:
                # No record points at these photos: remove them, or they would be
                # biometric data that no DELETE can reach.
                self.photos.delete_keys([f.image_key for f in faces])
                raise
        return {
            "subject_id": subject_id,
            "model_id": self.pipeline.model_id,
            "accepted": len(faces),
            "rejected": len(outcomes) - len(faces),
            "face_count": subject.face_count if subject else None,
            "photos": [o.to_dict() for o in outcomes],
        }

    # -- 1:1 -----------------------------------------------------------------------------

    def decision_threshold(self, threshold: float | None = None, far: float | None = None) -> float:
        """A request's own threshold or target FAR, else the deployment's."""
        return decision_threshold(self.pipeline, threshold, far)

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
        return compare_photos(self.pipeline, first, second, threshold=decided).to_dict()

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
        return verify_embeddings(
            face.vector,
            vector,
            threshold=decided,
            model_id=self.pipeline.model_id,
            faces=(face.detection, None),
        ).to_dict()

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
        subject = self.subjects.get_subject(subject_id)
        if subject.model_id != self.pipeline.model_id:
            raise ModelMismatchError(
                f"subject {subject_id!r} was enrolled with {subject.model_id!r}; "
                f"this API serves {self.pipeline.model_id!r}"
            )
        enrolled, faces = self.subjects.get_embeddings(subject_id)
        if not faces:
            raise NoEnrolledFacesError(f"subject {subject_id!r} has no enrolled faces")
        face = self.pipeline.process(photo, policy="largest").primary
        similarities = enrolled @ face.vector
        best = int(np.argmax(similarities))
        result = verify_embeddings(
            face.vector,
            enrolled[best],
            threshold=decided,
            model_id=self.pipeline.model_id,
            faces=(face.detection, None),
        ).to_dict()
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
        """Top-k subjects by best similarity among the enrolled subjects and/or ``gallery``."""
        if not subjects and gallery is None:
            raise ValidationError("nothing to search: name a gallery or include subjects")
        decided = self.decision_threshold(threshold, far)
        face = self.pipeline.process(photo, policy="largest").primary
        found: list[SearchResult] = []
        if subjects:
            ids, matrix = self.subjects.all_embeddings(self.pipeline.model_id)
            if ids:
                found.append(search_gallery(face.vector, matrix, top_k, decided, subject_ids=ids))
        if gallery is not None:
            found.append(self._search_named_gallery(face.vector, gallery, top_k, decided))
        ranked = sorted(
            (c for result in found for c in result.candidates),
            key=lambda c: c.similarity,
            reverse=True,
        )
        seen: set[str] = set()
        candidates: list[dict[str, Any]] = []
        for c in ranked:
            if c.subject_id not in seen:
                seen.add(c.subject_id)
                candidates.append(
                    {"subject_id": c.subject_id, "similarity": round(c.similarity, 6)}
                )
        candidates = candidates[:top_k]
        best = candidates[0] if candidates and candidates[0]["similarity"] >= decided else None
        return {
            "match": best is not None,
            "best": best,
            "candidates": candidates,
            "threshold": decided,
            "model_id": self.pipeline.model_id,
            "face": face.detection.to_dict(),
        }

    def _search_named_gallery(
        self, vector: np.ndarray, name: str, top_k: int, threshold: float
    ) -> SearchResult:
        """Through the process's gallery cache: a warm function keeps the index in memory
        and only asks S3 whether the gallery changed."""
        key = GalleryStore.gallery_key(name)
        try:
            index = self.galleries.get(
                self.photos.bucket, key, lambda etag: self.photos.get_if_changed(key, etag)
            )
        except InvalidImageError as exc:
            raise UnknownGalleryError(f"gallery {name!r} has not been built") from exc
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

    def delete_subject(self, subject_id: str) -> dict[str, Any]:
        """Photos first, then the records: if anything fails midway, the subject still exists
        and a retried DELETE finishes the job; nothing biometric is left unreferenced."""
        self.subjects.get_subject(subject_id)
        if self.tombstones is not None:  # galleries drop the subject at their next compaction
            self.tombstones.record(subject_id)
        removed = self.photos.delete_subject(subject_id)
        image_keys = self.subjects.delete_subject(subject_id)
        return {
            "subject_id": subject_id,
            "deleted_faces": len(image_keys),
            "deleted_photos": removed,
        }
