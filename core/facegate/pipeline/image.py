"""Decoding: untrusted bytes or a path in, an RGB ``uint8`` array out, or a typed error.

Everything a user might upload is handled here once (EXIF rotation, grayscale, palette,
CMYK, alpha, 16-bit, first frame of animations) so that detection only ever sees
``(H, W, 3) uint8`` RGB. Size limits are checked before pixels are decoded, from the header,
so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facegate.errors import ImageTooLargeError, ImageTooSmallError, InvalidImageError

#: Formats we accept. Pillow can open more (PSD, ICO, ...); we refuse what we do not test.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied before decoding; defaults mirror ``Settings``."""

    max_bytes: int = 15 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 80


def read_image_bytes(path: str | Path, limits: ImageLimits | None = None) -> bytes:
    """Read a file, refusing oversize files before reading them whole."""
    limits = limits or ImageLimits()
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise InvalidImageError(f"file not found: {path}") from exc
    except OSError as exc:
        raise InvalidImageError(f"cannot read {path}: {exc.strerror}") from exc
    if path.is_dir():
        raise InvalidImageError(f"{path} is a directory, not an image")
    if not path.is_file():
        # A device or FIFO reports size 0 and may never end (/dev/zero): refuse it.
        raise InvalidImageError(f"{path} is not a regular file")
    if size > limits.max_bytes:
        raise ImageTooLargeError(f"{path.name} is {size} bytes; the limit is {limits.max_bytes}")
    try:
        with path.open("rb") as handle:
            # Bounded read: the file may have grown since stat().
            data = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise InvalidImageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"{path.name} is over the limit of {limits.max_bytes} bytes")
    return data


@dataclass(frozen=True)
class DecodedImage:
    """Pixels decoded at ``scale`` x the photo's size (1.0: full resolution), upright.

    ``original_size`` is the upright ``(width, height)`` of the photo itself, the frame that
    boxes and landmarks are reported in.
    """

    pixels: np.ndarray
    scale: float
    original_size: tuple[int, int]


def decode_image(data: bytes, limits: ImageLimits | None = None) -> np.ndarray:
    """Decode image bytes to ``(H, W, 3) uint8`` RGB, upright per EXIF, at full resolution.

    Raises ``InvalidImageError`` (empty, corrupt, truncated, not an image, unsupported
    format), ``ImageTooLargeError`` (bytes or pixels over the limit) or
    ``ImageTooSmallError`` (shorter side under ``min_side``).
    """
    return decode_image_reduced(data, limits, keep_side=0).pixels


def decode_image_reduced(
    data: bytes, limits: ImageLimits | None = None, *, keep_side: int = 0
) -> DecodedImage:
    """Like ``decode_image``, but a JPEG whose longer side is at least twice ``keep_side``
    is decoded at 1/2, 1/4 or 1/8 scale (JPEG's DCT scaling: the decoder skips the work
    instead of resizing after it), never below ``keep_side`` on the longer side.

    A 12 MP phone photo decodes ~3x faster at half scale, and every later step (the
    downscale for detection, alignment) touches a quarter of the pixels; faces are still
    sampled from at least ``keep_side`` pixels, far more than a 112-150 px chip needs for any
    face that detection finds at its 1024 px working size. ``keep_side=0`` decodes in full.
    """
    limits = limits or ImageLimits()
    image = _open_checked(data, limits)
    full_width = image.size[0]
    try:
        with warnings.catch_warnings():
            # Pillow warns about defects it recovers from (corrupt EXIF, ...): the pixels are
            # fine and the caller cannot act on it, so no warning may escape.
            warnings.simplefilter("ignore")
            _draft(image, keep_side)
            scale = image.size[0] / full_width
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
            array = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(f"corrupt or truncated {image.format} image: {exc}") from exc
    finally:
        image.close()
    height, width = array.shape[:2]
    original = (round(width / scale), round(height / scale))
    if min(original) < limits.min_side:
        raise ImageTooSmallError(
            f"image is {original[0]}x{original[1]}; the shorter side must be at least "
            f"{limits.min_side} px"
        )
    return DecodedImage(array, scale, original)


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """The photo opened lazily (header only), after the checks that need no decoding."""
    if not data:
        raise InvalidImageError("empty input: no bytes")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    return _open(data, limits)


def decoded_pixels(data: bytes, limits: ImageLimits | None = None, *, keep_side: int = 0) -> int:
    """How many pixels ``decode_image_reduced`` would decode ``data`` to, from its header
    alone: what a request of many photos will cost before any of them is decoded.

    Raises what decoding would for the header (``InvalidImageError``, ``ImageTooLargeError``).
    """
    limits = limits or ImageLimits()
    image = _open_checked(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _draft(image, keep_side)
        return image.size[0] * image.size[1]
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(f"corrupt {image.format} image header: {exc}") from exc
    finally:
        image.close()


def _draft(image: Image.Image, keep_side: int) -> None:
    """Ask a JPEG's decoder for 1/2, 1/4 or 1/8 scale, never below ``keep_side`` on the
    longer side; sets ``image.size`` without decoding. Other formats decode in full."""
    longest = max(image.size)
    if keep_side and image.format in ("JPEG", "MPO") and longest >= 2 * keep_side:
        ratio = keep_side / longest
        image.draft("RGB", (round(image.size[0] * ratio), round(image.size[1] * ratio)))


def load_image(path: str | Path, limits: ImageLimits | None = None) -> np.ndarray:
    """``read_image_bytes`` then ``decode_image``."""
    return decode_image(read_image_bytes(path, limits), limits)


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open lazily (header only) and apply the format and pixel-count limits."""
    with warnings.catch_warnings():
        # Recoverable header defects (e.g. a malformed MPO index) only warn: keep them quiet,
        # but a decompression-bomb warning becomes an error.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageTooLargeError(f"image has too many pixels: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise InvalidImageError("not an image, or an unsupported format") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidImageError(f"cannot read image header: {exc}") from exc
    if image.format not in SUPPORTED_FORMATS:
        fmt = image.format
        image.close()
        raise InvalidImageError(f"unsupported image format {fmt}")
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    # Image.open leaves multi-frame files (GIF, WebP, MPO, TIFF) on their first frame. Do not
    # ask for n_frames: it walks every frame of an untrusted file, outside the error handling.
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size else 0.0
        scale = 255.0 / top if top > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


_MIME = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
}


def content_type(data: bytes) -> str:
    """MIME type of already-decoded-once image bytes, from the header (for storing them)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _MIME.get(image.format or "", "application/octet-stream")
    except (OSError, ValueError, SyntaxError):
        return "application/octet-stream"
