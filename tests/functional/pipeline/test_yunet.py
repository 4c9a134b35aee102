"""YuNet (``FACEGATE_DETECTOR=yunet``) finds the faces MTCNN finds, where MTCNN finds them.

YuNet is a different network trained on different annotations, so it cannot agree with
MTCNN to a pixel as two runtimes of one network do; what alignment needs is the same face
with its five points in the same order, near the same places. Measured on the six fixture
photos and the first photo of each of the first 60 LFW-dev people (58 where MTCNN finds one
face): box IoU with MTCNN's 0.82 at worst (median 0.91); per face, the mean distance of the
five landmarks from MTCNN's is 4.6 px median on LFW's 250x250 photos (faces ~90-120 px
wide), 0.087 of MTCNN's box width at worst, no point further than 0.13 of it. The
tolerances below leave room for other CPUs, not for a wrong decoding: swapped eyes or mouth
corners move a point by ~40 px (0.4 of a width), a box off by one stride by 8-32 px.

The threshold is YuNet's own default (``DEFAULT_THRESHOLDS``): its scores (``sqrt(cls *
obj)``) of clear frontal faces are 0.88-0.96, so MTCNN's 0.9 (made for its probabilities,
0.99+) would drop 18 of LFW-dev's 1,583 faces; at 0.8 none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests_support import run_without_torch

from facegate.errors import ModelNotFoundError
from facegate.models.assets import YUNET_ONNX_SHA256, yunet_installed
from facegate.models.graphs import YUNET_DIR, YUNET_RECORD, yunet_graph
from facegate.pipeline.detect import DEFAULT_THRESHOLDS, FaceDetector
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.pipeline.runtime import detector_nets
from facegate.pipeline.yunet import OUTPUTS, STRIDES, YuNetDetector
from facegate.settings import Detector, Runtime, Settings, default_model_dir
from facegate.types import Detection

YUNET_THRESHOLD = 0.8
MIN_IOU = 0.5
#: Mean of the five landmark distances from MTCNN's, as a fraction of MTCNN's box width.
LANDMARK_MEAN_TOL = 0.15
#: ... and any single landmark's.
LANDMARK_MAX_TOL = 0.25
#: Median over the LFW photos of that mean, in pixels (measured 4.6).
LFW_MEDIAN_PX_TOL = 7.0
RUNTIME_PX_TOL = 0.5
NAMES = ["person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2"]
LFW_PEOPLE = 60
#: LFW photos where MTCNN finds one face and YuNet one more, rightly: a bystander cut off at
#: the frame's edge (its top-left corner), which MTCNN misses.
LFW_WITH_BYSTANDER = {"Andy_Griffith_0001"}


def _detector(runtime: Runtime, detector: Detector, threshold: float) -> FaceDetector:
    settings = Settings(runtime=runtime, detector=detector)
    return FaceDetector(detector_nets(settings), threshold=threshold)


@pytest.fixture(scope="module")
def yunet() -> dict[str, FaceDetector]:
    runtimes: tuple[Runtime, ...] = ("openvino", "onnxruntime")
    return {rt: _detector(rt, "yunet", YUNET_THRESHOLD) for rt in runtimes}


@pytest.fixture(scope="module")
def mtcnn() -> FaceDetector:
    return _detector("openvino", "mtcnn", 0.9)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def fixture_photos(faces_dir: Path) -> dict[str, np.ndarray]:
    return {n: _read(faces_dir / f"{n}.jpg") for n in NAMES}


@pytest.fixture(scope="module")
def lfw_photos(lfw_dev: Path) -> dict[str, np.ndarray]:
    people = sorted(p for p in lfw_dev.iterdir() if p.is_dir())[:LFW_PEOPLE]
    first = [sorted(p.glob("*.jpg"))[0] for p in people]
    return {p.stem: _read(p) for p in first}


def _iou(a: Detection, b: Detection) -> float:
    w = max(0.0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0]))
    h = max(0.0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
    inter = w * h
    return inter / (a.area + b.area - inter)


def _compare(
    photos: dict[str, np.ndarray], yunet: FaceDetector, mtcnn: FaceDetector, bystanders: set[str]
) -> list[float]:
    """Check every photo where MTCNN finds one face; the mean landmark distances, in px."""
    means = []
    for name, image in photos.items():
        want = mtcnn.detect(image)
        if len(want) != 1:
            continue
        got = yunet.detect(image)
        assert len(got) == (2 if name in bystanders else 1), (name, [d.score for d in got])
        face = got[0]
        assert _iou(face, want[0]) > MIN_IOU, (name, face.box, want[0].box)
        distance = np.linalg.norm(face.landmarks - want[0].landmarks, axis=1)
        assert distance.mean() <= LANDMARK_MEAN_TOL * want[0].width, (name, distance)
        assert distance.max() <= LANDMARK_MAX_TOL * want[0].width, (name, distance)
        means.append(float(distance.mean()))
    return means


def test_yunet_finds_mtcnns_face_on_the_fixture_photos(
    fixture_photos: dict[str, np.ndarray], yunet: dict[str, FaceDetector], mtcnn: FaceDetector
) -> None:
    """One face per portrait, MTCNN's, its landmarks in MTCNN's order near MTCNN's."""
    assert len(_compare(fixture_photos, yunet["openvino"], mtcnn, set())) == len(NAMES)


