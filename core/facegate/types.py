"""Core value types shared by every pipeline step. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from facegate.errors import FaceGateError
    from facegate.models.card import ModelCard
    from facegate.settings import MultiFacePolicy

#: A photo as the pipeline takes it: encoded bytes, a path, or an RGB ``uint8`` array.
ImageSource = bytes | str | Path | np.ndarray


@dataclass(frozen=True)
class Detection:
    """One detected face in original-image pixel coordinates.

    ``box`` is ``(x1, y1, x2, y2)``; ``landmarks`` is ``(5, 2) float32`` in MTCNN's order:
    the eye on the image's left, the other eye, nose, left then right mouth corner.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def scaled(self, factor: float) -> Detection:
        """The same face in a frame ``factor`` times as large (box and landmarks)."""
        x1, y1, x2, y2 = self.box
        return Detection(
            box=(x1 * factor, y1 * factor, x2 * factor, y2 * factor),
            score=self.score,
            landmarks=(self.landmarks * factor).astype(np.float32),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


@dataclass(frozen=True)
class AlignedFace:
    """A face warped onto a model's template: ``chip`` is ``(S, S, 3) uint8`` RGB.

    A fused model runs several networks, each on its own template: ``chips`` holds one chip
    per network, in the model's order (``chip`` is the first of them).
    """

    chip: np.ndarray = field(repr=False)
    detection: Detection
    face_index: int
    chips: tuple[np.ndarray, ...] = field(default=(), repr=False)

    @property
    def all_chips(self) -> tuple[np.ndarray, ...]:
        return self.chips or (self.chip,)


@dataclass(frozen=True)
class FaceEmbedding:
    """An embedding with where it came from: ``vector`` is ``(D,) float32``, L2-normalised."""

    vector: np.ndarray = field(repr=False)
    detection: Detection
    face_index: int
    model_id: str


@dataclass(frozen=True)
class FaceResult:
    """One photo's outcome: every detected face, and embeddings of the faces the policy kept."""

    detections: list[Detection]
    embeddings: list[FaceEmbedding]
    image_size: tuple[int, int]

    @property
    def primary(self) -> FaceEmbedding:
        """The first kept face (the largest under ``largest`` and ``reject``)."""
        return self.embeddings[0]


class FaceProcessor(Protocol):
    """What the batch jobs and the service need of a face pipeline.

    :class:`facegate.pipeline.face_pipeline.FacePipeline` is the implementation (torch); light
    modules depend on this protocol instead, so that importing them never imports torch.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def card(self) -> ModelCard: ...

    @property
    def threshold(self) -> float: ...

    @property
    def detector_name(self) -> str:
        """The detector that finds and aligns the faces (``FACEGATE_DETECTOR``)."""
        ...

    def warm_up(self) -> None: ...

    def process(self, source: ImageSource, policy: MultiFacePolicy | None = None) -> FaceResult:
        """One photo: every detected face, and embeddings of those ``policy`` keeps."""
        ...

    def process_many(
        self, sources: Sequence[ImageSource], policy: MultiFacePolicy | None = None
    ) -> list[FaceResult | FaceGateError]:
        """Many photos, batched; each photo's failure comes back in place as its error."""
        ...
