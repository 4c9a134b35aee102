"""FastMTCNN finds what facenet-pytorch's MTCNN finds, on real photos.

The reference is facenet-pytorch 2.5.3's own ``MTCNN(keep_all=True, select_largest=True)
.detect(batch, landmarks=True)``, the code FastMTCNN replaces, with the same weights. On these
photos the two agree to 1e-4 px (boxes and landmarks) and 1e-6 (probabilities): the network
inputs are equal to float rounding. The tolerances below leave room for other CPUs' float
rounding but not for a port that is wrong by a pixel: cropping one pixel off, zero-padding
border boxes instead of clipping them, or approximating the area resize with ``roi_align``
each move boxes or landmarks by more than ``PX_TOL``. FastMTCNN runs here on
``TorchMTCNNNets``; the driver itself is numpy and must import without torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests_support import run_without_torch

from facegate.models.mtcnn_nets import TorchMTCNNNets
from facegate.pipeline.mtcnn import FastMTCNN

PX_TOL = 0.25  # pixels, boxes and landmarks
PROB_TOL = 0.01
MIN_PROB = 0.9
NAMES = ["person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2"]


@pytest.fixture(scope="module")
def reference():  # type: ignore[no-untyped-def]
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, select_largest=True).eval()


@pytest.fixture(scope="module")
def fast() -> FastMTCNN:
    return FastMTCNN(TorchMTCNNNets())


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> dict[str, np.ndarray]:
    return {n: np.asarray(Image.open(faces_dir / f"{n}.jpg").convert("RGB")) for n in NAMES}


def _faces(boxes, probs, points) -> list[tuple[np.ndarray, float, np.ndarray]]:  # type: ignore[no-untyped-def]
    """One image's faces with probability >= MIN_PROB, as float64 arrays."""
    if boxes is None:
        return []
    box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    prob_arr = np.asarray(probs, dtype=np.float64).reshape(-1)
    pts_arr = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    return [
        (b, float(p), pt)
        for b, p, pt in zip(box_arr, prob_arr, pts_arr, strict=True)
        if p >= MIN_PROB
    ]


def _assert_same_faces(expected, actual, label: str) -> None:  # type: ignore[no-untyped-def]
    """Same faces over MIN_PROB in two ``detect`` results for a batch, image by image."""
    assert len(expected[0]) == len(actual[0]), label
    for i in range(len(expected[0])):
        want = _faces(expected[0][i], expected[1][i], expected[2][i])
        got = _faces(actual[0][i], actual[1][i], actual[2][i])
        assert len(got) == len(want), (label, i, [p for _, p, _ in want], [p for _, p, _ in got])
        for box, prob, pts in want:
            # Pair each expected face with the nearest found one (order is by area, which
            # near-equal faces could swap).
            nearest = min(got, key=lambda face, box=box: float(np.abs(face[0] - box).max()))
            assert np.abs(nearest[0] - box).max() <= PX_TOL, (label, i, box, nearest[0])
            assert np.abs(nearest[2] - pts).max() <= PX_TOL, (label, i, pts, nearest[2])
            assert abs(nearest[1] - prob) <= PROB_TOL, (label, i, prob, nearest[1])


def _detect_both(reference, fast: FastMTCNN, batch: np.ndarray):  # type: ignore[no-untyped-def]
    return reference.detect(batch, landmarks=True), fast.detect(batch)


def test_real_photos_match_facenet(reference, fast, photos):
    for name, image in photos.items():
        expected, actual = _detect_both(reference, fast, image[None])
        assert _faces(*(column[0] for column in expected)), name  # every photo has a face
        _assert_same_faces(expected, actual, name)


@pytest.mark.slow
def test_lfw_batch_matches_facenet(reference, fast, lfw_dev):
    files = sorted(lfw_dev.glob("*/*.jpg"))[::50][:30]
    assert len(files) == 30
    batch = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    expected, actual = _detect_both(reference, fast, batch)
    assert sum(bool(_faces(b, p, pt)) for b, p, pt in zip(*expected, strict=True)) >= 28
    _assert_same_faces(expected, actual, "lfw-dev")


