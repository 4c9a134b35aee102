"""Photos as the API receives them: multipart file, base64 in JSON. Bytes out, or an error.

Limits mirror Rekognition's: 5 MB inline. Larger inputs are refused with ``image_too_large``
before they are decoded.
"""

from __future__ import annotations

import base64
import binascii

from starlette.datastructures import UploadFile

from facegate.errors import ImageTooLargeError, ValidationError

INLINE_LIMIT = 5 * 1024 * 1024


def from_base64(text: str, field: str) -> bytes:
    """Decode base64 (a ``data:image/...;base64,`` prefix is allowed)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) * 3 // 4 > INLINE_LIMIT:
        raise ImageTooLargeError(f"{field} is over the {INLINE_LIMIT} byte inline limit")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"{field} is not valid base64") from exc


async def from_upload(upload: UploadFile, field: str) -> bytes:
    data = await upload.read(INLINE_LIMIT + 1)
    if len(data) > INLINE_LIMIT:
        raise ImageTooLargeError(f"{field} is over the {INLINE_LIMIT} byte inline limit")
    return data
