"""Alignment: 5-point similarity transform onto a model's face template.

A least-squares similarity (Umeyama) maps MTCNN's landmarks onto the template the embedding
network was trained with (the templates are the models', in ``facegate.models.templates``);
the warp itself is Pillow's affine transform, so this module needs no torch and no OpenCV.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``(2, 3)`` matrix taking ``src`` points onto ``dst`` points.

    Umeyama (1991): rotation + uniform scale + translation, reflection excluded, so a face
    is never mirrored to fit the template.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    scale = float((s * d).sum() / var_src) if var_src > 1e-12 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(
    image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: int
) -> np.ndarray:
    """Warp ``(H, W, 3) uint8`` onto ``template``: returns ``(size, size, 3) uint8``.

    Bilinear sampling; pixels outside the photo are black, as in the reference InsightFace
    alignment.
    """
    matrix = estimate_similarity(landmarks, template)
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    # Pillow samples at pixel centres: shift so that integer coordinates mean centres, like
    # OpenCV's warpAffine which the templates were made with.
    shift_in = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    shift_out = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    full = shift_in @ np.vstack([inverse, [0.0, 0.0, 1.0]]) @ shift_out
    coeffs = tuple(float(v) for v in full[:2].reshape(-1))
    warped = Image.fromarray(image).transform(
        (size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.uint8)
