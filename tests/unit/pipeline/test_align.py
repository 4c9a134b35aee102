"""Alignment maths: the similarity fit and the warp put landmarks where the template says."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.models.templates import ARCFACE_112, scaled_template
from facegate.pipeline.align import align_face, estimate_similarity


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


@pytest.mark.parametrize(
    "scale,angle,tx,ty", [(1.0, 0.0, 0, 0), (2.5, 0.3, 40, -7), (0.4, -1.2, 3, 90)]
)
def test_estimate_similarity_recovers_exact_transform(scale, angle, tx, ty):
    truth = _similarity(scale, angle, tx, ty)
    src = np.random.default_rng(0).uniform(0, 200, (5, 2))
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(estimate_similarity(src, dst), truth, atol=1e-9)


def test_estimate_similarity_never_reflects():
    mirrored = ARCFACE_112 * [-1, 1] + [112, 0]
    matrix = estimate_similarity(mirrored, ARCFACE_112)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_warp_moves_marked_landmarks_onto_template():
    """Paint dots at known landmarks in a rotated, scaled photo; after alignment the dots
    must sit on the template within a pixel."""
    truth = _similarity(3.0, 0.25, 120, 60)
    landmarks = ARCFACE_112 @ truth[:, :2].T + truth[:, 2]
    image = np.zeros((600, 600, 3), dtype=np.uint8)
    for x, y in landmarks:
        row, col = round(y), round(x)
        image[row - 4 : row + 5, col - 4 : col + 5] = 255
    chip = align_face(image, landmarks, ARCFACE_112, 112)
    assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
    for x, y in ARCFACE_112:
        window = chip[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4, 0].astype(float)
        ys, xs = np.mgrid[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4]
        cy, cx = (window * ys).sum() / window.sum(), (window * xs).sum() / window.sum()
        assert abs(cx - x) < 1.0 and abs(cy - y) < 1.0


def test_scaled_template_keeps_layout():
    big = scaled_template(ARCFACE_112, 112, 160)
    np.testing.assert_allclose(big / 160, ARCFACE_112 / 112)