def test_output_arrays_are_plain_float(fast, photos):
    boxes, probs, points = fast.detect(photos["person_a_1"][None])
    assert boxes[0] is not None and probs[0] is not None and points[0] is not None
    k = len(boxes[0])
    assert boxes[0].shape == (k, 4) and probs[0].shape == (k,) and points[0].shape == (k, 5, 2)
    assert {a.dtype for a in (boxes[0], probs[0], points[0])} == {np.dtype(np.float32)}
    areas = (boxes[0][:, 2] - boxes[0][:, 0]) * (boxes[0][:, 3] - boxes[0][:, 1])
    assert np.all(np.diff(areas) <= 0)  # largest first


def test_batch_finds_what_images_one_by_one_find(fast, photos):
    """In a batch each image gets the faces it gets alone, within ``PX_TOL``: the batch
    composition changes float rounding only (a few ulps, CPU-dependent), never which faces
    are found or where."""
    size = (320, 400)
    images = [np.asarray(Image.fromarray(photos[n]).resize(size)) for n in NAMES]
    together = fast.detect(np.stack(images))
    assert all(len(column) == len(images) for column in together)
    for i, (name, image) in enumerate(zip(NAMES, images, strict=True)):
        alone = fast.detect(image[None])
        assert _faces(*(column[0] for column in alone)), name
        _assert_same_faces(alone, tuple(column[i : i + 1] for column in together), name)


def test_no_face_gives_none(fast, photos):
    grey = np.full((240, 320, 3), 128, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    face = np.asarray(Image.fromarray(photos["person_b_1"]).resize((320, 240)))
    boxes, probs, points = fast.detect(np.stack([grey, noise, face]))
    assert boxes[:2] == [None, None] and probs[:2] == [None, None] and points[:2] == [None, None]
    assert boxes[2] is not None and probs[2] is not None and probs[2].max() >= MIN_PROB


def test_image_smaller_than_pnet_window_gives_none(fast):
    boxes, probs, points = fast.detect(np.zeros((2, 15, 15, 3), dtype=np.uint8))
    assert boxes == probs == points == [None, None]


def test_face_cut_by_the_border_matches_facenet(reference, fast, photos):
    for name in ("person_a_1", "person_b_2"):
        image = photos[name]
        box = fast.detect(image[None])[0][0][0]
        width, height = box[2] - box[0], box[3] - box[1]
        # Cut the photo through the face's left and top quarters: the face runs off two edges.
        left, top = int(box[0] + 0.25 * width), int(box[1] + 0.15 * height)
        cut = np.ascontiguousarray(image[top:, left:])
        expected, actual = _detect_both(reference, fast, cut[None])
        found = _faces(*(column[0] for column in actual))
        assert found, name
        assert min(found[0][0][0], found[0][0][1]) < 0  # the box does cross the border
        _assert_same_faces(expected, actual, f"{name} cut")


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_keeps_what_torchvision_keeps(threshold):
    """Our numpy NMS replaces torchvision's (not imported at run time): on the same boxes the
    same indices kept, in the same order for ``nms``."""
    import torch
    from torchvision.ops import batched_nms as tv_batched_nms
    from torchvision.ops import nms as tv_nms

    from facegate.pipeline.nms import batched_nms, nms

    rng = np.random.default_rng(int(threshold * 10))
    for _ in range(10):
        corner = rng.random((400, 2), dtype=np.float32) * 200 - 20  # some below zero
        size = rng.random((400, 2), dtype=np.float32) * 60 + 5
        boxes = np.concatenate([corner, corner + size], axis=1)
        scores = rng.random(400, dtype=np.float32)
        groups = rng.integers(0, 3, 400)
        t_boxes, t_scores = torch.from_numpy(boxes), torch.from_numpy(scores)
        t_groups = torch.from_numpy(groups)
        ours = nms(boxes, scores, threshold)
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, tv_nms(t_boxes, t_scores, threshold).numpy())
        ours = batched_nms(boxes, scores, groups, threshold)
        theirs = tv_batched_nms(t_boxes, t_scores, t_groups, threshold).numpy()
        np.testing.assert_array_equal(np.sort(ours), np.sort(theirs))
        assert np.all(np.diff(scores[ours]) <= 0)  # by descending score


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_min_nms_keeps_what_facenet_keeps(threshold):
    """The last stage's "Min" NMS is facenet-pytorch's ``batched_nms_numpy(..., "Min")``
    (positive coordinates here, where its offset trick keeps the images apart too)."""
    import torch
    from facenet_pytorch.models.utils.detect_face import batched_nms_numpy

    from facegate.pipeline.nms import batched_nms_min

    rng = np.random.default_rng(int(threshold * 10))
    for _ in range(10):
        corner = rng.random((150, 2), dtype=np.float32) * 200
        boxes = np.concatenate([corner, corner + rng.random((150, 2)) * 60 + 5], 1)
        boxes = boxes.astype(np.float32)
        scores = rng.random(150, dtype=np.float32)
        groups = rng.integers(0, 3, 150)
        tensors = (torch.from_numpy(a) for a in (boxes, scores, groups))
        theirs = batched_nms_numpy(*tensors, threshold, "Min")
        ours = batched_nms_min(boxes, scores, groups, threshold)
        np.testing.assert_array_equal(ours, theirs.numpy())


