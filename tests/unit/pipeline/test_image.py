"""Decoding on real photos: every input is a real face photo or re-encoded from one here.

Run with ``-W error``: a warning escaping ``decode_image`` fails the test that caused it.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from facegate.errors import ImageTooLargeError, ImageTooSmallError, InvalidImageError
from facegate.pipeline.image import (
    SUPPORTED_FORMATS,
    ImageLimits,
    decode_image,
    decode_image_reduced,
    load_image,
    read_image_bytes,
)

REPO = Path(__file__).resolve().parents[3]
#: The team's shared photos beside the checkout, else the copies ``make setup`` fetches.
FACES = next(
    (
        c
        for c in (REPO.parent / "shared" / "faces", REPO / ".cache" / "testdata" / "faces")
        if (c / "impostor_1.jpg").is_file()
    ),
    REPO.parent / "shared" / "faces",
)
PHOTO = FACES / "impostor_1.jpg"  # 682x785: not square, so a wrong rotation changes the shape

pytestmark = pytest.mark.skipif(
    not PHOTO.is_file(), reason=f"real test photos not found: {PHOTO} (run 'make setup')"
)


# ---------------------------------------------------------------------------- helpers


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def raw_pixels(data: bytes, mode: str = "RGB") -> np.ndarray:
    """Pixels as stored, straight from Pillow: no EXIF rotation, no frame handling."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(mode))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def assert_rgb_array(array: np.ndarray, shape: tuple[int, int] | None = None) -> None:
    assert isinstance(array, np.ndarray)
    assert array.ndim == 3 and array.shape[2] == 3, array.shape
    assert array.dtype == np.uint8
    assert array.flags["C_CONTIGUOUS"]
    if shape is not None:
        assert array.shape[:2] == shape


def assert_error(exc_info: pytest.ExceptionInfo, cls: type, code: str) -> None:
    assert type(exc_info.value) is cls
    assert exc_info.value.code == code
    assert exc_info.value.to_dict()["code"] == code


@pytest.fixture(scope="module")
def photo_bytes() -> bytes:
    return PHOTO.read_bytes()


@pytest.fixture(scope="module")
def photo(photo_bytes: bytes) -> np.ndarray:
    """The upright RGB decode of the real photo: the reference for every re-encoding."""
    return raw_pixels(photo_bytes)


@pytest.fixture(scope="module")
def photo_image(photo: np.ndarray) -> Image.Image:
    return Image.fromarray(photo)


# ---------------------------------------------------------------------------- real photos


@pytest.mark.parametrize("path", sorted(FACES.glob("*.jpg")), ids=lambda p: p.name)
def test_real_photos_decode(path: Path) -> None:
    data = path.read_bytes()
    array = decode_image(data)
    with Image.open(path) as image:
        width, height = image.size
    assert_rgb_array(array, (height, width))
    assert np.array_equal(array, raw_pixels(data))
    assert np.array_equal(load_image(path), array)
    assert read_image_bytes(path) == data


# ---------------------------------------------------------------------------- re-encodings


