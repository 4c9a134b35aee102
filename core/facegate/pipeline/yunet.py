"""YuNet (OpenCV Zoo's 2023mar face detector) in numpy around one network: an alternative to
MTCNN behind the same contract. Torch-free, and free of every runtime.

MTCNN runs three networks and a good deal of numpy between them (pyramid, crops, three
rounds of NMS); YuNet is one small network over the whole image, anchor-free, with heads at
strides 8, 16 and 32. The network is reached through ``YuNetNet`` (numpy in, numpy out), so
the same decoding serves OpenVINO and ONNX Runtime (``facegate.models.openvino_runtime`` and
``facegate.models.onnx_runtime``) on the graph set-up converted (``facegate.models.graphs``).

Decoding follows OpenCV's ``FaceDetectorYN`` (objdetect/src/face_detect.cpp): the image is
padded with zeros on the right and bottom to multiples of 32 (not stretched), fed as BGR
float 0..255 NCHW; at each stride ``s`` the anchor of grid cell ``(row r, column c)``
predicts a centre ``((c + dx) * s, (r + dy) * s)``, a size ``(exp(dw) * s, exp(dh) * s)`` and
five landmarks ``((kx + c) * s, (ky + r) * s)``; the score is ``sqrt(cls * obj)`` with both
clamped to [0, 1]; candidates under ``score_threshold`` are dropped, the rest go through
greedy IoU NMS (``facegate.pipeline.nms``; OpenCV's own compares integer-truncated boxes,
these are float). Two choices of ours: photos whose longer side exceeds ``max_side`` are
downscaled first and the coordinates mapped back (the network's cost grows with pixels, and
OpenCV Zoo runs it at 640x640 at most), and the results come back as
``FastMTCNN.detect`` returns them, landmarks in MTCNN's order (YuNet names its points from
the subject's side: "right eye" is the eye on the image's left, which is MTCNN's first
point; the five are in the same order as MTCNN's, which the tests check on real photos).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image

from facegate.pipeline.mtcnn import BatchDetections
from facegate.pipeline.nms import batched_nms

STRIDES = (8, 16, 32)
#: The graph's outputs, in the order ``YuNetNet`` returns them.
OUTPUTS = tuple(f"{head}_{s}" for head in ("cls", "obj", "bbox", "kps") for s in STRIDES)
_DIVISOR = 32
#: Images are run at most this many (padded) pixels at a time, but at least one: four LFW
#: photos (256x256 padded), one 640x480. Larger batches are slower per image on CPU, not
#: faster (OpenVINO, 2 cores, 32 photos of 640x480: 4.0 ms each one at a time, 4.4 three at a
#: time, 5.9 six at a time), as their activations outgrow the caches.
_CHUNK_PIXELS = 320_000


class YuNetNet(Protocol):
    """YuNet's graph on numpy arrays (any runtime)."""

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """x: (N, 3, H, W) float32 BGR 0..255, H and W multiples of 32. Returns the twelve
        outputs in ``OUTPUTS`` order, each (N, anchors at that stride, 1 | 4 | 10) float32,
        anchors row-major over the (H / s, W / s) grid."""
        ...


