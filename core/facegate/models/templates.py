"""Face templates: the 5-point layouts each network's chips are cut to, by the name cards use.

A network is trained on chips aligned to one template, so the template belongs to the model
(its card names it); ``facegate.pipeline.align`` warps a photo onto whichever it is given.
Torch-free.
"""

from __future__ import annotations

import numpy as np

from facegate.errors import ModelNotFoundError
from facegate.models.card import ModelCard

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


#: Face templates by name, as recorded in model cards: ``name -> (template, chip size)``.
TEMPLATES: dict[str, tuple[np.ndarray, int]] = {
    "arcface_112": (ARCFACE_112, 112),
    "arcface_160": (scaled_template(ARCFACE_112, 112, 160), 160),
    "dlib_150": (DLIB_150, 150),
}


def template_for(card: ModelCard) -> tuple[np.ndarray, int]:
    """The 5-point template and chip size the model was trained on."""
    if card.template not in TEMPLATES:
        raise ModelNotFoundError(f"unknown face template {card.template!r} in {card.model_id!r}")
    return TEMPLATES[card.template]
