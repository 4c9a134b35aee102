"""Request-body documentation for the photo routes.

The routes read their bodies themselves (JSON with base64 / s3:// strings, or multipart
files), so FastAPI cannot infer a schema; these ``openapi_extra`` blocks state it.
"""

from __future__ import annotations

from typing import Any

PHOTO = {
    "type": "string",
    "description": "base64 image (JPEG, PNG, WebP, BMP, TIFF, GIF) or an "
    "s3://<stack bucket>/<key> URI (at most 15 MB). A request takes at most 10 photos, "
    "4,718,592 bytes (4.5 MiB) of inline photos together and 100 MP of decoded pixels.",
}
UPLOAD = {"type": "string", "format": "binary"}


def photo_body(
    photos: dict[str, str], extra: dict[str, Any] | None = None, required: list[str] | None = None
) -> dict[str, Any]:
    """``openapi_extra`` for a route taking the named photo fields plus ``extra`` fields."""
    extra = extra or {}
    as_json = {
        name: {**PHOTO, "description": f"{text}: {PHOTO['description']}"}
        for name, text in photos.items()
    }
    as_form = {name: {**UPLOAD, "description": text} for name, text in photos.items()}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {**as_json, **extra},
                        "required": required or [],
                    }
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {**as_form, **extra},
                        "required": required or [],
                    }
                },
            },
        }
    }