class YuNetDetector:
    """YuNet detection of faces in a batch of same-size images, in ``FastMTCNN.detect``'s form.

    ``net``: the graph on some runtime. ``max_side``: images whose longer side exceeds it are
    downscaled before detection (OpenCV Zoo's demo runs at 640x640 at most). ``score_threshold``:
    candidates below it are not considered (``FaceDetector`` applies its own, usually higher,
    threshold on top). ``nms_threshold``: IoU above which the weaker of two boxes is dropped
    (OpenCV Zoo's default, 0.3). ``top_k``: most candidates per image that enter NMS.
    """

    def __init__(
        self,
        net: YuNetNet,
        *,
        max_side: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
    ) -> None:
        self.net = net
        self.max_side = max_side
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k

    def detect(self, batch: np.ndarray) -> BatchDetections:
        """Faces in ``batch``, ``(N, H, W, 3) uint8`` RGB.

        Returns ``(boxes, probs, points)``, one entry per image: ``(k, 4) float32``
        ``(x1, y1, x2, y2)``, ``(k,) float32`` scores (``sqrt(cls * obj)``) and ``(k, 5, 2)
        float32`` landmarks in MTCNN's order, largest box first, in the batch's pixels; or
        ``None`` for all three when no face is found. An image's result does not depend on
        its batch.
        """
        if batch.ndim != 4 or batch.shape[3] != 3 or batch.dtype != np.uint8:
            raise ValueError("batch must be (N, H, W, 3) uint8")
        n, h, w = batch.shape[:3]
        scale = min(1.0, self.max_side / max(h, w)) if n else 1.0
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        pad_h, pad_w = _padded(size[1]), _padded(size[0])
        step = max(1, _CHUNK_PIXELS // (pad_h * pad_w))
        boxes: list[np.ndarray | None] = []
        probs: list[np.ndarray | None] = []
        points: list[np.ndarray | None] = []
        for start in range(0, n, step):
            x = _blob(batch[start : start + step], size, pad_h, pad_w)
            outputs = self.net(x)
            for i in range(len(x)):
                b, p, pt = self._decode([o[i] for o in outputs], pad_h, pad_w)
                if len(b) == 0:
                    boxes.append(None)
                    probs.append(None)
                    points.append(None)
                    continue
                # Back to the batch's pixels: the downscale kept the aspect ratio to the pixel.
                sx, sy = w / size[0], h / size[1]
                b = b * np.array([sx, sy, sx, sy], dtype=np.float32)
                pt = pt * np.array([sx, sy], dtype=np.float32)
                order = np.argsort(-((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])), kind="stable")
                boxes.append(b[order])
                probs.append(p[order])
                points.append(pt[order])
        return boxes, probs, points

    def _decode(
        self, outputs: list[np.ndarray], pad_h: int, pad_w: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's outputs -> kept boxes ``(k, 4)``, scores ``(k,)``, landmarks
        ``(k, 5, 2)`` in padded-input pixels."""
        count = len(STRIDES)
        all_boxes, all_scores, all_points = [], [], []
        for level, stride in enumerate(STRIDES):
            cls = np.clip(outputs[level].reshape(-1), 0.0, 1.0)
            obj = np.clip(outputs[level + count].reshape(-1), 0.0, 1.0)
            score = np.sqrt(cls * obj)
            keep = np.flatnonzero(score >= self.score_threshold)
            if len(keep) == 0:
                continue
            cols = pad_w // stride
            anchor = np.stack((keep % cols, keep // cols), axis=1).astype(np.float32)
            bbox = outputs[level + 2 * count].reshape(-1, 4)[keep]
            kps = outputs[level + 3 * count].reshape(-1, 5, 2)[keep]
            centre = (anchor + bbox[:, :2]) * stride
            size = np.exp(bbox[:, 2:]) * stride
            top_left = centre - size / 2
            all_boxes.append(np.concatenate((top_left, top_left + size), axis=1))
            all_scores.append(score[keep])
            all_points.append((kps + anchor[:, None, :]) * stride)
        if not all_boxes:
            empty = np.zeros((0,), dtype=np.float32)
            return empty.reshape(0, 4), empty, empty.reshape(0, 5, 2)
        boxes = np.concatenate(all_boxes).astype(np.float32)
        scores = np.concatenate(all_scores).astype(np.float32)
        points = np.concatenate(all_points).astype(np.float32)
        if len(scores) > self.top_k:
            top = np.argsort(-scores, kind="stable")[: self.top_k]
            boxes, scores, points = boxes[top], scores[top], points[top]
        groups = np.zeros(len(scores), dtype=np.int64)
        pick = batched_nms(boxes, scores, groups, self.nms_threshold)
        return boxes[pick], scores[pick], points[pick]


def _padded(length: int) -> int:
    """``length`` rounded up to the network's divisor."""
    return -(-length // _DIVISOR) * _DIVISOR


def _blob(images: np.ndarray, size: tuple[int, int], pad_h: int, pad_w: int) -> np.ndarray:
    """``(N, 3, pad_h, pad_w)`` float32 BGR: each image resized to ``size`` (width, height)
    when that differs from its own, at the top left, zeros to the right and below."""
    x = np.zeros((len(images), 3, pad_h, pad_w), dtype=np.float32)
    for i, image in enumerate(images):
        if (image.shape[1], image.shape[0]) != size:
            resized = Image.fromarray(image).resize(
                size, Image.Resampling.BILINEAR, reducing_gap=3.0
            )
            image = np.asarray(resized)
        x[i, :, : size[1], : size[0]] = image[:, :, ::-1].transpose(2, 0, 1)
    return x


__all__ = ["OUTPUTS", "STRIDES", "YuNetDetector", "YuNetNet"]
