"""Alignment: 5-point similarity transform onto a model's face template.

A least-squares similarity (Umeyama) maps MTCNN's landmarks onto the template the embedding
network was trained with; the warp itself is Pillow's affine transform, so this module needs
no torch and no OpenCV.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: The ArcFace / InsightFace 5-point template for 112x112 chips (SFace was trained on it).
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: The 5-point layout of the 150x150 chips dlib's face-recognition ResNet takes (dlib cuts
#: them with ``get_face_chip``), in MTCNN's order: left eye, right eye, nose, left then right
#: mouth corner.
DLIB_150 = np.array(
    [
        [48.567, 46.685],
        [102.462, 46.666],
        [75.309, 78.887],
        [51.759, 105.621],
        [98.948, 105.678],
    ],
    dtype=np.float64,
)


def scaled_template(template: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """The same face layout on a larger or smaller square chip."""
    return template * (to_size / from_size)


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
