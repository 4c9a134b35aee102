"""The pipeline on real photos: right decisions, right errors, right coordinates."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from facegate.errors import FaceTooSmallError, MultipleFacesError, NoFaceError
from facegate.types import FaceResult

NAMES = ["person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2"]


def _identity(name: str) -> str:
    return name.rsplit("_", 1)[0] if name.startswith("person") else name


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(faces_dir) -> dict[str, np.ndarray]:
    return {n: np.asarray(Image.open(faces_dir / f"{n}.jpg").convert("RGB")) for n in NAMES}


@pytest.fixture(scope="module")
def embeddings(pipeline, faces_dir) -> dict[str, np.ndarray]:
    results = pipeline.process_many([faces_dir / f"{n}.jpg" for n in NAMES])
    assert all(isinstance(r, FaceResult) for r in results), results
    return {n: r.primary.vector for n, r in zip(NAMES, results, strict=True)}


def test_embeddings_are_unit_float32(embeddings, pipeline):
    for vector in embeddings.values():
        assert vector.dtype == np.float32 and vector.shape == (pipeline.card.embedding_dim,)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_same_people_match_and_impostors_do_not(embeddings, pipeline):
    for a, b in itertools.combinations(NAMES, 2):
        similarity = float(np.dot(embeddings[a], embeddings[b]))
        same = _identity(a) == _identity(b)
        assert (similarity >= pipeline.threshold) == same, (a, b, similarity)


def test_verify_returns_auditable_result(pipeline, faces_dir):
    result = pipeline.verify(faces_dir / "person_b_1.jpg", faces_dir / "person_b_2.jpg")
    assert result.match and result.similarity > 0.6
    assert result.model_id == pipeline.model_id and result.threshold == pipeline.threshold
    assert all(face is not None and face.score > 0.9 for face in result.faces)


def test_batched_and_single_embeddings_agree(pipeline, faces_dir, embeddings):
    single = pipeline.process(faces_dir / "impostor_2.jpg").primary.vector
    assert float(np.dot(single, embeddings["impostor_2"])) > 0.9999


def test_two_faces_follow_the_policy(pipeline, photos):
    left, right = photos["person_a_2"], photos["person_b_1"]
    height = min(left.shape[0], right.shape[0])
    pair = np.concatenate([left[:height], right[:height]], axis=1)
    data = _jpeg(pair)
    everyone = pipeline.process(data, policy="all")
    assert len(everyone.detections) == 2 and len(everyone.embeddings) == 2
    largest = pipeline.process(data, policy="largest")
    assert len(largest.embeddings) == 1
    assert largest.primary.detection.area == max(d.area for d in everyone.detections)
    with pytest.raises(MultipleFacesError) as info:
        pipeline.process(data, policy="reject")
    assert info.value.code == "multiple_faces"


def test_photo_without_face_is_no_face(pipeline, photos):
    clothes = photos["person_b_1"][650:, :]
    with pytest.raises(NoFaceError) as info:
        pipeline.process(_jpeg(clothes))
    assert info.value.code == "no_face"


def test_tiny_face_is_face_too_small(pipeline, photos):
    photo = photos["person_a_2"]
    small = Image.fromarray(photo).resize((60, round(60 * photo.shape[0] / photo.shape[1])))
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(small, (150, 140))
    with pytest.raises(FaceTooSmallError) as info:
        pipeline.process(np.asarray(canvas))
    assert info.value.code == "face_too_small"


def test_large_photo_is_downscaled_and_mapped_back(pipeline, photos):
    """A 12 MP upscale is detected at 1024 px and reported in its own pixel coordinates:
    the same face as in the original, scaled by the upscale factor."""
    original = photos["person_b_2"]
    factor = 4
    size = (original.shape[1] * factor, original.shape[0] * factor)
    big = np.asarray(Image.fromarray(original).resize(size))
    assert big.shape[0] * big.shape[1] > 9_000_000
    small_face = pipeline.detector.detect(original)[0]
    big_face = pipeline.detector.detect(big)[0]
    assert _iou(np.array(big_face.box) / factor, np.array(small_face.box)) > 0.85
    face_width = small_face.width
    error = np.abs(big_face.landmarks / factor - small_face.landmarks).max()
    assert error < 0.05 * face_width, error


def test_large_jpeg_decoded_at_reduced_scale_reports_its_own_pixels(pipeline, photos):
    """A 12 MP JPEG is decoded at half scale (DCT scaling) and still answers in its own
    pixels: the same boxes as a full decode, and practically the same embedding."""
    from facegate.pipeline.face_pipeline import FacePipeline
    from facegate.settings import Settings

    original = photos["person_b_2"]
    size = (4000, 3000)
    buffer = io.BytesIO()
    Image.fromarray(original).resize(size).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    full = FacePipeline(
        Settings(decode_keep_side=0), detector=pipeline.detector, embedder=pipeline.embedder
    )
    reduced, whole = pipeline.process(data), full.process(data)
    assert pipeline._decode(data, pipeline.settings.decode_keep_side).scale == 0.5
    assert reduced.image_size == whole.image_size == size
    assert np.abs(np.array(reduced.primary.detection.box) - whole.primary.detection.box).max() < 4
    assert float(reduced.primary.vector @ whole.primary.vector) > 0.99


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


def test_failures_are_returned_in_place(pipeline, faces_dir):
    results = pipeline.process_many([b"", faces_dir / "person_a_1.jpg", b"not an image"])
    assert [getattr(r, "code", "ok") for r in results] == ["invalid_image", "ok", "invalid_image"]


@pytest.mark.parametrize("detector", ["yunet", "mtcnn"])
def test_each_detector_decides_at_the_threshold_calibrated_on_its_crops(detector, faces_dir):
    """The committed calibrations differ by detector; the pipeline picks its own detector's
    (the two records are distinct, so a pipeline that ignored the detector fails one case)."""
    from facegate.models.assets import load_calibration
    from facegate.pipeline.face_pipeline import FacePipeline
    from facegate.settings import Settings

    pipeline = FacePipeline(Settings(detector=detector))
    record = load_calibration(pipeline.model_id, detector)
    assert load_calibration(pipeline.model_id, "yunet") != load_calibration(
        pipeline.model_id, "mtcnn"
    )
    assert pipeline.threshold == record["threshold"]
    assert pipeline.card.calibration == record
    assert pipeline.detector_name == detector
    result = pipeline.verify(faces_dir / "person_a_1.jpg", faces_dir / "person_a_2.jpg")
    assert result.match and result.threshold == record["threshold"]
