"""Reading a request's photos: multipart files, base64 strings in JSON, or ``s3://`` URIs.

Photo fields are the ones named ``image...`` (``image``, ``image_a``, ``images``: a list).
A request's inline photos (base64 and uploads) are limited to 4.5 MiB together (what a 6 MiB
Lambda event carries), an S3 object to 15 MB, and an ``s3://`` URI must name the stack's own
bucket; a request takes at most 10 photos and 100 MP of decoded pixels (:mod:`app.photos`).
A body is JSON (strict, nesting bounded by :func:`facegate.common.parse_json`) or multipart;
any other media type is a 415.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.deps import PhotoStoreDep, SettingsDep
from app.photos import InlineBudget, check_count, check_pixels, from_base64, from_upload
from facegate.common import parse_json
from facegate.errors import UnsupportedMediaTypeError, ValidationError
from facegate.storage.photos import PhotoStore


@dataclass
class Body:
    """Photos by field name (a list for repeated fields) and the other fields."""

    photos: dict[str, list[bytes]] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)

    def photo(self, name: str) -> bytes:
        found = self.photos.get(name)
        if not found:
            raise ValidationError(f"missing photo field {name!r}")
        if len(found) > 1:
            raise ValidationError(f"field {name!r} takes one photo")
        return found[0]

    def all_photos(self) -> list[bytes]:
        return [p for name in sorted(self.photos) for p in self.photos[name]]

    def text(self, name: str) -> str | None:
        """A field as text; None when absent."""
        value = self.fields.get(name)
        return None if value is None else str(value)

    def number(self, name: str) -> float | None:
        """A finite number (a JSON number, or its text in a form); None when absent."""
        if name not in self.fields:
            return None
        try:
            number = float(str(self.fields[name]))
        except ValueError as exc:
            raise ValidationError(f"{name} must be a number") from exc
        if not math.isfinite(number):
            raise ValidationError(f"{name} must be finite")
        return number

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """An integer in ``[low, high]``; ``default`` when absent."""
        try:
            number = int(str(self.fields.get(name, default)))
        except ValueError as exc:
            raise ValidationError(f"{name} must be an integer") from exc
        if not low <= number <= high:
            raise ValidationError(f"{name} must be between {low} and {high}")
        return number

    def flag(self, name: str, default: bool) -> bool:
        """A boolean: JSON ``false`` or the texts ``false``, ``0``, ``no`` are false."""
        if name not in self.fields:
            return default
        return str(self.fields[name]).lower() not in ("false", "0", "no")


def _media_type(request: Request) -> str:
    """The body's media type, without parameters (``; charset=utf-8``, ``; boundary=...``)."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    """``application/json`` or a JSON-based type (``application/*+json``), as FastAPI reads
    for a model body."""
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def require_json(request: Request) -> None:
    """Dependency of the routes whose body FastAPI parses: the body must say it is JSON.

    FastAPI would read a ``text/plain`` body as bytes and answer a confusing validation
    error; a caller deserves the same 415 as on the photo routes.
    """
    if not _is_json(_media_type(request)):
        raise UnsupportedMediaTypeError("the body must be sent as application/json")


async def read_body(request: Request, store: PhotoStore, s3_limit: int) -> Body:
    """The request's photos and fields, from multipart or JSON; any other media type (a JSON
    body sent as ``text/plain``, a urlencoded form) is a 415, not guessed at.

    The body arrives on the event loop; ``s3://`` photos are fetched by boto3, which blocks,
    so in the threadpool.
    """
    body, budget = Body(), InlineBudget()
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        async with request.form() as form:
            check_count(sum(_is_photo(name, value) for name, value in form.multi_items()))
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    photo = await from_upload(value, name, budget)
                    body.photos.setdefault(name, []).append(photo)
                elif name.startswith("image") and value.startswith("s3://"):
                    photo = await run_in_threadpool(store.fetch, value, s3_limit)
                    body.photos.setdefault(name, []).append(photo)
                else:
                    body.fields[name] = value
        return body
    if not _is_json(media_type):
        raise UnsupportedMediaTypeError(
            "the body must be sent as application/json or multipart/form-data"
        )
    payload = parse_json(await request.body(), "body")
    if not isinstance(payload, dict):
        raise ValidationError("JSON body must be an object")
    photos: dict[str, list[str]] = {}
    for name, value in payload.items():
        if not name.startswith("image"):
            body.fields[name] = value
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise ValidationError(f"{name} must be base64 strings or s3:// URIs")
        photos[name] = values
    check_count(sum(len(values) for values in photos.values()))
    for name, values in photos.items():
        body.photos[name] = [
            await run_in_threadpool(store.fetch, v, s3_limit)
            if v.startswith("s3://")
            else from_base64(v, name, budget)
            for v in values
        ]
    return body


def _is_photo(name: str, value: str | UploadFile) -> bool:
    """A multipart item read as a photo: a file, or an ``s3://`` URI in an ``image...`` field."""
    return isinstance(value, UploadFile) or (name.startswith("image") and value.startswith("s3://"))


async def request_body(request: Request, store: PhotoStoreDep, settings: SettingsDep) -> Body:
    """Dependency of the photo routes: the body, read before the route runs.

    The routes themselves are plain ``def``: FastAPI runs them in its threadpool, so the
    synchronous pipeline and boto3 never hold the event loop (and every other request of the
    process, ``/health`` included) while one request is being decided. The photos' decoded
    size is checked here, from their headers, before the route decodes any of them.
    """
    body = await read_body(request, store, settings.s3_max_image_bytes)
    await run_in_threadpool(check_pixels, body.all_photos(), settings)
    return body


BodyDep = Annotated[Body, Depends(request_body)]
