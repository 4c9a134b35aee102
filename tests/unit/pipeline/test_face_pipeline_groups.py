"""``FacePipeline.process_many`` streams: photos are decoded and detected a bounded group at a
time, so a long list never holds every decoded image at once, and each photo still gets its
own outcome, in place. A stand-in detector and embedder keep it to the bookkeeping: every
photo is one flat colour, and its "embedding" is the mean of its aligned chip."""

from __future__ import annotations

import io
import weakref
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from facegate.errors import FaceGateError, InvalidImageError
from facegate.pipeline import face_pipeline
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import Settings
from facegate.types import AlignedFace, Detection, FaceResult

SIDE = 100
LANDMARKS = np.array([[35, 40], [65, 40], [50, 55], [38, 70], [62, 70]], dtype=np.float32)
CHIP = 16


def flat_png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


class Live:
    """Counts the decoded images still alive; ``peak`` is the most alive at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def track(self, pixels: np.ndarray) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        weakref.finalize(pixels, self._gone)

    def _gone(self) -> None:
        self.now -= 1


class OneFaceDetector:
    """One centred face per image; records the size of every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        self.batches.append(len(images))
        face = Detection(box=(10.0, 10.0, 90.0, 90.0), score=0.99, landmarks=LANDMARKS)
        return [[face] for _ in images]


class MeanEmbedder:
    model_id = "mean"

    @property
    def inputs(self) -> list[tuple[np.ndarray, int]]:
        return [(LANDMARKS * CHIP / SIDE, CHIP)]

    def embed_faces(self, faces: Sequence[AlignedFace]) -> np.ndarray:
        return np.array([[float(f.chip.mean())] for f in faces], dtype=np.float32).reshape(-1, 1)


@pytest.fixture
def live(monkeypatch) -> Live:
    counter = Live()
    decode = face_pipeline.decode_image_reduced

    def tracked(*args, **kwargs):  # type: ignore[no-untyped-def]
        decoded = decode(*args, **kwargs)
        counter.track(decoded.pixels)
        return decoded

    monkeypatch.setattr(face_pipeline, "decode_image_reduced", tracked)
    return counter


def pipeline() -> tuple[FacePipeline, OneFaceDetector]:
    detector = OneFaceDetector()
    built = FacePipeline(Settings(), detector=detector, embedder=MeanEmbedder())  # type: ignore[arg-type]
    return built, detector


def test_a_long_list_holds_at_most_one_group_decoded(live):
    processor, detector = pipeline()
    processor.group_photos = 4
    sources: list[bytes] = [flat_png(5 * i) for i in range(40)]
    sources[17] = b"not an image"
    results = processor.process_many(sources)
    assert live.peak <= 4, f"{live.peak} decoded images were alive at once"
    assert max(detector.batches) <= 4 and sum(detector.batches) == 39
    assert isinstance(results[17], InvalidImageError)
    for i, result in enumerate(results):
        if i != 17:
            assert isinstance(result, FaceResult), (i, result)
            assert result.primary.vector[0] == pytest.approx(5 * i, abs=0.5), i
            assert result.image_size == (SIDE, SIDE)


def test_a_group_ends_at_its_pixel_budget(live):
    processor, detector = pipeline()
    processor.group_pixels = 3 * SIDE * SIDE
    results = processor.process_many([flat_png(10 * i) for i in range(10)])
    assert detector.batches == [3, 3, 3, 1]
    assert live.peak <= 3
    assert not any(isinstance(r, FaceGateError) for r in results)
