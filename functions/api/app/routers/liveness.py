"""Log in with a liveness check: ask for a challenge, answer it with frames.

``POST /liveness/challenges`` issues a single-use challenge (its steps and expiry);
``POST /liveness/verify`` answers it with the frames captured at each step and the claimed
subject. The rules are :mod:`facegate.liveness.challenge`'s; this only reads the request.
Plain ``def`` routes: the pipeline and boto3 run in FastAPI's threadpool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from app.deps import LivenessDep, PhotoStoreDep, SettingsDep, require_api_key
from app.openapi import ID, KEYED, PHOTO, PHOTOS, error_responses
from app.photos import InlineBudget, check_pixels, from_base64
from facegate.common import parse_json
from facegate.errors import ValidationError
from facegate.liveness.challenge import MAX_FRAMES, STEPS

router = APIRouter(
    prefix="/liveness",
    tags=["liveness"],
    dependencies=[Depends(require_api_key)],
    responses=error_responses(*KEYED),
)

CHALLENGE_ANSWER = {
    "type": "object",
    "properties": {
        "challenge_id": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "string", "enum": list(STEPS)}},
        "expires_at": {"type": "string", "format": "date-time"},
        "expires_in": {"type": "integer", "description": "seconds left to answer"},
    },
}
VERIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["challenge_id", "subject_id", "frames"],
                    "properties": {
                        "challenge_id": {"type": "string"},
                        "subject_id": {**ID, "description": "the subject logging in"},
                        "frames": {
                            "type": "array",
                            "maxItems": MAX_FRAMES,
                            "items": {
                                "type": "object",
                                "required": ["step", "image"],
                                "properties": {
                                    "step": {"type": "string", "enum": list(STEPS)},
                                    "image": PHOTO,
                                },
                            },
                        },
                        "threshold": {"type": "number", "minimum": -1, "maximum": 1},
                        "far": {"type": "number"},
                    },
                }
            }
        },
    }
}


@router.post(
    "/challenges",
    status_code=201,
    responses={201: {"content": {"application/json": {"schema": CHALLENGE_ANSWER}}}},
)
def challenge(liveness: LivenessDep) -> dict[str, Any]:
    """A new single-use challenge: ``center``, then ``left`` and ``right`` in a random
    order (and a nod where the deployment asks for one), to answer within ``expires_in``
    seconds with ``POST /liveness/verify``."""
    return liveness.challenge()


async def frames_body(
    request: Request, settings: SettingsDep, store: PhotoStoreDep
) -> dict[str, Any]:
    """The JSON body with its frames read: ``(step, photo)`` pairs, each frame base64 or an
    ``s3://`` URI of the stack's bucket as in the other photo fields (:mod:`app.requests`),
    within the inline budget and the decoded-pixel limit."""
    payload = parse_json(await request.body(), "body")
    if not isinstance(payload, dict):
        raise ValidationError("JSON body must be an object")
    frames = payload.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValidationError("frames must be a non-empty list of {step, image}")
    if len(frames) > MAX_FRAMES:
        raise ValidationError(f"at most {MAX_FRAMES} frames")
    budget, decoded = InlineBudget(), []
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("image"), str):
            raise ValidationError(
                f"frames[{index}] must be an object with an image (base64 or s3:// URI)"
            )
        step = frame.get("step")
        if step not in STEPS:
            raise ValidationError(f"frames[{index}].step must be one of {list(STEPS)}")
        image = frame["image"]
        if image.startswith("s3://"):
            photo = await run_in_threadpool(store.fetch, image, settings.s3_max_image_bytes)
        else:
            photo = from_base64(image, f"frames[{index}]", budget)
        decoded.append((str(step), photo))
    await run_in_threadpool(check_pixels, [photo for _, photo in decoded], settings)
    return payload | {"frames": decoded}


FramesDep = Annotated[dict[str, Any], Depends(frames_body)]


@router.post(
    "/verify",
    openapi_extra=VERIFY_BODY,
    responses=error_responses(*PHOTOS, 404, 409, 410),
)
def verify(liveness: LivenessDep, body: FramesDep) -> dict[str, Any]:
    """Answer a challenge: the frames captured at each of its steps (a few each) and the
    subject logging in. ``granted`` when the frames show one live person making each
    movement and that person is the subject; a liveness refusal is a 422
    ``liveness_failed`` with its ``reason``, a used or unknown challenge a 404
    ``challenge_unknown``, a late one a 410 ``challenge_expired``."""
    challenge_id, subject_id = body.get("challenge_id"), body.get("subject_id")
    if not isinstance(challenge_id, str) or not isinstance(subject_id, str):
        raise ValidationError("challenge_id and subject_id are required strings")
    return liveness.verify(
        challenge_id,
        subject_id,
        body["frames"],
        threshold=_number(body, "threshold"),
        far=_number(body, "far"),
    )


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{name} must be a number")
    return float(value)