def test_yunet_finds_mtcnns_face_on_lfw(
    lfw_photos: dict[str, np.ndarray], yunet: dict[str, FaceDetector], mtcnn: FaceDetector
) -> None:
    means = _compare(lfw_photos, yunet["openvino"], mtcnn, LFW_WITH_BYSTANDER)
    assert len(means) >= 50  # 58 of the 60 have one face for MTCNN
    assert float(np.median(means)) <= LFW_MEDIAN_PX_TOL


#: Group photos: a mosaic of GROUP x GROUP LFW photos (2,000 px square). YuNet sees it at its
#: 640 px working size, where the faces are ~30 px; measured with mosaics of 2x2 to 10x10,
#: both detectors found every face (12x12, 21 px faces: MTCNN 576 of 576, YuNet 574).
GROUP = 8
CELL = 250


def _centred_cells(found: list[Detection]) -> set[tuple[int, int]]:
    cells = set()
    for face in found:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        col, row = int(cx // CELL), int(cy // CELL)
        if max(abs(cx - (col + 0.5) * CELL), abs(cy - (row + 0.5) * CELL)) < CELL / 4:
            cells.add((row, col))
    return cells


def test_every_face_of_a_group_photo_is_found(
    lfw_photos: dict[str, np.ndarray], yunet: dict[str, FaceDetector], mtcnn: FaceDetector
) -> None:
    """The galleries' ``reject`` policy (one face per photo, else rejected) and ``all`` need
    every face of a group found, by the default detector as by MTCNN."""
    tiles = [image for image in lfw_photos.values() if image.shape[:2] == (CELL, CELL)]
    mosaic = np.zeros((GROUP * CELL, GROUP * CELL, 3), np.uint8)
    for i in range(GROUP * GROUP):
        row, col = divmod(i, GROUP)
        mosaic[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = tiles[i % len(tiles)]
    everyone = {divmod(i, GROUP) for i in range(GROUP * GROUP)}
    assert _centred_cells(mtcnn.detect(mosaic)) == everyone
    assert _centred_cells(yunet["openvino"].detect(mosaic)) == everyone


def test_both_runtimes_give_the_same_detections(
    fixture_photos: dict[str, np.ndarray],
    lfw_photos: dict[str, np.ndarray],
    yunet: dict[str, FaceDetector],
) -> None:
    for name, image in {**fixture_photos, **lfw_photos}.items():
        ov, ort = (yunet[rt].detect(image) for rt in ("openvino", "onnxruntime"))
        assert len(ov) == len(ort), name
        for a, b in zip(ov, ort, strict=True):
            assert np.abs(np.subtract(a.box, b.box)).max() <= RUNTIME_PX_TOL, name
            assert np.abs(a.landmarks - b.landmarks).max() <= RUNTIME_PX_TOL, name
            assert abs(a.score - b.score) <= 1e-3, name


def test_a_batch_gives_each_photo_its_own_detections(
    fixture_photos: dict[str, np.ndarray],
    lfw_photos: dict[str, np.ndarray],
    yunet: dict[str, FaceDetector],
) -> None:
    """Photos of several sizes in one call (grouped by shape, chunked, padded together) find
    what each finds alone."""
    photos = list(fixture_photos.values()) + list(lfw_photos.values())[:12]
    detector = yunet["openvino"]
    batched = detector.detect_batch(photos)
    for image, found in zip(photos, batched, strict=True):
        alone = detector.detect(image)
        assert len(found) == len(alone)
        for a, b in zip(found, alone, strict=True):
            assert np.abs(np.subtract(a.box, b.box)).max() <= 1e-3
            assert np.abs(a.landmarks - b.landmarks).max() <= 1e-3


class _OneAnchor:
    """A YuNet graph that sees one face: at stride 16, grid cell (row 2, column 3)."""

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        n, _, h, w = x.shape
        heads = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
        out = {
            name: np.zeros((n, (h // s) * (w // s), heads[name.split("_")[0]]), np.float32)
            for name in OUTPUTS
            for s in [int(name.split("_")[1])]
        }
        cell = 2 * (w // 16) + 3
        out["cls_16"][:, cell] = 0.81
        out["obj_16"][:, cell] = 1.0
        out["bbox_16"][:, cell] = [0.5, 0.25, np.log(2.0), np.log(4.0)]
        out["kps_16"][:, cell] = np.arange(10, dtype=np.float32) / 10
        return [out[name] for name in OUTPUTS]


def test_decoding_follows_opencvs_face_detector_yn() -> None:
    """Centre ``(c + dx, r + dy) * s``, size ``exp(dw, dh) * s``, points ``(k + (c, r)) * s``,
    score ``sqrt(cls * obj)``; the image padded (100x70 -> 128x96), not stretched; and a
    photo downscaled for detection (200x140 at max_side 100) answered in its own pixels."""
    boxes, probs, points = YuNetDetector(_OneAnchor()).detect(np.zeros((2, 70, 100, 3), np.uint8))
    assert STRIDES == (8, 16, 32)
    for b, p, pt in zip(boxes, probs, points, strict=True):
        assert b is not None and p is not None and pt is not None
        np.testing.assert_allclose(b, [[40, 4, 72, 68]], atol=1e-4)
        np.testing.assert_allclose(p, [0.9], atol=1e-6)
        kx, ky = np.arange(0, 10, 2) / 10, np.arange(1, 10, 2) / 10
        np.testing.assert_allclose(pt[0], np.stack([(kx + 3) * 16, (ky + 2) * 16], 1), atol=1e-4)
    large = YuNetDetector(_OneAnchor(), max_side=100).detect(np.zeros((1, 140, 200, 3), np.uint8))
    assert large[0][0] is not None
    np.testing.assert_allclose(large[0][0], [[80, 8, 144, 136]], atol=1e-3)


def test_nothing_found_is_none() -> None:
    class Blank:
        def __call__(self, x: np.ndarray) -> list[np.ndarray]:
            return [o * 0 for o in _OneAnchor()(x)]

    assert YuNetDetector(Blank()).detect(np.zeros((1, 64, 64, 3), np.uint8)) == (
        [None],
        [None],
        [None],
    )


def test_setup_installed_the_graph_from_the_pinned_file() -> None:
    import json

    model_dir = default_model_dir()
    assert yunet_installed(model_dir)
    record = json.loads((model_dir / YUNET_DIR / YUNET_RECORD).read_text())
    assert record["source"]["file_sha256"] == YUNET_ONNX_SHA256
    assert record["license"] == "MIT (OpenCV Zoo)"
    assert record["check_max_abs_diff"] < 1e-4
    assert yunet_graph(model_dir).name == record["file"]


def test_an_altered_graph_is_refused(tmp_path: Path) -> None:
    source = default_model_dir() / YUNET_DIR
    (tmp_path / YUNET_DIR).mkdir()
    (tmp_path / YUNET_DIR / YUNET_RECORD).write_bytes((source / YUNET_RECORD).read_bytes())
    graph = yunet_graph(default_model_dir())
    (tmp_path / YUNET_DIR / graph.name).write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ModelNotFoundError, match="sha256"):
        yunet_graph(tmp_path)
    assert not yunet_installed(tmp_path)


def test_the_torch_runtime_runs_yunet_on_onnx_runtime() -> None:
    backend = detector_nets(Settings(runtime="torch", detector="yunet"))
    assert isinstance(backend, YuNetDetector)
    assert type(backend.net).__name__ == "OnnxYuNet"


def test_detects_without_torch(faces_dir: Path) -> None:
    """The whole YuNet path, from settings to detections, on both graph runtimes, in an
    interpreter where torch, torchvision, facenet_pytorch and onnx cannot be imported."""
    code = (
        "import numpy as np\n"
        "from PIL import Image\n"
        "from facegate.pipeline.detect import FaceDetector\n"
        "from facegate.pipeline.runtime import detector_nets\n"
        "from facegate.settings import Settings\n"
        f"image = np.asarray(Image.open({str(faces_dir / 'person_a_1.jpg')!r}).convert('RGB'))\n"
        "for runtime in ('openvino', 'onnxruntime'):\n"
        "    nets = detector_nets(Settings(runtime=runtime, detector='yunet'))\n"
        "    found = FaceDetector(nets, threshold=0.8).detect(image)\n"
        "    assert len(found) == 1, (runtime, found)\n"
        "heavy = {'torch', 'torchvision', 'facenet_pytorch', 'onnx', 'facegate.models.registry',\n"
        "         'facegate.models.mtcnn_nets', 'facegate.models.torch_runner'}\n"
        "heavy &= set(sys.modules)\n"
        "assert not heavy, heavy\n"
        # The graph runtimes are loaded here by design; run_without_torch's own check (exit 3)
        # is for light modules, which must not load them.
        "sys.exit(0)\n"
    )
    done = run_without_torch(code, block=("torch", "torchvision", "facenet_pytorch", "onnx"))
    assert done.returncode == 0, done.stderr or "the YuNet path imported torch"


def test_torch_runtime_without_onnx_runtime_is_a_clear_error() -> None:
    code = (
        "from facegate.errors import ValidationError\n"
        "from facegate.pipeline.runtime import detector_nets\n"
        "from facegate.settings import Settings\n"
        "try:\n"
        "    detector_nets(Settings(runtime='torch', detector='yunet'))\n"
        "except ValidationError as error:\n"
        "    assert 'onnxruntime' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    done = run_without_torch(code, block=("torch", "onnxruntime"))
    assert done.returncode == 0, done.stderr


def test_each_detector_has_its_own_default_threshold_unless_one_is_set(faces_dir):
    assert DEFAULT_THRESHOLDS == {"mtcnn": 0.9, "yunet": YUNET_THRESHOLD}
    served = FacePipeline(Settings())  # YuNet is the default detector
    assert served.detector_name == "yunet" and served.detector.threshold == YUNET_THRESHOLD
    assert FacePipeline(Settings(detector="mtcnn")).detector.threshold == 0.9
    assert FacePipeline(Settings(detector="yunet", det_threshold=0.95)).detector.threshold == 0.95
    result = served.process(faces_dir / "person_a_1.jpg")
    assert result.primary.detection.score >= YUNET_THRESHOLD


def test_yunet_s_working_size_is_a_setting(faces_dir):
    """A photo larger than the working size is detected downscaled, and the face comes back
    in the photo's own pixels at either size."""
    image = _read(faces_dir / "person_a_2.jpg")  # 722x899
    boxes = {}
    for side in (640, 320):
        detector = FacePipeline(Settings(detector="yunet", yunet_max_side=side)).detector
        assert detector.backend.max_side == side  # type: ignore[attr-defined]
        (face,) = detector.detect(image)
        boxes[side] = np.array(face.box)
    assert np.abs(boxes[640] - boxes[320]).max() < 0.1 * (boxes[640][2] - boxes[640][0])
