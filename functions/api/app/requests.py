"""Reading a request's photos whether it came as multipart form or as JSON with base64."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from app.photos import from_base64, from_upload
from facegate.errors import ValidationError


async def read_body(request: Request) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``(photos by field name, other fields)``; photos are raw bytes, within the limit."""
    content_type = request.headers.get("content-type", "")
    photos: dict[str, bytes] = {}
    fields: dict[str, Any] = {}
    if content_type.startswith("multipart/form-data"):
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    photos[name] = await from_upload(value, name)
                else:
                    fields[name] = value
        return photos, fields
    try:
        body = await request.json()
    except ValueError as exc:
        raise ValidationError("body must be JSON or multipart/form-data") from exc
    if not isinstance(body, dict):
        raise ValidationError("JSON body must be an object")
    for name, value in body.items():
        if name.startswith("image") and isinstance(value, str):
            photos[name] = from_base64(value, name)
        else:
            fields[name] = value
    return photos, fields


def require(photos: dict[str, bytes], *names: str) -> list[bytes]:
    missing = [n for n in names if n not in photos]
    if missing:
        raise ValidationError(f"missing photo field(s): {', '.join(missing)}")
    return [photos[n] for n in names]
