"""Domain errors -> HTTP statuses: every error in ``facegate.errors`` has a status family, the
most specific mapping wins, and every error answer has the same shape."""

from __future__ import annotations

import inspect

import pytest

from facegate import errors
from facegate.http_errors import STATUS, error_body, status_for


def _error_classes() -> list[type[errors.FaceGateError]]:
    """Every error class ``facegate.errors`` defines, found by looking, not by a list."""
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.FaceGateError) and cls.__module__ == errors.__name__
    ]


ERRORS = _error_classes()
SUBCLASSES = [cls for cls in ERRORS if cls is not errors.FaceGateError]

#: What clients rely on today. A class not named here still has to map to a family
#: (``test_every_error_has_a_status_family``); one named here must keep its status.
DOCUMENTED = {
    errors.InputError: 400,
    errors.InvalidImageError: 400,
    errors.ImageTooSmallError: 400,
    errors.ValidationError: 400,
    errors.UnauthorizedError: 401,
    errors.InsufficientScopeError: 403,
    errors.UnknownSubjectError: 404,
    errors.UnknownJobError: 404,
    errors.UnknownGalleryError: 404,
    errors.ModelMismatchError: 409,
    errors.NoEnrolledFacesError: 409,
    errors.ImageTooLargeError: 413,
    errors.UnsupportedMediaTypeError: 415,
    errors.FaceError: 422,
    errors.NoFaceError: 422,
    errors.MultipleFacesError: 422,
    errors.FaceTooSmallError: 422,
    errors.UnknownChallengeError: 404,
    errors.ChallengeExpiredError: 410,
    errors.LivenessFailedError: 422,
    errors.ModelNotFoundError: 503,
    errors.StorageError: 503,
}

#: The statuses an error may answer: client mistakes, and 503 for "try again later".
#: 403 is a known key without the route's scope; 410 a liveness challenge past its expiry;
#: 500 means a bug.
FAMILIES = {400, 401, 403, 404, 409, 410, 413, 415, 422, 503}


def test_the_module_is_enumerated():
    assert errors.FaceGateError in ERRORS
    assert set(DOCUMENTED) <= set(SUBCLASSES)


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda cls: cls.__name__)
def test_every_error_has_a_status_family(cls):
    """A new error class that neither has a row in STATUS nor derives from a class that
    does would answer 500, as if it were a bug: give it a status."""
    status = status_for(cls("boom"))
    assert status != 500, f"{cls.__name__} has no HTTP status: add it to http_errors.STATUS"
    assert status in FAMILIES


@pytest.mark.parametrize(
    ("cls", "status"), [pytest.param(c, s, id=c.__name__) for c, s in DOCUMENTED.items()]
)
def test_documented_statuses(cls, status):
    assert status_for(cls("boom", detail="ignored")) == status


def test_every_input_error_is_the_callers_mistake():
    """Retrying the same input cannot help, so no input error may answer 5xx (which
    clients and API Gateway retry)."""
    inputs = [cls for cls in SUBCLASSES if issubclass(cls, errors.InputError)]
    assert len(inputs) >= 8
    assert {
        cls.__name__: status_for(cls("x")) for cls in inputs if status_for(cls("x")) >= 500
    } == {}


def test_no_status_row_is_shadowed_by_an_earlier_one():
    """The first ``isinstance`` match decides, so a subclass listed after its base class
    would never get its own status."""
    for j, (cls, _) in enumerate(STATUS):
        assert issubclass(cls, errors.FaceGateError)
        for earlier, _ in STATUS[:j]:
            assert not issubclass(cls, earlier), f"{cls.__name__} is shadowed by {earlier.__name__}"
    for cls, status in STATUS:
        assert status_for(cls("x")) == status


def test_unknown_errors_fall_back_by_family():
    class NewInputProblem(errors.InputError):
        code = "new_input_problem"

    class NewFaceProblem(errors.NoFaceError):
        code = "new_face_problem"

    class Unmapped(errors.FaceGateError):
        code = "unmapped"

    assert status_for(NewInputProblem("x")) == 400
    assert status_for(NewFaceProblem("x")) == 422
    assert status_for(Unmapped("x")) == 500
    assert status_for(errors.FaceGateError("x")) == 500


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_has_its_own_stable_code(cls):
    assert "code" in vars(cls), f"{cls.__name__} inherits its parent's code"
    assert cls.code.isascii() and cls.code == cls.code.lower() and " " not in cls.code


def test_codes_are_unique():
    codes = [cls.code for cls in ERRORS]
    assert len(codes) == len(set(codes))


def test_a_liveness_refusal_carries_its_reason_beside_code_and_message():
    exc = errors.LivenessFailedError("the head did not turn", reason="no_movement")
    assert exc.to_dict() == {
        "code": "liveness_failed",
        "message": "the head did not turn",
        "reason": "no_movement",
    }
    assert error_body(exc.code, exc.message, reason="no_movement") == {"error": exc.to_dict()}


def test_error_body_shape():
    assert error_body("no_face", "no face found in the image") == {
        "error": {"code": "no_face", "message": "no face found in the image"}
    }


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_error_body_of_an_error_is_its_code_and_message_only(cls):
    exc = cls("something went wrong", detail="internal detail")
    body = error_body(exc.code, exc.message)
    assert (
        body
        == {"error": exc.to_dict()}
        == {"error": {"code": cls.code, "message": "something went wrong"}}
    )
    assert "internal detail" not in str(body)