def test_driver_runs_without_torch():
    """``facegate.pipeline.mtcnn`` and ``detect`` import, and a detection runs end to end on
    numpy networks, in an interpreter where torch, torchvision, facenet_pytorch and onnx
    cannot be imported; none ends up in ``sys.modules``."""
    code = (
        "import numpy as np\n"
        "import facegate.pipeline.detect, facegate.pipeline.nms\n"
        "from facegate.pipeline.mtcnn import FastMTCNN\n"
        "class Nets:\n"
        "    # A face wherever the red channel is bright: every cell, crop and box passes.\n"
        "    def pnet(self, x):\n"
        "        h, w = -(-(x.shape[1] - 2) // 2) - 4, -(-(x.shape[2] - 2) // 2) - 4\n"
        "        probs = (x[:, : 2 * h : 2, : 2 * w : 2, 0] > 0).astype(np.float32)\n"
        "        return np.zeros((len(x), 4, h, w), np.float32), probs\n"
        "    def rnet(self, x):\n"
        "        return np.zeros((len(x), 4), np.float32), (x[:, 12, 12, 0] > 0) * 0.9\n"
        "    def onet(self, x):\n"
        "        z = np.zeros((len(x), 4), np.float32)\n"
        "        return z, np.full((len(x), 10), 0.5, np.float32), (x[:, 24, 24, 0] > 0) * 0.9\n"
        "batch = np.zeros((2, 60, 80, 3), np.uint8)\n"
        "batch[1] = 255\n"
        "boxes, probs, points = FastMTCNN(Nets()).detect(batch)\n"
        "assert boxes[0] is None and probs[0] is None and points[0] is None\n"
        "assert len(boxes[1]) and points[1].shape == (len(boxes[1]), 5, 2), boxes[1]\n"
        "heavy = {'torch', 'torchvision', 'facenet_pytorch', 'onnx'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = run_without_torch(code, block=("torch", "torchvision", "facenet_pytorch", "onnx"))
    assert done.returncode == 0, done.stderr or "the MTCNN driver imported torch"


def test_loading_the_pipeline_does_not_import_torchvision():
    """torchvision's import costs 1.5-2 s of every cold start; detection must not need it."""
    code = (
        "import sys; from facegate.pipeline.face_pipeline import FacePipeline\n"
        "FacePipeline().warm_up()\n"
        "sys.exit(3 if 'torchvision' in sys.modules or 'facenet_pytorch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
