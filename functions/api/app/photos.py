"""Photos as the API receives them: multipart file, base64 in JSON. Bytes out, or an error.

The limits of one request, checked before anything is decoded:

- its inline photos (multipart files and base64 in JSON) together at most
  :data:`REQUEST_INLINE_LIMIT` bytes. On AWS they travel inside the Lambda event, which Lambda
  caps at 6 MiB and in which API Gateway base64-encodes a multipart body: 3/4 of 6 MiB is all
  the photo bytes a request can carry, however it sends them (API Gateway itself answers 413
  to a larger request; here the app does, in the same words for every deployment);
- at most :data:`MAX_PHOTOS` photos, counted before any ``s3://`` photo is fetched;
- at most :data:`MAX_PIXELS` decoded pixels over all its photos, read from their headers.
  The per-photo limit (``Settings.max_image_pixels``) alone would let a request of small
  PNGs decode to gigabytes (a 131 KB PNG decodes to 120 MB).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from starlette.datastructures import UploadFile

from facegate.errors import FaceGateError, ImageTooLargeError, ValidationError
from facegate.pipeline.image import ImageLimits, decoded_pixels
from facegate.settings import Settings

#: 6 MiB x 3/4: the photo bytes a Lambda event can carry once base64-encoded.
REQUEST_INLINE_LIMIT = 4_718_592
#: Photos of one request (an enrolment of several photos, a compare of two).
MAX_PHOTOS = 10
#: Decoded pixels of one request, all its photos together (300 MB of RGB).
MAX_PIXELS = 100_000_000


class InlineBudget:
    """The inline photo bytes a request has left: every photo of it takes its share."""

    def __init__(self, limit: int = REQUEST_INLINE_LIMIT) -> None:
        self.limit = limit
        self.left = limit

    def check(self, size: int, field: str) -> None:
        if size > self.left:
            raise ImageTooLargeError(
                f"{field}: the inline photos of this request are over {self.limit} bytes "
                "together (what a 6 MiB Lambda event carries); send larger photos as s3:// URIs"
            )

    def take(self, size: int, field: str) -> None:
        self.check(size, field)
        self.left -= size


def check_count(count: int) -> None:
    if count > MAX_PHOTOS:
        raise ValidationError(f"a request takes at most {MAX_PHOTOS} photos; this one has {count}")


def from_base64(text: str, field: str, budget: InlineBudget) -> bytes:
    """Decode base64 (a ``data:image/...;base64,`` prefix is allowed), within ``budget``."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    budget.check(len(text) * 3 // 4 - 2, field)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"{field} is not valid base64") from exc
    budget.take(len(data), field)
    return data


async def from_upload(upload: UploadFile, field: str, budget: InlineBudget) -> bytes:
    data = await upload.read(budget.left + 1)
    budget.take(len(data), field)
    return data


def check_pixels(photos: Iterable[bytes], settings: Settings) -> None:
    """Refuse a request whose photos decode to over :data:`MAX_PIXELS` together, from their
    headers, as the pipeline would decode them (a large JPEG at reduced scale).

    A photo whose header fails is left out of the sum: the pipeline gives it its own error,
    in place (an enrolment's other photos still count).
    """
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        min_side=settings.min_image_side,
    )
    total = 0
    for data in photos:
        try:
            total += decoded_pixels(data, limits, keep_side=settings.decode_keep_side)
        except FaceGateError:
            continue
    if total > MAX_PIXELS:
        raise ImageTooLargeError(
            f"the photos of this request decode to {total} pixels together; the limit is "
            f"{MAX_PIXELS}"
        )
