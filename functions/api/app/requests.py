"""Reading a request's photos: multipart files, base64 strings in JSON, or ``s3://`` URIs.

Photo fields are the ones named ``image...`` (``image``, ``image_a``, ``images``: a list).
Base64 and uploads are limited to 5 MB, S3 objects to 15 MB (Rekognition's limits), and an
``s3://`` URI must name the stack's own bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from app.photos import from_base64, from_upload
from facegate.errors import ValidationError
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


async def read_body(request: Request, store: PhotoStore, s3_limit: int) -> Body:
    body = Body()
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    body.photos.setdefault(name, []).append(await from_upload(value, name))
                elif name.startswith("image") and value.startswith("s3://"):
                    body.photos.setdefault(name, []).append(store.fetch(value, s3_limit))
                else:
                    body.fields[name] = value
        return body
    try:
        payload = await request.json()
    except ValueError as exc:
        raise ValidationError("body must be JSON or multipart/form-data") from exc
    if not isinstance(payload, dict):
        raise ValidationError("JSON body must be an object")
    for name, value in payload.items():
        if not name.startswith("image"):
            body.fields[name] = value
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise ValidationError(f"{name} must be base64 strings or s3:// URIs")
        body.photos[name] = [
            store.fetch(v, s3_limit) if v.startswith("s3://") else from_base64(v, name)
            for v in values
        ]
    return body
