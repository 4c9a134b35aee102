"""A fake face processor for the service tests: photo bytes map to fixed unit vectors.

:class:`FakeProcessor` is a :class:`facegate.types.FaceProcessor` whose photos are small real
PNGs (the photo store keeps only image types) and whose faces are known vectors, so every
similarity a service test meets is known exactly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from facegate.errors import FaceGateError, InvalidImageError, MultipleFacesError
from facegate.models.card import ModelCard, resolve_threshold
from facegate.types import Detection, FaceEmbedding, FaceResult

DIM = 4
FARS = {"0.01": 0.31, "0.001": 0.47}
CARD_DEFAULT = 0.4


def make_card(model_id: str = "fake", threshold: float = CARD_DEFAULT) -> ModelCard:
    return ModelCard(
        model_id=model_id,
        version="1",
        architecture="fake",
        embedding_dim=DIM,
        input_size=112,
        template="arcface",
        pixel_format="rgb",
        pixel_normalisation="none",
        weights_file="weights.safetensors",
        weights_sha256="ab" * 32,
        threshold=threshold,
        calibration={"far_thresholds": FARS},
    )


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


#: A detector's confidence with more decimals than an answer shows (3).
DET_SCORE = 0.987654


def detection(x: float) -> Detection:
    return Detection(
        box=(x, 10.0, x + 50.0, 70.0), score=DET_SCORE, landmarks=np.zeros((5, 2), np.float32)
    )


class FakeProcessor:
    """Photos are keys of ``faces``: each holds the vectors of its faces, largest first."""

    def __init__(
        self,
        faces: dict[bytes, list[np.ndarray]],
        *,
        card: ModelCard | None = None,
        deployment_far: float | None = None,
    ) -> None:
        self.faces = faces
        self._card = card or make_card()
        self.deployment_far = deployment_far
        self.policies: list[object] = []

    @property
    def model_id(self) -> str:
        return self._card.model_id

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def threshold(self) -> float:
        """As :class:`FacePipeline` decides it: the settings' FAR, else the card's default."""
        return resolve_threshold(self._card, None, self.deployment_far)

    @property
    def detector_name(self) -> str:
        return "yunet"

    def warm_up(self) -> None:
        pass

    def process(self, source: object, policy: object = None) -> FaceResult:
        self.policies.append(policy)
        if not isinstance(source, bytes) or source not in self.faces:
            raise InvalidImageError("not a photo")
        vectors = self.faces[source]
        if policy == "reject" and len(vectors) > 1:
            raise MultipleFacesError(f"{len(vectors)} faces")
        kept = vectors[:1] if policy in ("largest", "reject") else vectors
        detections = [detection(10.0 * i) for i in range(len(vectors))]
        embeddings = [FaceEmbedding(v, detections[i], i, self.model_id) for i, v in enumerate(kept)]
        return FaceResult(detections, embeddings, (640, 480))

    def process_many(
        self, sources: Sequence[object], policy: object = None
    ) -> list[FaceResult | FaceGateError]:
        out: list[FaceResult | FaceGateError] = []
        for source in sources:
            try:
                out.append(self.process(source, policy))
            except FaceGateError as exc:
                out.append(exc)
        return out


def photo(shade: int) -> bytes:
    """A small real PNG (the photo store keeps only image types), one per shade."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(buffer, format="PNG")
    return buffer.getvalue()


ANN_1, ANN_2, ANN_PROBE, BOB, TWO = (photo(shade) for shade in (10, 20, 30, 40, 50))
VECTORS = {
    ANN_1: [unit(1, 0, 0, 0)],
    ANN_2: [unit(1, 1, 0, 0)],
    ANN_PROBE: [unit(1, 1, 0.2, 0)],
    BOB: [unit(0, 0, 1, 0)],
    TWO: [unit(0, 0, 0, 1), unit(1, 0, 0, 0)],
}


def photo_versions(fresh_aws: Any, subject_id: str) -> list[str]:
    """Every version and delete marker left under the subject's enrolment photos."""
    listed = fresh_aws.s3.list_object_versions(
        Bucket=fresh_aws.bucket, Prefix=f"enrolments/default/{subject_id}/"
    )
    return [v["Key"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])]


def subject_items(fresh_aws: Any, subject_id: str) -> list[str]:
    """The sort keys of every item left in the subject's partition."""
    answer = fresh_aws.dynamodb.query(
        TableName=fresh_aws.settings.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"SUBJECT#default#{subject_id}"}},
        ConsistentRead=True,
    )
    return sorted(i["sk"]["S"] for i in answer["Items"])