LOSSLESS = 0.0
#: format -> (save options, max mean |diff| against the photo)
ENCODINGS = {
    "PNG": ({}, LOSSLESS),
    "BMP": ({}, LOSSLESS),
    "TIFF": ({}, LOSSLESS),
    "TIFF-lzw": ({"compression": "tiff_lzw"}, LOSSLESS),
    "WEBP-lossless": ({"lossless": True}, LOSSLESS),
    "WEBP": ({"quality": 90}, 4.0),
    "JPEG": ({"quality": 90}, 3.0),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_formats(name: str, photo: np.ndarray, photo_image: Image.Image) -> None:
    fmt = name.split("-")[0]
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    options, tolerance = ENCODINGS[name]
    array = decode_image(encode(photo_image, fmt, **options))
    assert_rgb_array(array, photo.shape[:2])
    assert mean_abs_diff(array, photo) <= tolerance


def test_grayscale_l(photo_image: Image.Image) -> None:
    gray = photo_image.convert("L")
    array = decode_image(encode(gray, "PNG"))
    assert_rgb_array(array, (gray.height, gray.width))
    expected = np.asarray(gray)
    for channel in range(3):
        assert np.array_equal(array[..., channel], expected)


def test_grayscale_16_bit(photo_image: Image.Image) -> None:
    gray = np.asarray(photo_image.convert("L"))
    assert gray.max() == 255  # full range, so 8 -> 16 -> 8 bits must round-trip
    deep = Image.fromarray(gray.astype(np.uint16) * 257)
    data = encode(deep, "PNG")
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode == "I;16"
    array = decode_image(data)
    assert_rgb_array(array, gray.shape)
    for channel in range(3):
        assert np.abs(array[..., channel].astype(int) - gray).max() <= 1


def test_cmyk_jpeg(photo: np.ndarray, photo_image: Image.Image) -> None:
    data = encode(photo_image.convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode == "CMYK"
    array = decode_image(data)
    assert_rgb_array(array, photo.shape[:2])
    assert mean_abs_diff(array, photo) < 4.0  # not inverted (Adobe CMYK), not garbage


def test_rgba_png_composited_on_white(photo: np.ndarray) -> None:
    height, width = photo.shape[:2]
    alpha = np.full((height, width), 255, np.uint8)
    alpha[:, : width // 3] = 0  # transparent: whatever RGB is there must become white
    alpha[:, width // 3 : 2 * width // 3] = 128  # half transparent
    rgb = photo.copy()
    rgb[:, : width // 3] = 0
    array = decode_image(encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"))
    assert_rgb_array(array, (height, width))
    assert (array[:, : width // 3] == 255).all()
    half = photo[:, width // 3 : 2 * width // 3].astype(int)
    expected_half = (half * 128 + 255 * 127) / 255
    assert np.abs(array[:, width // 3 : 2 * width // 3] - expected_half).max() <= 1.0
    assert np.array_equal(array[:, 2 * width // 3 :], photo[:, 2 * width // 3 :])


def test_la_png_composited_on_white(photo_image: Image.Image) -> None:
    gray = np.asarray(photo_image.convert("L"))
    alpha = np.full(gray.shape, 255, np.uint8)
    alpha[: gray.shape[0] // 2] = 0
    array = decode_image(encode(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"))
    assert_rgb_array(array, gray.shape)
    assert (array[: gray.shape[0] // 2] == 255).all()
    assert np.array_equal(array[gray.shape[0] // 2 :, :, 1], gray[gray.shape[0] // 2 :])


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt: str, photo_image: Image.Image) -> None:
    palette_image = photo_image.quantize(colors=255)  # index 255 stays free
    pixels = np.asarray(palette_image).copy()
    height, width = pixels.shape
    pixels[: height // 4] = 255  # a band of the transparent index
    palette = [*palette_image.getpalette()[: 255 * 3], 0, 0, 0]  # transparent entry: black
    image = Image.fromarray(pixels, "P")
    image.putpalette(palette)
    data = encode(image, fmt, transparency=255)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    array = decode_image(data)
    assert_rgb_array(array, (height, width))
    assert (array[: height // 4] == 255).all()  # white, not the black palette entry
    expected = np.asarray(image.convert("RGB"))[height // 4 :]
    assert np.array_equal(array[height // 4 :], expected)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("GIF", {"duration": 100, "loop": 0}),
        ("WEBP", {"lossless": True, "duration": 100}),
        ("MPO", {}),
        ("TIFF", {}),
    ],
    ids=["GIF", "WEBP", "MPO", "TIFF-multipage"],
)
def test_animation_uses_first_frame(fmt: str, options: dict, photo_image: Image.Image) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    first = photo_image
    second = photo_image.transpose(Image.Transpose.ROTATE_180).point(lambda v: 255 - v)
    if fmt == "GIF":  # GIF is 8-bit palette: quantize here so the expected pixels are exact
        first = first.quantize(colors=256)
        second = second.quantize(colors=256)
    data = encode(first, fmt, save_all=True, append_images=[second], **options)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.n_frames == 2
    array = decode_image(data)
    assert_rgb_array(array, (first.height, first.width))
    to_first = mean_abs_diff(array, np.asarray(first.convert("RGB")))
    to_second = mean_abs_diff(array, np.asarray(second.convert("RGB")))
    assert to_first <= (3.0 if fmt == "MPO" else 0.0)  # MPO frames are JPEG
    assert to_second > 40.0


# ---------------------------------------------------------------------------- EXIF orientation

#: EXIF orientation -> how the stored pixels must be transformed to be upright.
ORIENTATIONS = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, -1),  # stored rotated 90 degrees counter-clockwise
    7: lambda a: np.rot90(np.transpose(a, (1, 0, 2)), 2),
    8: lambda a: np.rot90(a, 1),  # stored rotated 90 degrees clockwise
}


def with_orientation(image: Image.Image, fmt: str, orientation: int, **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation(fmt: str, orientation: int, photo_image: Image.Image) -> None:
    data = with_orientation(photo_image, fmt, orientation)
    stored = raw_pixels(data)  # what the file holds, before any rotation
    expected = np.ascontiguousarray(ORIENTATIONS[orientation](stored))
    array = decode_image(data)
    assert_rgb_array(array, expected.shape[:2])
    if orientation in (5, 6, 7, 8):
        assert array.shape[:2] == (photo_image.width, photo_image.height)
    assert mean_abs_diff(array, expected) <= 0.5
    # The tolerance tells orientations apart: every other same-shape transform is far off.
    for other, transform in ORIENTATIONS.items():
        candidate = transform(stored)
        if other != orientation and candidate.shape == array.shape:
            assert mean_abs_diff(array, candidate) > 10.0, other


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_matches_rotated_upright(orientation: int, photo: np.ndarray) -> None:
    """A camera-style file: upright scene stored sideways plus the tag that undoes it."""
    undo = {3: 2, 6: 1, 8: -1}[orientation]  # stored = rot90(upright, undo)
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(photo, undo)))
    array = decode_image(with_orientation(stored, "JPEG", orientation, quality=95))
    assert_rgb_array(array, photo.shape[:2])
    assert mean_abs_diff(array, photo) < 3.0
    assert mean_abs_diff(array, np.rot90(photo, 2)) > 10.0


@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\x00\x00II*\x00\xff\xff\x00\x00",  # IFD offset past the end
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",  # 65535 entries, none present
        b"Exif\x00\x00" + bytes(range(64)),
    ],
    ids=["bad-ifd-offset", "bad-entry-count", "garbage"],
)
def test_corrupt_exif_is_ignored(exif: bytes, photo: np.ndarray, photo_image: Image.Image) -> None:
    array = decode_image(encode(photo_image, "JPEG", quality=95, exif=exif))
    assert_rgb_array(array, photo.shape[:2])
    assert mean_abs_diff(array, photo) < 3.0


def test_malformed_mpo_index_reads_as_jpeg(photo: np.ndarray, photo_image: Image.Image) -> None:
    """Pillow warns, at open, that a broken MP index makes it a plain JPEG: no warning leaks."""
    data = bytearray(encode(photo_image, "MPO", save_all=True, append_images=[photo_image]))
    index = data.index(b"MPF\x00")
    data[index + 8 : index + 12] = b"\xff\xff\xff\xff"  # first IFD offset: nowhere
    array = decode_image(bytes(data))
    assert_rgb_array(array, photo.shape[:2])
    assert mean_abs_diff(array, photo) < 3.0


# ---------------------------------------------------------------------------- invalid input


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _zeroed_scan(data: bytes) -> bytes:
    start = data.index(b"\xff\xda")  # start of scan
    middle = start + (len(data) - start) // 2
    corrupted = bytearray(data)
    corrupted[middle : middle + 512] = bytes(512)
    return bytes(corrupted)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda jpeg: b"", id="empty"),
        pytest.param(lambda jpeg: np.random.default_rng(0).bytes(4096), id="random"),
        pytest.param(lambda jpeg: (FACES / "CREDITS.md").read_bytes(), id="text-file"),
        pytest.param(lambda jpeg: b"\xff\xd8\xff\xe0" + bytes(4096), id="jpeg-magic-zeros"),
        pytest.param(lambda jpeg: jpeg[:2000], id="jpeg-header-only"),
        pytest.param(_truncated, id="jpeg-truncated-half"),
        pytest.param(lambda jpeg: jpeg[: len(jpeg) - 1000], id="jpeg-truncated-end"),
    ],
)
def test_invalid_bytes(make, photo_bytes: bytes) -> None:
    with pytest.raises(InvalidImageError) as exc_info:
        decode_image(make(photo_bytes))
    assert_error(exc_info, InvalidImageError, "invalid_image")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "TIFF", "BMP", "MPO"])
def test_truncated_formats(fmt: str, photo_image: Image.Image) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    options = {"save_all": True, "append_images": [photo_image.rotate(180)]}
    data = encode(photo_image, fmt, **(options if fmt in ("GIF", "MPO") else {}))
    with pytest.raises(InvalidImageError) as exc_info:
        decode_image(data[: len(data) // 4])  # inside the first frame of two-frame files
    assert_error(exc_info, InvalidImageError, "invalid_image")


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "MPO", "TIFF", "PNG"])
def test_truncated_in_later_frame(fmt: str, photo: np.ndarray, photo_image: Image.Image) -> None:
    """Three frames cut mid-way: the first frame may still decode; any other outcome is
    ``InvalidImageError``, never a raw exception or a warning (TIFF used to warn)."""
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    others = [photo_image.rotate(180), photo_image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
    data = encode(photo_image, fmt, save_all=True, append_images=others)
    for cut in (0.5, 0.75):
        try:
            array = decode_image(data[: int(len(data) * cut)])
        except InvalidImageError as exc:
            assert exc.code == "invalid_image"
        else:
            assert_rgb_array(array, photo.shape[:2])


def test_corrupted_jpeg_scan(photo: np.ndarray, photo_image: Image.Image) -> None:
    """libjpeg decodes zeroed scan data as (wrong) pixels; either outcome is fine, a crash not."""
    data = _zeroed_scan(encode(photo_image, "JPEG", quality=90))
    try:
        array = decode_image(data)
    except InvalidImageError as exc:
        assert exc.code == "invalid_image"
    else:
        assert_rgb_array(array, photo.shape[:2])


def test_corrupted_png_data(photo_image: Image.Image) -> None:
    data = bytearray(encode(photo_image, "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 1000 : start + 3000] = bytes(2000)
    with pytest.raises(InvalidImageError) as exc_info:
        decode_image(bytes(data))
    assert_error(exc_info, InvalidImageError, "invalid_image")


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "PCX", "TGA", "PDF"])
def test_unsupported_format(fmt: str, photo_image: Image.Image) -> None:
    assert fmt not in SUPPORTED_FORMATS
    image = photo_image.resize((200, 200)) if fmt == "ICO" else photo_image
    data = encode(image, fmt)
    with pytest.raises(InvalidImageError) as exc_info:
        decode_image(data)
    assert_error(exc_info, InvalidImageError, "invalid_image")


# ---------------------------------------------------------------------------- limits


@pytest.fixture
def forbid_pixel_decoding(monkeypatch: pytest.MonkeyPatch):
    """Once called, any pixel decode fails the test: what follows must use the header alone."""

    def forbidden(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    def forbid() -> None:
        monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
        monkeypatch.setattr(Image.Image, "load", forbidden)

    return forbid


def test_max_bytes(photo_bytes: bytes) -> None:
    with pytest.raises(ImageTooLargeError) as exc_info:
        decode_image(photo_bytes, ImageLimits(max_bytes=len(photo_bytes) - 1))
    assert_error(exc_info, ImageTooLargeError, "image_too_large")
    assert_rgb_array(decode_image(photo_bytes, ImageLimits(max_bytes=len(photo_bytes))))


def test_max_pixels_from_header(photo_bytes: bytes, photo: np.ndarray, forbid_pixel_decoding):
    pixels = photo.shape[0] * photo.shape[1]
    forbid_pixel_decoding()
    with pytest.raises(ImageTooLargeError) as exc_info:
        decode_image(photo_bytes, ImageLimits(max_pixels=pixels - 1))
    assert_error(exc_info, ImageTooLargeError, "image_too_large")


def test_max_pixels_boundary(photo_bytes: bytes, photo: np.ndarray) -> None:
    pixels = photo.shape[0] * photo.shape[1]
    assert_rgb_array(decode_image(photo_bytes, ImageLimits(max_pixels=pixels)))


@pytest.mark.parametrize(
    "side",
    [
        7_000,  # 49 Mpx: over our 40 Mpx default, under Pillow's own warning threshold
        10_000,  # 100 Mpx: Pillow's DecompressionBombWarning
        20_000,  # 400 Mpx: Pillow's DecompressionBombError
    ],
)
def test_decompression_bomb_png(side: int, forbid_pixel_decoding) -> None:
    # One colour, 1 bit per pixel: Pillow builds it in a few MB and it compresses to ~200 KB.
    data = encode(Image.new("1", (side, side)), "PNG", compress_level=1)
    assert len(data) < ImageLimits().max_bytes
    forbid_pixel_decoding()
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as exc_info:
        decode_image(data)
    assert time.perf_counter() - started < 1.0
    assert_error(exc_info, ImageTooLargeError, "image_too_large")


@pytest.mark.parametrize("size", [(60, 300), (300, 60), (79, 79)])
def test_too_small(size: tuple[int, int], photo_image: Image.Image) -> None:
    data = encode(photo_image.resize(size), "PNG")
    with pytest.raises(ImageTooSmallError) as exc_info:
        decode_image(data)
    assert_error(exc_info, ImageTooSmallError, "image_too_small")


def test_min_side_boundary(photo_image: Image.Image) -> None:
    data = encode(photo_image.resize((80, 120)), "PNG")
    assert_rgb_array(decode_image(data), (120, 80))
    with pytest.raises(ImageTooSmallError) as exc_info:
        decode_image(data, ImageLimits(min_side=81))
    assert_error(exc_info, ImageTooSmallError, "image_too_small")


# ---------------------------------------------------------------------------- files


def test_read_missing_file(tmp_path: Path) -> None:
    for call in (read_image_bytes, load_image):
        with pytest.raises(InvalidImageError) as exc_info:
            call(tmp_path / "missing.jpg")
        assert_error(exc_info, InvalidImageError, "invalid_image")


def test_read_directory(tmp_path: Path) -> None:
    for call in (read_image_bytes, load_image):
        with pytest.raises(InvalidImageError) as exc_info:
            call(tmp_path)
        assert_error(exc_info, InvalidImageError, "invalid_image")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero on this system")
def test_read_endless_device() -> None:
    """/dev/zero reports size 0 and never ends: it must be refused, not read forever."""
    with pytest.raises(InvalidImageError) as exc_info:
        read_image_bytes("/dev/zero", ImageLimits(max_bytes=1024))
    assert_error(exc_info, InvalidImageError, "invalid_image")


def test_read_max_bytes(tmp_path: Path, photo_bytes: bytes) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo_bytes)
    for call in (read_image_bytes, load_image):
        with pytest.raises(ImageTooLargeError) as exc_info:
            call(path, ImageLimits(max_bytes=len(photo_bytes) - 1))
        assert_error(exc_info, ImageTooLargeError, "image_too_large")
    assert read_image_bytes(path, ImageLimits(max_bytes=len(photo_bytes))) == photo_bytes


def test_load_image_str_path_and_text_file() -> None:
    assert_rgb_array(load_image(str(PHOTO)))
    with pytest.raises(InvalidImageError) as exc_info:
        load_image(FACES / "CREDITS.md")
    assert_error(exc_info, InvalidImageError, "invalid_image")


@pytest.mark.parametrize(
    ("size", "keep", "fmt", "scale"),
    [
        ((4000, 3000), 2000, "JPEG", 0.5),
        ((4000, 3000), 900, "JPEG", 0.25),
        ((4000, 3000), 2100, "JPEG", 1.0),  # half would go under keep_side
        ((4000, 3000), 0, "JPEG", 1.0),
        ((4000, 3000), 2000, "PNG", 1.0),  # no DCT scaling outside JPEG
    ],
)
def test_reduced_decode_of_large_jpegs(size, keep, fmt, scale, photo_image: Image.Image) -> None:
    big = photo_image.resize(size)
    decoded = decode_image_reduced(
        encode(big, fmt, **({"quality": 90} if fmt == "JPEG" else {})), keep_side=keep
    )
    assert decoded.scale == scale and decoded.original_size == size
    assert decoded.pixels.shape == (round(size[1] * scale), round(size[0] * scale), 3)
    expected = np.asarray(big.resize(decoded.pixels.shape[1::-1], Image.Resampling.BOX))
    assert mean_abs_diff(decoded.pixels, expected) < 3.0  # the same picture, smaller


def test_reduced_decode_reports_the_upright_original_size(photo_image: Image.Image) -> None:
    sideways = photo_image.resize((4000, 3000))
    decoded = decode_image_reduced(with_orientation(sideways, "JPEG", 6), keep_side=1000)
    assert decoded.original_size == (3000, 4000) and decoded.scale == 0.25
    assert decoded.pixels.shape == (1000, 750, 3)
