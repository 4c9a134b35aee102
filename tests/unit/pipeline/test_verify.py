"""Verification maths: unit rows, cosine similarity, the decision at a threshold, and the
refusal to compare embeddings of different sizes (which come from different models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests_support import unit_rows

from facegate.errors import ModelMismatchError
from facegate.pipeline.verify import (
    VerificationResult,
    cosine_similarity,
    l2_normalise,
    pairwise_cosine,
    verify_embeddings,
)
from facegate.types import Detection

DIM = 128


def _detection(x: float) -> Detection:
    landmarks = np.array([[x + 10, 20], [x + 30, 20], [x + 20, 30], [x + 12, 40], [x + 28, 40]])
    return Detection(box=(x, 5.0, x + 40.0, 55.0), score=0.9987654, landmarks=landmarks)


# ---------------------------------------------------------------------------- l2_normalise


def test_l2_normalise_gives_unit_float32_rows_in_the_same_direction():
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((6, DIM)) * rng.uniform(0.1, 50.0, (6, 1))
    unit = l2_normalise(raw)
    assert unit.dtype == np.float32 and unit.shape == raw.shape
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit * np.linalg.norm(raw, axis=1, keepdims=True), raw, rtol=1e-5)
    np.testing.assert_allclose(l2_normalise(raw[2]), unit[2], atol=1e-7)  # one (D,) vector


def test_l2_normalise_leaves_an_all_zero_row_zero_without_nan():
    rows = np.zeros((3, 4), np.float32)
    rows[1] = [3.0, 0.0, 4.0, 0.0]
    unit = l2_normalise(rows)  # no divide-by-zero warning: warnings are errors here
    np.testing.assert_array_equal(unit[[0, 2]], 0.0)
    np.testing.assert_allclose(unit[1], [0.6, 0.0, 0.8, 0.0], atol=1e-7)


# ---------------------------------------------------------------------------- cosine_similarity


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 0.0], [1.0, 0.0], 1.0),
        ([1.0, 0.0], [-2.0, 0.0], -1.0),
        ([1.0, 0.0], [0.0, 5.0], 0.0),
        ([1.0, 0.0], [1.0, 1.0], 2**-0.5),
        ([3.0, 4.0], [4.0, 3.0], 24 / 25),
    ],
)
def test_cosine_similarity_of_known_angles(a, b, expected):
    got = cosine_similarity(np.array(a), np.array(b))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-6)
    assert cosine_similarity(np.array(b), np.array(a)) == pytest.approx(got, abs=1e-7)


def test_cosine_similarity_takes_raw_vectors_and_rows():
    rng = np.random.default_rng(1)
    a, b = unit_rows(rng, 2, DIM)
    expected = float(a.astype(np.float64) @ b.astype(np.float64))
    assert cosine_similarity(a, b) == pytest.approx(expected, abs=1e-6)
    assert cosine_similarity(7.5 * a, 0.01 * b) == pytest.approx(expected, abs=1e-6)
    assert cosine_similarity(a[None, :], b) == pytest.approx(expected, abs=1e-6)  # (1, D)


def test_cosine_similarity_of_a_zero_vector_is_zero_not_nan():
    assert cosine_similarity(np.zeros(DIM), np.ones(DIM)) == 0.0


def test_cosine_similarity_refuses_embeddings_of_different_sizes():
    with pytest.raises(ModelMismatchError, match="128 vs 256") as info:
        cosine_similarity(np.ones(128), np.ones(256))
    assert info.value.code == "model_mismatch"


# ---------------------------------------------------------------------------- pairwise_cosine


def test_pairwise_cosine_is_cosine_similarity_row_by_row():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((9, DIM)) * 3.0
    b = rng.standard_normal((9, DIM))
    b[4] = -a[4]
    got = pairwise_cosine(a, b)
    assert got.shape == (9,) and got.dtype == np.float32
    expected = [cosine_similarity(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[4] == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize(("rows_b", "dim_b"), [(8, DIM), (9, 256)])
def test_pairwise_cosine_refuses_different_shapes(rows_b, dim_b):
    with pytest.raises(ModelMismatchError) as info:
        pairwise_cosine(np.ones((9, DIM)), np.ones((rows_b, dim_b)))
    assert info.value.code == "model_mismatch"


# ---------------------------------------------------------------------------- the decision


def test_a_similarity_equal_to_the_threshold_is_a_match():
    rng = np.random.default_rng(3)
    a, b = unit_rows(rng, 2, DIM)
    similarity = cosine_similarity(a, b)
    at = verify_embeddings(a, b, threshold=similarity, model_id="sface")
    above = verify_embeddings(
        a, b, threshold=float(np.nextafter(similarity, 2.0)), model_id="sface"
    )
    assert at.match is True and above.match is False
    assert at.similarity == above.similarity == similarity


def test_the_result_records_threshold_model_and_faces():
    rng = np.random.default_rng(4)
    a = unit_rows(rng, 1, DIM)[0]
    b = l2_normalise(a + 0.2 * unit_rows(rng, 1, DIM)[0])
    faces = (_detection(0.0), None)
    result = verify_embeddings(a, b, threshold=0.5, model_id="sface+dlib", faces=faces)
    assert result == VerificationResult(cosine_similarity(a, b), 0.5, True, "sface+dlib", faces)
    assert verify_embeddings(a, -b, threshold=0.5, model_id="sface").faces == (None, None)
    assert verify_embeddings(a, -b, threshold=0.5, model_id="sface").match is False


def test_embeddings_of_different_sizes_get_no_decision():
    with pytest.raises(ModelMismatchError):
        verify_embeddings(np.ones(128), np.ones(512), threshold=0.3, model_id="sface")


def test_to_dict_is_json_with_rounded_figures_and_faces():
    result = VerificationResult(
        similarity=0.123456789,
        threshold=0.3630001234,
        match=False,
        model_id="sface",
        faces=(_detection(100.0), None),
    )
    doc = json.loads(json.dumps(result.to_dict()))  # plain types only: no NumPy scalars
    assert doc == {
        "similarity": 0.123457,
        "threshold": 0.363,
        "match": False,
        "model_id": "sface",
        "faces": [_detection(100.0).to_dict(), None],
    }
    assert doc["faces"][0]["box"] == [100.0, 5.0, 140.0, 55.0]
