"""One error vocabulary for the whole library.

Every error carries a stable machine-readable ``code``. The core knows nothing of HTTP: the
API maps these classes to status codes in one place, the CLI prints ``code: message`` and
exits 2, batch jobs write the code into reject rows.
"""

from __future__ import annotations


class FaceGateError(Exception):
    """Base class: ``code`` is stable and machine-readable, ``message`` is for people."""

    code = "facegate_error"

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InputError(FaceGateError):
    """The caller sent something we cannot use; retrying the same input will not help."""

    code = "invalid_input"


class InvalidImageError(InputError):
    """Bytes that are not a decodable image (corrupt, truncated, text, unsupported format)."""

    code = "invalid_image"


class ImageTooLargeError(InputError):
    """Too many bytes or too many pixels (decompression-bomb guard)."""

    code = "image_too_large"


class ImageTooSmallError(InputError):
    """The image's shorter side is below the configured minimum."""

    code = "image_too_small"


class FaceError(InputError):
    """The image decoded but its faces do not satisfy the request."""

    code = "face_error"


class NoFaceError(FaceError):
    code = "no_face"


class MultipleFacesError(FaceError):
    code = "multiple_faces"


class FaceTooSmallError(FaceError):
    code = "face_too_small"


class UnknownSubjectError(FaceGateError):
    code = "unknown_subject"


class NoEnrolledFacesError(FaceGateError):
    """The subject exists but has no faces to verify against (a DELETE that stopped after
    removing its faces: retrying the DELETE finishes it). A conflict with the subject's
    state, like :class:`ModelMismatchError`, not an unknown subject."""

    code = "no_enrolled_faces"


class SubjectDeletedError(FaceGateError):
    """An enrolment that met a DELETE of its subject: the deletion wins and the enrolment
    stored nothing (its photos were erased). A conflict with the subject's state; enrolling
    again once the DELETE has answered starts a new subject."""

    code = "subject_deleted"


class CollectionExistsError(FaceGateError):
    """A collection of that name already exists (``default`` always does): a conflict with
    what is stored, so creating it again will not help; pick another name or use it."""

    code = "collection_exists"


class DefaultCollectionError(FaceGateError):
    """The ``default`` collection, which holds every subject enrolled without naming one,
    cannot be deleted: erase its subjects instead."""

    code = "default_collection"


class CollectionDeletingError(FaceGateError):
    """The collection is being deleted: nothing is enrolled into it, searched in it or
    attached to it any more; its deletion finishes by itself (``GET /erasures/{id}``)."""

    code = "collection_deleting"

    @classmethod
    def named(cls, name: str) -> CollectionDeletingError:
        return cls(f"collection {name!r} is being deleted")


class CollectionBusyError(FaceGateError):
    """The collection cannot be deleted while verification jobs run on a gallery exported
    from it: the deletion destroys that gallery under them. Retry when they have finished."""

    code = "collection_busy"


class UnknownJobError(FaceGateError):
    """No batch verification job with that id."""

    code = "unknown_job"


class UnknownErasureError(FaceGateError):
    """No erasure with that id (or its record has expired)."""

    code = "unknown_erasure"


class UnknownGalleryError(FaceGateError):
    """No such gallery (nothing uploaded to it, or never compacted where that is needed)."""

    code = "unknown_gallery"


class GalleryExistsError(FaceGateError):
    """A gallery of that name holds something else (uploads, or another collection's
    export): a collection is exported into a new gallery or into its own export only."""

    code = "gallery_exists"


class UnknownCollectionError(FaceGateError):
    """No collection of that name (never created, or deleted)."""

    code = "unknown_collection"

    @classmethod
    def named(cls, name: str) -> UnknownCollectionError:
        """The one refusal of a collection by name: the same words whether it does not exist
        or belongs to another tenant's key, so that the two cannot be told apart."""
        return cls(f"unknown collection {name!r}")


class ModelMismatchError(FaceGateError):
    """Embeddings from different models (or dims) must never be compared."""

    code = "model_mismatch"


class UnauthorizedError(FaceGateError):
    """No valid API key (API-key auth mode)."""

    code = "unauthorized"


class InsufficientScopeError(FaceGateError):
    """A valid API key whose scopes do not include the one the route needs (403): the key
    is known, so this is not :class:`UnauthorizedError`; asking again with it will not help."""

    code = "insufficient_scope"


class ModelNotFoundError(FaceGateError):
    """Weights or model card missing: run the set-up step or point the settings at them."""

    code = "model_not_found"


class ValidationError(InputError):
    code = "validation_error"


class UnsupportedMediaTypeError(InputError):
    """A request body in a media type the route does not read (JSON sent as ``text/plain``)."""

    code = "unsupported_media_type"


class ObjectNotFoundError(FaceGateError):
    """No such S3 object, or no such version of it: permanent, a retry finds nothing either.

    Raised by :class:`facegate.storage.objects.ObjectStore`; the stores above it turn it into
    their own vocabulary (a missing photo is an :class:`InvalidImageError`, a gallery never
    built an :class:`UnknownGalleryError`) where callers expect that.
    """

    code = "object_not_found"


class ObjectTooLargeError(InputError):
    """An S3 object over the caller's byte limit, refused before its body is downloaded."""

    code = "object_too_large"


class StorageError(FaceGateError):
    """S3/DynamoDB/filesystem failure: usually transient, worth a retry."""

    code = "storage_error"


class WriteConflictError(StorageError):
    """A conditional write lost a race: the object changed since it was read (another
    compaction, an erasure's rewrite). Retrying from a fresh read is the answer."""

    code = "write_conflict"


class LivenessFailedError(InputError):
    """A liveness challenge's frames do not show a live person doing what it asked.

    ``reason`` is stable and machine-readable, like ``code``: ``no_face`` or
    ``several_faces`` (a frame without exactly one face), ``different_people`` (the frames
    are not all of one person), ``no_movement`` (a step's frames do not move the head the way
    the step asked: a still photo's answer), ``missing_step`` (no frame for a step). The
    challenge is used up either way: a new attempt starts with a new challenge."""

    code = "liveness_failed"
    REASONS = ("no_face", "several_faces", "different_people", "no_movement", "missing_step")

    def __init__(
        self, message: str, *, reason: str | None = None, detail: str | None = None
    ) -> None:
        if reason is not None and reason not in self.REASONS:
            raise ValueError(f"unknown liveness reason {reason!r}")
        super().__init__(message, detail=detail)
        self.reason = reason

    def to_dict(self) -> dict[str, str]:
        found = super().to_dict()
        return found if self.reason is None else found | {"reason": self.reason}


class UnknownChallengeError(FaceGateError):
    """No such liveness challenge: never issued, or already used (a challenge answers once,
    so a replayed one is unknown), or expired long enough ago that its item is gone."""

    code = "challenge_unknown"


class ChallengeExpiredError(FaceGateError):
    """A liveness challenge answered after its expiry (``expires_at``): ask for a new one."""

    code = "challenge_expired"
