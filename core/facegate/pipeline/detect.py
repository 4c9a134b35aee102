"""Detection: MTCNN, or YuNet, behind our own types.

MTCNN runs through ``facegate.pipeline.mtcnn.FastMTCNN``, a faster stage driver than
facenet-pytorch's ``detect_face`` giving the same faces, scores and landmarks, on the
networks it is given (``MTCNNNets``: facenet-pytorch's, with their bundled weights, on torch
or ONNX Runtime); neither this module nor the driver imports torch, so detection can serve
without it. YuNet (``facegate.pipeline.yunet.YuNetDetector``, ``FACEGATE_DETECTOR=yunet``)
is a drop-in alternative: any ``DetectionBackend`` with ``FastMTCNN.detect``'s contract
serves, landmarks in MTCNN's order, so alignment does not know which one ran. Large images
are downscaled before detection (a detector's cost grows with pixels, its accuracy does not)
and the coordinates mapped back. Same-size images are detected in one batched call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from facegate.errors import FaceTooSmallError, MultipleFacesError, NoFaceError
from facegate.pipeline.mtcnn import BatchDetections, FastMTCNN, MTCNNNets
from facegate.settings import MultiFacePolicy
from facegate.types import Detection

#: Each detector's default minimum score (``FACEGATE_DET_THRESHOLD`` overrides): MTCNN's is
#: facenet-pytorch's; YuNet's, measured on LFW-dev with the default model, finds every face
#: there (0.9 missed 18 of 1,583) at MTCNN's accuracy (0.9958 both).
DEFAULT_THRESHOLDS: dict[str, float] = {"mtcnn": 0.9, "yunet": 0.8}


@runtime_checkable
class DetectionBackend(Protocol):
    """A detector over batches of same-size images (``FastMTCNN``, ``YuNetDetector``)."""

    def detect(self, batch: np.ndarray) -> BatchDetections:
        """``(N, H, W, 3) uint8`` RGB in; per image ``(k, 4)`` boxes ``(x1, y1, x2, y2)``,
        ``(k,)`` scores and ``(k, 5, 2)`` landmarks in MTCNN's order, largest first, or
        ``None`` for all three (``FastMTCNN.detect``'s contract)."""
        ...


class FaceDetector:
    """A detection backend returning every face as a ``Detection``, largest first.

    ``nets``: MTCNN's three networks on some runtime (``TorchMTCNNNets``, or a graph
    runtime's), driven by ``FastMTCNN``; or a ready ``DetectionBackend`` (``YuNetDetector``),
    used as it is.
    ``max_side``: images whose longer side exceeds it are downscaled for detection.
    ``min_face_size``: smallest face MTCNN searches for, in detection-image pixels (MTCNN's
    only: a backend given ready has its own).
    ``threshold``: minimum score (MTCNN's final-stage probability, YuNet's ``sqrt(cls *
    obj)``) for a face to be reported.
    """

    def __init__(
        self,
        nets: MTCNNNets | DetectionBackend,
        *,
        min_face_size: int = 20,
        threshold: float = 0.9,
        max_side: int = 1024,
        batch_size: int = 16,
    ) -> None:
        self.backend: DetectionBackend = (
            nets
            if isinstance(nets, DetectionBackend)
            else FastMTCNN(nets, min_face_size=min_face_size)
        )
        self.threshold = threshold
        self.max_side = max_side
        self.batch_size = batch_size

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in one ``(H, W, 3) uint8`` RGB image, largest first."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces in each image; images that share a size after downscaling run together."""
        scaled: list[tuple[np.ndarray, float]] = [self._downscale(img) for img in images]
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, (array, _) in enumerate(scaled):
            groups[array.shape].append(index)
        results: list[list[Detection]] = [[] for _ in images]
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = np.stack([scaled[i][0] for i in chunk])
                boxes, probs, points = self.backend.detect(batch)
                for i, b, p, pts in zip(chunk, boxes, probs, points, strict=True):
                    results[i] = self._to_detections(b, p, pts, scaled[i][1])
        return results

    def _downscale(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = image.shape[:2]
        longest = max(height, width)
        if longest <= self.max_side:
            return np.ascontiguousarray(image), 1.0
        scale = self.max_side / longest
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(resized), scale

    def _to_detections(
        self,
        boxes: np.ndarray | None,
        probs: np.ndarray | None,
        points: np.ndarray | None,
        scale: float,
    ) -> list[Detection]:
        if boxes is None or probs is None or points is None:
            return []
        box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale
        prob_arr = np.asarray(probs, dtype=np.float64).reshape(-1)
        pts_arr = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2) / scale
        found = [
            Detection(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(s),
                landmarks=pt.astype(np.float32),
            )
            for b, s, pt in zip(box_arr, prob_arr, pts_arr, strict=True)
            if s >= self.threshold
        ]
        return sorted(found, key=lambda d: d.area, reverse=True)


def select_faces(
    detections: Sequence[Detection],
    policy: MultiFacePolicy,
    min_face_px: int,
    image_size: tuple[int, int] | None = None,
) -> list[int]:
    """Indices of the faces to use under ``policy``; raises when none qualifies.

    Faces whose shorter box side is under ``min_face_px`` are never used, and do not count
    as "several faces" for ``reject`` (a tiny face in the background should not block a
    portrait). ``detections`` must be largest first, as ``FaceDetector`` returns them.
    ``center`` keeps the face nearest the centre of ``image_size`` (width, height): the
    subject of a cropped data set such as LFW, where a larger bystander may be cut in half
    at the edge.
    """
    if not detections:
        raise NoFaceError("no face found in the image")
    usable = [i for i, d in enumerate(detections) if min(d.width, d.height) >= min_face_px]
    if not usable:
        largest = detections[0]
        raise FaceTooSmallError(
            f"largest face is {largest.width:.0f}x{largest.height:.0f} px; faces must be at "
            f"least {min_face_px} px"
        )
    if policy == "reject" and len(usable) > 1:
        raise MultipleFacesError(f"{len(usable)} faces found; exactly one is required")
    if policy == "all":
        return usable
    if policy == "center" and image_size is not None:
        cx, cy = image_size[0] / 2.0, image_size[1] / 2.0

        def offset(i: int) -> float:
            box = detections[i].box
            return ((box[0] + box[2]) / 2 - cx) ** 2 + ((box[1] + box[3]) / 2 - cy) ** 2

        return [min(usable, key=offset)]
    return usable[:1]
