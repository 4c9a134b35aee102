"""MTCNN stage driver in numpy: facenet-pytorch's MTCNN, faster, on any runtime's networks.

The three networks are reached through ``MTCNNNets`` (numpy in, numpy out): torch's
implementation is ``facegate.models.mtcnn_nets.TorchMTCNNNets``, and an ONNX Runtime one can
serve without torch. This module imports neither; the stages around the networks (pyramid,
crops, box arithmetic, NMS) are numpy.

facenet-pytorch's ``detect_face`` spends much of its time outside the networks: every
candidate box that reaches RNet or ONet is cropped and resized with ``F.interpolate(mode=
"area")`` one box at a time (more than a thousand calls per 16 images of 640x480), and every
pyramid level is area-resized from a float copy of the whole batch.

Area resizing is a mean over integer pixel ranges (``adaptive_avg_pool2d``: output cell ``i``
of ``n`` over ``L`` input pixels averages ``[floor(i*L/n), ceil((i+1)*L/n))``), so every such
mean is four look-ups in a summed-area table of the uint8 batch. One integer table per batch
serves the whole pyramid (rows, then columns, picked with ``np.take``) and all RNet and ONet
crops at once (one gather for every box), with no Python loop over boxes. The sums are exact,
so the networks' inputs equal facenet-pytorch's to float rounding (one ulp), and boxes,
landmarks and scores agree to about 1e-4 px and 1e-6. ``torchvision.ops.roi_align`` was the
other candidate: its bilinear samples differ from area means by up to 57-77 grey levels on
small crops, which changed the faces found on real photos, and it was slower than the table.
The networks get their input as NHWC float32, the layout the table's gathers produce (and the
faster one for these convolutions on CPU); how PNet, which now dominates, is run fast is the
networks' business (``TorchMTCNNNets.pnet``).

Everything else follows facenet_pytorch/models/utils/detect_face.py (2.5.3): the same scales,
thresholds, NMS (``torchvision.ops.batched_nms``'s greedy IoU rule and ``nms_numpy``'s "Min"
rule, in ``facegate.pipeline.nms``), box regression, ``rerec``, and ``pad``, which clips a box
that crosses the border to the image and stretches the visible part onto the network's input
(it does not zero-pad as the original MATLAB MTCNN does; neither does this). The arithmetic is
float32 throughout, operation for operation as facenet-pytorch's torch code, so that boxes
round (``floor``, truncation to pixels) the same way. Two deliberate differences, both where
facenet-pytorch misbehaves: NMS keeps images apart even for boxes with negative coordinates
(facenet-pytorch's offset trick, each image's boxes shifted by index * (largest coordinate +
1), can let them interact, so a batch could differ from its images one by one), and a box
whose clipped crop is empty is dropped (facenet-pytorch raises).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from facegate.pipeline.nms import batched_nms, batched_nms_min

_NORM_MEAN = 127.5
_NORM_SCALE = 0.0078125
# The summed-area table is int32 while 255 * H * W fits; larger images use int64.
_INT32_PIXELS = (2**31 - 1) // 255
# Images are detected about this many pixels at a time. A larger batch is slower per image,
# not faster: PNet's first-level activations (40 bytes a pixel) and the summed-area table
# outgrow the caches and are page-faulted in afresh on every call. On 2 cores, per image, 16
# images of 640x480 at once took 1.8x as long as 4 at once, and 8 of 1024x768 1.4x as long as 2.
_CHUNK_PIXELS = 1_000_000
# RNet/ONet run in chunks of this many boxes, bounding memory on very busy images.
_CHUNK = 2048

BatchDetections = tuple[list[np.ndarray | None], list[np.ndarray | None], list[np.ndarray | None]]


class MTCNNNets(Protocol):
    """MTCNN's three networks on numpy arrays (any runtime)."""

    def pnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: (N, H, W, 3) float32, C-contiguous, NHWC, already normalised ((v - 127.5) *
        0.0078125). Returns box offsets (N, 4, h, w) float32 and face probabilities (N, h, w)
        float32."""
        ...

    def rnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: (K, 24, 24, 3) float32 NHWC normalised. Returns offsets (K, 4) and face
        probability (K,)."""
        ...

    def onet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x: (K, 48, 48, 3) float32 NHWC normalised. Returns offsets (K, 4), landmarks (K, 10)
        (5 x then 5 y, relative, as facenet-pytorch's ONet), face probability (K,)."""
        ...


class FastMTCNN:
    """MTCNN detection of faces in a batch of same-size images.

    ``nets``: the three networks (``TorchMTCNNNets`` runs facenet-pytorch's ``PNet``, ``RNet``
    and ``ONet``, weights bundled in its wheel, never downloaded). ``min_face_size``: smallest
    face searched for, in pixels. ``thresholds``: PNet, RNet and ONet probability thresholds.
    ``factor``: scale step of the image pyramid. The defaults are facenet-pytorch's. The nets
    see at most ``_CHUNK_PIXELS`` of images and ``_CHUNK`` crops per call.
    """

    def __init__(
        self,
        nets: MTCNNNets,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        self.nets = nets
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales for an image, computed exactly as facenet-pytorch does."""
        m = 12.0 / self.min_face_size
        minl = min(height, width) * m
        scales = []
        scale = m
        while minl >= 12:
            scales.append(scale)
            scale = scale * self.factor
            minl = minl * self.factor
        return scales

    def detect(self, batch: np.ndarray) -> BatchDetections:
        """Faces in ``batch``, ``(N, H, W, 3) uint8`` RGB.

        Returns ``(boxes, probs, points)``, one entry per image: ``(k, 4) float32``
        ``(x1, y1, x2, y2)``, ``(k,) float32`` ONet probabilities and ``(k, 5, 2) float32``
        landmarks, largest box first, or ``None`` for all three when no face is found; as
        facenet-pytorch's ``MTCNN(keep_all=True, select_largest=True).detect(batch,
        landmarks=True)``, with plain float arrays instead of object arrays. Large batches run
        in chunks of about a million pixels; an image's result does not depend on its batch.
        """
        if batch.ndim != 4 or batch.shape[3] != 3 or batch.dtype != np.uint8:
            raise ValueError("batch must be (N, H, W, 3) uint8")
        n, h, w = batch.shape[:3]
        step = max(1, _CHUNK_PIXELS // (h * w))
        if n > step:
            parts = [self._detect(batch[i : i + step]) for i in range(0, n, step)]
            return (
                [b for part in parts for b in part[0]],
                [p for part in parts for p in part[1]],
                [pt for part in parts for pt in part[2]],
            )
        return self._detect(batch)

    def _detect(self, batch: np.ndarray) -> BatchDetections:
        n, h, w = batch.shape[:3]
        scales = self.scales(h, w)
        if n == 0 or not scales:  # smaller than PNet's 12x12 window at min_face_size
            return [None] * n, [None] * n, [None] * n
        table = _summed_area_table(batch)

        boxes, image_inds = self._stage_one(table, scales, h, w)
        if len(boxes):
            boxes, image_inds = self._stage_two(table, boxes, image_inds, h, w)
        points = np.zeros((0, 5, 2), dtype=np.float32)
        if len(boxes):
            boxes, image_inds, points = self._stage_three(table, boxes, image_inds, h, w)
        return _split_by_image(boxes, image_inds, points, n)

    def _stage_one(
        self, table: np.ndarray, scales: list[float], h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """PNet over the pyramid: square candidate boxes ``(M, 5)`` [x1 y1 x2 y2 score] and
        their image indices ``(M,)``."""
        threshold = self.thresholds[0]
        boxes, image_inds = [], []
        for scale in scales:
            size = (int(h * scale + 1), int(w * scale + 1))
            reg, probs = self.nets.pnet(_resize_whole(table, h, w, size))
            boxes_scale, inds_scale = _generate_bounding_box(reg, probs, scale, threshold)
            pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], inds_scale, 0.5)
            boxes.append(boxes_scale[pick])
            image_inds.append(inds_scale[pick])
        all_boxes = np.concatenate(boxes)
        all_inds = np.concatenate(image_inds)
        pick = batched_nms(all_boxes[:, :4], all_boxes[:, 4], all_inds, 0.7)
        all_boxes, all_inds = all_boxes[pick], all_inds[pick]

        # Columns 5:9 are PNet's offsets, in units of the box's width and height.
        regw = all_boxes[:, 2] - all_boxes[:, 0]
        regh = all_boxes[:, 3] - all_boxes[:, 1]
        qq1 = all_boxes[:, 0] + all_boxes[:, 5] * regw
        qq2 = all_boxes[:, 1] + all_boxes[:, 6] * regh
        qq3 = all_boxes[:, 2] + all_boxes[:, 7] * regw
        qq4 = all_boxes[:, 3] + all_boxes[:, 8] * regh
        return _rerec(np.stack([qq1, qq2, qq3, qq4, all_boxes[:, 4]], axis=1)), all_inds

    def _stage_two(
        self, table: np.ndarray, boxes: np.ndarray, image_inds: np.ndarray, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """RNet on 24x24 crops: refined square boxes ``(M, 5)`` and their image indices."""
        boxes, image_inds, im_data = _crop_boxes(table, boxes, image_inds, h, w, 24)
        reg, score = _run_chunked(self.nets.rnet, im_data)
        ipass = score > self.thresholds[1]
        boxes = np.concatenate((boxes[ipass, :4], score[ipass, None]), axis=1)
        image_inds, reg = image_inds[ipass], reg[ipass]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes = _bbreg(boxes[pick], reg[pick])
        return _rerec(boxes), image_inds[pick]

    def _stage_three(
        self, table: np.ndarray, boxes: np.ndarray, image_inds: np.ndarray, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ONet on 48x48 crops: final boxes ``(M, 5)``, image indices and landmarks
        ``(M, 5, 2)``."""
        boxes, image_inds, im_data = _crop_boxes(table, boxes, image_inds, h, w, 48)
        reg, landmarks, score = _run_chunked(self.nets.onet, im_data)
        ipass = score > self.thresholds[2]
        boxes = np.concatenate((boxes[ipass, :4], score[ipass, None]), axis=1)
        image_inds, reg, landmarks = image_inds[ipass], reg[ipass], landmarks[ipass]

        # Landmarks are relative to the box ONet saw (before its regression), +1 px sides.
        w_i = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h_i = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points_x = w_i * landmarks[:, :5] + boxes[:, 0:1] - 1
        points_y = h_i * landmarks[:, 5:10] + boxes[:, 1:2] - 1
        points = np.stack((points_x, points_y), axis=2)
        boxes = _bbreg(boxes, reg)

        pick = batched_nms_min(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        return boxes[pick], image_inds[pick], points[pick]


def _summed_area_table(images: np.ndarray) -> np.ndarray:
    """``(N, H+1, W+1, 3)`` integer table: ``[n, y, x, c]`` is the sum of ``images[n, :y, :x, c]``.

    numpy, not torch (whose cumsum is several times slower here): a cumulative sum along each
    row, then rows added down the image one at a time, each add a contiguous vector operation
    (faster than ``cumsum`` along that axis).
    """
    n, h, w, c = images.shape
    dtype = np.int32 if h * w <= _INT32_PIXELS else np.int64
    table = np.empty((n, h + 1, w + 1, c), dtype=dtype)
    table[:, 0] = 0
    table[:, :, 0] = 0
    inner = table[:, 1:, 1:]
    np.cumsum(images, axis=2, dtype=dtype, out=inner)
    for y in range(1, h):
        np.add(inner[:, y], inner[:, y - 1], out=inner[:, y])
    return table


def _area_bounds(length: int | np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each of ``out`` area cells over ``length`` pixels.

    Integer forms of ``adaptive_avg_pool2d``'s ``floor(i*L/n)`` and ``ceil((i+1)*L/n)``;
    ``length`` is an int, or a ``(K, 1)`` array for one length per box.
    """
    i = np.arange(out)
    return (i * length) // out, -((-(i + 1) * length) // out)


def _normalise(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Area means from integer sums ``(K, h, w, 3)``, scaled to the networks' input range:
    ``(K, h, w, 3)`` float32, C-contiguous (``MTCNNNets``' input)."""
    means = sums.astype(np.float32)
    means /= counts
    means -= _NORM_MEAN
    means *= _NORM_SCALE
    return means


def _resize_whole(table: np.ndarray, h: int, w: int, size: tuple[int, int]) -> np.ndarray:
    """Every image area-resized to ``size`` and normalised: ``(N, h', w', 3)`` float32."""
    y0, y1 = _area_bounds(h, size[0])
    x0, x1 = _area_bounds(w, size[1])
    rows = np.take(table, y1, axis=1)
    rows -= np.take(table, y0, axis=1)
    sums = np.take(rows, x1, axis=2)
    sums -= np.take(rows, x0, axis=2)
    counts = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).astype(np.float32)
    return _normalise(sums, counts[None, :, :, None])


def _crop_boxes(
    table: np.ndarray,
    boxes: np.ndarray,
    image_inds: np.ndarray,
    h: int,
    w: int,
    size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each box clipped to its image (facenet-pytorch's ``pad``) and area-resized to
    ``size x size``, all in one gather. Boxes whose clipped crop is empty are dropped.

    Returns the kept boxes, their image indices and ``(K, size, size, 3)`` float32 crops.
    """
    ints = boxes[:, :4].astype(np.int64)  # truncation toward zero, as torch's trunc()
    x = np.maximum(ints[:, 0], 1) - 1
    y = np.maximum(ints[:, 1], 1) - 1
    ex = np.minimum(ints[:, 2], w)
    ey = np.minimum(ints[:, 3], h)
    keep = (ex > x) & (ey > y)
    if not keep.all():
        boxes, image_inds = boxes[keep], image_inds[keep]
        x, y, ex, ey = x[keep], y[keep], ex[keep], ey[keep]

    y0, y1 = _area_bounds((ey - y)[:, None], size)
    x0, x1 = _area_bounds((ex - x)[:, None], size)
    base = (image_inds * table.shape[1] + y)[:, None]  # the crop's top row in the flattened table
    row0 = ((base + y0) * table.shape[2])[:, :, None]
    row1 = ((base + y1) * table.shape[2])[:, :, None]
    col0 = (x[:, None] + x0)[:, None, :]
    col1 = (x[:, None] + x1)[:, None, :]
    flat = table.reshape(-1, table.shape[3])
    # np.take copies whole rows; it is several times faster than fancy indexing here.
    sums = np.take(flat, row1 + col1, axis=0)
    sums -= np.take(flat, row0 + col1, axis=0)
    sums -= np.take(flat, row1 + col0, axis=0)
    sums += np.take(flat, row0 + col0, axis=0)
    counts = ((y1 - y0)[:, :, None] * (x1 - x0)[:, None, :]).astype(np.float32)
    return boxes, image_inds, _normalise(sums, counts[..., None])


def _run_chunked(
    net: Callable[[np.ndarray], tuple[np.ndarray, ...]], im_data: np.ndarray
) -> tuple[np.ndarray, ...]:
    """``net`` on at most ``_CHUNK`` crops at a time, its outputs concatenated."""
    if len(im_data) <= _CHUNK:
        return net(im_data)
    outs = [net(im_data[i : i + _CHUNK]) for i in range(0, len(im_data), _CHUNK)]
    return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))


def _generate_bounding_box(
    reg: np.ndarray, probs: np.ndarray, scale: float, thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """PNet cells over ``thresh`` as boxes in image pixels (facenet-pytorch's formula):
    ``(M, 9)`` float32 [x1 y1 x2 y2 score dx1 dy1 dx2 dy2] and image indices ``(M,)``, in
    ``torch.nonzero``'s (row-major) order."""
    stride, cellsize = 2, 12
    image_inds, ys, xs = np.nonzero(probs >= thresh)
    score = probs[image_inds, ys, xs]
    offsets = reg[image_inds, :, ys, xs]  # (M, 4): the advanced indices' axis comes first
    bb = np.stack([xs, ys], axis=1).astype(np.float32)
    # float32 over a Python float stays float32 (NEP 50), as in torch: the same floor.
    q1 = np.floor((stride * bb + 1) / scale)
    q2 = np.floor((stride * bb + cellsize - 1 + 1) / scale)
    boxes = np.concatenate([q1, q2, score[:, None], offsets], axis=1, dtype=np.float32)
    return boxes, image_inds


def _bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Boxes ``(M, 5)`` moved by the regression offsets ``(M, 4)`` (units of ``+1`` px sides)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out = boxes.copy()
    out[:, 0] = boxes[:, 0] + reg[:, 0] * w
    out[:, 1] = boxes[:, 1] + reg[:, 1] * h
    out[:, 2] = boxes[:, 2] + reg[:, 2] * w
    out[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return out


def _rerec(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square around their centre, side the longer of the two."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    out = boxes.copy()
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _split_by_image(
    boxes: np.ndarray, image_inds: np.ndarray, points: np.ndarray, n: int
) -> BatchDetections:
    """Per-image arrays, largest box first (``select_largest=True``), ``None`` when empty."""
    out_boxes: list[np.ndarray | None] = []
    out_probs: list[np.ndarray | None] = []
    out_points: list[np.ndarray | None] = []
    for image in range(n):
        mine = np.flatnonzero(image_inds == image)
        if len(mine) == 0:
            out_boxes.append(None)
            out_probs.append(None)
            out_points.append(None)
            continue
        box, pts = boxes[mine], points[mine]
        order = np.argsort((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))[::-1]
        out_boxes.append(np.ascontiguousarray(box[order, :4], dtype=np.float32))
        out_probs.append(np.ascontiguousarray(box[order, 4], dtype=np.float32))
        out_points.append(np.ascontiguousarray(pts[order], dtype=np.float32))
    return out_boxes, out_probs, out_points
