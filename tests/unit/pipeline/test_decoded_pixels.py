"""``decoded_pixels``: a photo's decoded size from its header, the same as decoding gives,
so a request's cost is known before anything is decoded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from facegate.errors import ImageTooLargeError, InvalidImageError
from facegate.pipeline.image import ImageLimits, decode_image_reduced, decoded_pixels


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "fmt", "keep_side"),
    [((4000, 3000), "JPEG", 1000), ((4000, 3000), "JPEG", 0), ((1200, 900), "PNG", 300)],
)
def test_the_header_tells_the_decoded_size(size, fmt, keep_side):
    data = encoded(size, fmt)
    decoded = decode_image_reduced(data, keep_side=keep_side).pixels
    assert decoded_pixels(data, keep_side=keep_side) == decoded.shape[0] * decoded.shape[1]


def test_a_jpeg_is_counted_at_its_reduced_scale():
    assert decoded_pixels(encoded((4000, 3000), "JPEG"), keep_side=1000) == 1000 * 750


def test_the_header_errors_are_decoding_s():
    with pytest.raises(InvalidImageError):
        decoded_pixels(b"not an image")
    with pytest.raises(ImageTooLargeError):
        decoded_pixels(encoded((1200, 900), "PNG"), ImageLimits(max_pixels=1_000_000))
