"""MTCNN stage driver: facenet-pytorch's networks and weights, a faster loop around them.

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

PNet, which now dominates, runs its own layers and weights in channels-last memory (as
facenet-pytorch's permuted input happens to be): PReLU on row views (``_prelu_rows``), its two
1x1 heads as one convolution, the softmax's face output as a sigmoid.

Everything else follows facenet_pytorch/models/utils/detect_face.py (2.5.3): the same scales,
thresholds, NMS (``torchvision.ops.batched_nms``'s greedy IoU rule, in ``mtcnn_nets``, so
that detection never imports torchvision), box regression, ``rerec``, and ``pad``,
which clips a box that crosses the border to the image and stretches the visible part onto the
network's input (it does not zero-pad as the original MATLAB MTCNN does; neither does this).
Two deliberate differences, both where facenet-pytorch misbehaves: NMS keeps images apart even
for boxes with negative coordinates (facenet-pytorch's offset trick, each image's boxes shifted
by index * (largest coordinate + 1), can let them interact, so a batch could differ from its
images one by one), and a box whose clipped crop is empty is dropped (facenet-pytorch raises).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facegate.models.mtcnn_nets import batched_nms, load_nets

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


class FastMTCNN:
    """MTCNN detection of faces in a batch of same-size images.

    ``min_face_size``: smallest face searched for, in pixels. ``thresholds``: PNet, RNet and
    ONet probability thresholds. ``factor``: scale step of the image pyramid. The defaults are
    facenet-pytorch's, whose ``PNet``, ``RNet`` and ``ONet`` (weights bundled in its wheel,
    never downloaded) this class runs.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: str | torch.device = "cpu",
    ) -> None:
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.device = torch.device(device)
        pnet, rnet, onet = load_nets()
        self.pnet = pnet.to(self.device)
        self.rnet = rnet.to(self.device)
        self.onet = onet.to(self.device)
        # PNet's two 1x1 heads as one convolution: one pass over conv3's output instead of two.
        pnet = self.pnet
        self._pnet_head_weight = torch.cat([pnet.conv4_1.weight, pnet.conv4_2.weight])
        self._pnet_head_bias = torch.cat([_bias(pnet.conv4_1), _bias(pnet.conv4_2)])

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

    @torch.inference_mode()
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
        points = torch.zeros(0, 5, 2, device=self.device)
        if len(boxes):
            boxes, image_inds, points = self._stage_three(table, boxes, image_inds, h, w)
        return _split_by_image(boxes, image_inds, points, n)

    def _stage_one(
        self, table: np.ndarray, scales: list[float], h: int, w: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """PNet over the pyramid: square candidate boxes ``(M, 5)`` [x1 y1 x2 y2 score]."""
        threshold = self.thresholds[0]
        boxes, image_inds = [], []
        for scale in scales:
            size = (int(h * scale + 1), int(w * scale + 1))
            im_data = _resize_whole(table, h, w, size, self.device)
            reg, probs = self._pnet(im_data)
            boxes_scale, inds_scale = _generate_bounding_box(reg, probs, scale, threshold)
            pick = _batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], inds_scale, 0.5)
            boxes.append(boxes_scale[pick])
            image_inds.append(inds_scale[pick])
        all_boxes = torch.cat(boxes)
        all_inds = torch.cat(image_inds)
        pick = _batched_nms(all_boxes[:, :4], all_boxes[:, 4], all_inds, 0.7)
        all_boxes, all_inds = all_boxes[pick], all_inds[pick]

        regw = all_boxes[:, 2] - all_boxes[:, 0]
        regh = all_boxes[:, 3] - all_boxes[:, 1]
        qq1 = all_boxes[:, 0] + all_boxes[:, 5] * regw
        qq2 = all_boxes[:, 1] + all_boxes[:, 6] * regh
        qq3 = all_boxes[:, 2] + all_boxes[:, 7] * regw
        qq4 = all_boxes[:, 3] + all_boxes[:, 8] * regh
        return _rerec(torch.stack([qq1, qq2, qq3, qq4, all_boxes[:, 4]], dim=1)), all_inds

    def _pnet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``PNet.forward`` for channels-last input: box offsets ``(N, 4, h, w)`` and face
        probabilities ``(N, h, w)``.

        The same layers and weights; PReLU runs on row views (``_prelu_rows``), the two heads
        run as one convolution, and the face probability is the two-way softmax's second
        output written as a sigmoid.
        """
        pnet = self.pnet
        x = _prelu_rows(pnet.conv1(x), pnet.prelu1.weight)
        x = pnet.pool1(x)
        x = _prelu_rows(pnet.conv2(x), pnet.prelu2.weight)
        x = _prelu_rows(pnet.conv3(x), pnet.prelu3.weight)
        heads = F.conv2d(x, self._pnet_head_weight, self._pnet_head_bias)
        return heads[:, 2:], torch.sigmoid(heads[:, 1] - heads[:, 0])

    def _stage_two(
        self, table: np.ndarray, boxes: torch.Tensor, image_inds: torch.Tensor, h: int, w: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RNet on 24x24 crops: refined square boxes ``(M, 5)``."""
        boxes, image_inds, im_data = _crop_boxes(table, boxes, image_inds, h, w, 24)
        reg, prob = _run_chunked(self.rnet, im_data)
        score = prob[:, 1]
        ipass = score > self.thresholds[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds, reg = image_inds[ipass], reg[ipass]
        pick = _batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes = _bbreg(boxes[pick], reg[pick])
        return _rerec(boxes), image_inds[pick]

    def _stage_three(
        self, table: np.ndarray, boxes: torch.Tensor, image_inds: torch.Tensor, h: int, w: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ONet on 48x48 crops: final boxes ``(M, 5)`` and landmarks ``(M, 5, 2)``."""
        boxes, image_inds, im_data = _crop_boxes(table, boxes, image_inds, h, w, 48)
        reg, landmarks, prob = _run_chunked(self.onet, im_data)
        score = prob[:, 1]
        ipass = score > self.thresholds[2]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds, reg, landmarks = image_inds[ipass], reg[ipass], landmarks[ipass]

        w_i = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
        h_i = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
        points_x = w_i * landmarks[:, :5] + boxes[:, 0:1] - 1
        points_y = h_i * landmarks[:, 5:10] + boxes[:, 1:2] - 1
        points = torch.stack((points_x, points_y), dim=2)
        boxes = _bbreg(boxes, reg)

        pick = _nms_min_per_image(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
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


def _normalise(sums: np.ndarray, counts: np.ndarray, device: torch.device) -> torch.Tensor:
    """Area means from integer sums ``(K, h, w, 3)``, scaled to the networks' input range, as
    ``(K, 3, h, w)`` float32 on ``device`` in channels-last memory (the layout facenet-pytorch's
    permuted input has too, and the faster one for these convolutions on CPU)."""
    means = sums.astype(np.float32)
    means /= counts
    means -= _NORM_MEAN
    means *= _NORM_SCALE
    return torch.from_numpy(means).to(device).permute(0, 3, 1, 2)


def _resize_whole(
    table: np.ndarray, h: int, w: int, size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """Every image area-resized to ``size`` and normalised: ``(N, 3, h', w')`` float32."""
    y0, y1 = _area_bounds(h, size[0])
    x0, x1 = _area_bounds(w, size[1])
    rows = np.take(table, y1, axis=1)
    rows -= np.take(table, y0, axis=1)
    sums = np.take(rows, x1, axis=2)
    sums -= np.take(rows, x0, axis=2)
    counts = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).astype(np.float32)
    return _normalise(sums, counts[None, :, :, None], device)


def _crop_boxes(
    table: np.ndarray,
    boxes: torch.Tensor,
    image_inds: torch.Tensor,
    h: int,
    w: int,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each box clipped to its image (facenet-pytorch's ``pad``) and area-resized to
    ``size x size``, all in one gather. Boxes whose clipped crop is empty are dropped.

    Returns the kept boxes, their image indices and ``(K, 3, size, size)`` float32 crops.
    """
    ints = boxes[:, :4].trunc().to(torch.int64).cpu().numpy()
    x = np.maximum(ints[:, 0], 1) - 1
    y = np.maximum(ints[:, 1], 1) - 1
    ex = np.minimum(ints[:, 2], w)
    ey = np.minimum(ints[:, 3], h)
    inds = image_inds.cpu().numpy()
    keep = (ex > x) & (ey > y)
    if not keep.all():
        kept = torch.from_numpy(np.flatnonzero(keep)).to(boxes.device)
        boxes, image_inds = boxes[kept], image_inds[kept]
        x, y, ex, ey, inds = x[keep], y[keep], ex[keep], ey[keep], inds[keep]

    y0, y1 = _area_bounds((ey - y)[:, None], size)
    x0, x1 = _area_bounds((ex - x)[:, None], size)
    base = (inds * table.shape[1] + y)[:, None]  # the crop's top row in the flattened table
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
    return boxes, image_inds, _normalise(sums, counts[..., None], boxes.device)


def _prelu_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.prelu`` on a channels-last ``(N, C, H, W)`` tensor, computed on its ``(N*H, W*C)``
    row view with the weights tiled along the row. Same values; torch's own kernel loops over
    runs of C (10 to 32) values on channels-last input, this one over whole rows."""
    n, c, h, w = x.shape
    if not x.is_contiguous(memory_format=torch.channels_last):
        return F.prelu(x, weight)
    rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)
    return F.prelu(rows, weight.repeat(w)).view(n, h, w, c).permute(0, 3, 1, 2)


def _bias(conv: torch.nn.Conv2d) -> torch.Tensor:
    """A convolution's bias; every MTCNN convolution has one."""
    if conv.bias is None:
        raise ValueError("MTCNN convolution without a bias")
    return conv.bias


def _run_chunked(net: torch.nn.Module, im_data: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if len(im_data) <= _CHUNK:
        out: tuple[torch.Tensor, ...] = net(im_data)
        return out
    outs = [net(im_data[i : i + _CHUNK]) for i in range(0, len(im_data), _CHUNK)]
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


def _generate_bounding_box(
    reg: torch.Tensor, probs: torch.Tensor, scale: float, thresh: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PNet cells over ``thresh`` as boxes in image pixels (facenet-pytorch's formula)."""
    stride, cellsize = 2, 12
    mask_inds = (probs >= thresh).nonzero()
    image_inds, ys, xs = mask_inds.unbind(1)
    score = probs[image_inds, ys, xs]
    reg = reg[image_inds, :, ys, xs]
    bb = mask_inds[:, 1:].to(reg.dtype).flip(1)
    q1 = ((stride * bb + 1) / scale).floor()
    q2 = ((stride * bb + cellsize - 1 + 1) / scale).floor()
    return torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1), image_inds


def _bbreg(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out = boxes.clone()
    out[:, 0] = boxes[:, 0] + reg[:, 0] * w
    out[:, 1] = boxes[:, 1] + reg[:, 1] * h
    out[:, 2] = boxes[:, 2] + reg[:, 2] * w
    out[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return out


def _rerec(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes made square around their centre, side the longer of the two."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.max(w, h)
    out = boxes.clone()
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, image_inds: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Greedy IoU NMS per image (``mtcnn_nets.batched_nms``). Boxes are first moved off
    negative coordinates, as was needed with torchvision's offset trick; a common shift
    leaves every overlap as it was."""
    if len(boxes):
        low = boxes.min()
        if low < 0:
            boxes = boxes - low
    return batched_nms(boxes, scores, image_inds, threshold)


def _nms_min_per_image(
    boxes: torch.Tensor, scores: torch.Tensor, image_inds: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Greedy NMS with overlap = intersection / smaller area ("Min"), per image.

    facenet-pytorch's ``nms_numpy``: ``+1`` pixel areas, visit in ascending ``np.argsort``
    order from the end, drop boxes whose overlap exceeds ``threshold``. Few boxes reach here,
    so the overlaps come from one ``(M, M)`` matrix and the loop runs over kept boxes only.
    """
    if len(boxes) == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    b = boxes.detach().cpu().numpy().astype(np.float32)
    s = scores.detach().cpu().numpy()
    inds = image_inds.cpu().numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    iw = np.maximum(0.0, np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1) + 1)
    ih = np.maximum(0.0, np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1) + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = iw * ih / np.minimum(area[:, None], area)
    suppress = (overlap > threshold) & (inds[:, None] == inds)
    order = np.argsort(s)[::-1]
    alive = np.ones(len(b), dtype=bool)
    pick = []
    for i in order:
        if alive[i]:
            pick.append(i)
            alive &= ~suppress[i]
    return torch.as_tensor(np.array(pick, dtype=np.int64), device=boxes.device)


def _split_by_image(
    boxes: torch.Tensor, image_inds: torch.Tensor, points: torch.Tensor, n: int
) -> BatchDetections:
    """Per-image arrays, largest box first (``select_largest=True``), ``None`` when empty."""
    box_arr = boxes.cpu().numpy()
    pts_arr = points.cpu().numpy()
    inds = image_inds.cpu().numpy()
    out_boxes: list[np.ndarray | None] = []
    out_probs: list[np.ndarray | None] = []
    out_points: list[np.ndarray | None] = []
    for image in range(n):
        mine = np.flatnonzero(inds == image)
        if len(mine) == 0:
            out_boxes.append(None)
            out_probs.append(None)
            out_points.append(None)
            continue
        box, pts = box_arr[mine], pts_arr[mine]
        order = np.argsort((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))[::-1]
        out_boxes.append(np.ascontiguousarray(box[order, :4]))
        out_probs.append(np.ascontiguousarray(box[order, 4]))
        out_points.append(np.ascontiguousarray(pts[order]))
    return out_boxes, out_probs, out_points
