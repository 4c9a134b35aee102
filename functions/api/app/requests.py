"""Reading a request's photos: multipart files, base64 strings in JSON, or ``s3://`` URIs.

Photo fields are the ones named ``image...`` (``image``, ``image_a``, ``images``: a list).
Base64 and uploads are limited to 5 MB, S3 objects to 15 MB (Rekognition's limits), and an
``s3://`` URI must name the stack's own bucket.
"""

from __future__ import annotations

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
