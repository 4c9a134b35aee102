"""Domain errors -> HTTP status codes, in one place. Torch-free and framework-free.

Shared by the FastAPI app and the light zip functions that answer API Gateway directly, so a
client sees the same status for the same ``code`` whichever function served it. Every error
answer is ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from facegate import errors

#: Most specific class first: the first ``isinstance`` match decides the status.
STATUS: list[tuple[type[errors.FaceGateError], int]] = [
    (errors.UnauthorizedError, 401),
    (errors.InsufficientScopeError, 403),
    (errors.ImageTooLargeError, 413),
    (errors.ObjectTooLargeError, 413),
    (errors.FaceError, 422),
    (errors.LivenessFailedError, 422),
    (errors.UnsupportedMediaTypeError, 415),
    (errors.ModelMismatchError, 409),
    (errors.NoEnrolledFacesError, 409),
    (errors.SubjectDeletedError, 409),
    (errors.CollectionExistsError, 409),
    (errors.DefaultCollectionError, 409),
    (errors.CollectionDeletingError, 409),
    (errors.CollectionBusyError, 409),
    (errors.GalleryExistsError, 409),
    (errors.ChallengeExpiredError, 410),
    (errors.UnknownChallengeError, 404),
    (errors.UnknownSubjectError, 404),
    (errors.UnknownGalleryError, 404),
    (errors.UnknownJobError, 404),
    (errors.UnknownErasureError, 404),
    (errors.UnknownCollectionError, 404),
    (errors.ObjectNotFoundError, 404),
    (errors.ModelNotFoundError, 503),
    (errors.StorageError, 503),
    (errors.InputError, 400),
]


def status_for(exc: errors.FaceGateError) -> int:
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def error_body(code: str, message: str, **extra: str) -> dict[str, dict[str, str]]:
    """The error answer; ``extra``: an error's own stable fields (a liveness ``reason``)."""
    return {"error": {"code": code, "message": message, **extra}}
