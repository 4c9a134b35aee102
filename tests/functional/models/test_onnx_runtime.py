"""The exported ONNX graphs reproduce the torch modules they came from, on real faces, on
both runtimes that serve them.

Set-up exports every served network (``facegate.models.onnx_export``); serving runs them
without torch, on OpenVINO (``FACEGATE_RUNTIME=openvino``, the default) or ONNX Runtime
(``onnxruntime``). Torch is the reference: per face, the graph's embedding must be the
module's to cosine 0.9999, and the detector's boxes and landmarks must agree to half a
pixel. Thresholds of that size are what a port that is wrong anywhere (a transposed input, a
missing normalisation, the softmax's other column, bf16 where fp32 was asked) fails by far,
and what float rounding on any CPU stays well inside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegate.errors import ModelNotFoundError
from facegate.models.card import read_card, write_card
from facegate.models.mtcnn_nets import TorchMTCNNNets
from facegate.models.onnx_runtime import OnnxMTCNNNets, OnnxNetwork
from facegate.models.openvino_runtime import OpenVinoMTCNNNets, OpenVinoNetwork
from facegate.models.registry import load_network
from facegate.models.torch_runner import TorchNetwork
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.pipeline.mtcnn import FastMTCNN
from facegate.settings import Settings, default_model_dir
from facegate.types import FaceResult

MIN_COSINE = 0.9999
#: Each graph runtime: its embedding network and its detector nets.
RUNTIMES = {
    "onnxruntime": (OnnxNetwork, OnnxMTCNNNets),
    "openvino": (OpenVinoNetwork, OpenVinoMTCNNNets),
}
PX_TOL = 0.5
PROB_TOL = 1e-3
NAMES = ["person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2"]
#: LFW photos, when the shared slice is beside the checkout: varied faces and poses.
LFW_PHOTOS = 24


def _photos(faces_dir: Path) -> list[np.ndarray]:
    paths = [faces_dir / f"{n}.jpg" for n in NAMES]
    lfw = Path(__file__).resolve().parents[3].parent / "shared" / "lfw-dev"
    if lfw.is_dir():
        paths += sorted(lfw.glob("*/*.jpg"))[::37][:LFW_PHOTOS]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> list[np.ndarray]:
    return _photos(faces_dir)


@pytest.fixture(scope="module")
def torch_pipeline() -> FacePipeline:
    built = FacePipeline(Settings(runtime="torch", num_threads=2))
    built.warm_up()
    return built


@pytest.fixture(scope="module", params=sorted(RUNTIMES))
def served_pipeline(request) -> FacePipeline:
    built = FacePipeline(Settings(runtime=request.param, num_threads=2))
    built.warm_up()
    return built


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("model_id", ["sface", "dlib-resnet"])
def test_each_embedder_graph_matches_its_module_on_real_aligned_faces(
    model_id, runtime, photos, torch_pipeline
):
    model_dir = default_model_dir()
    card = read_card(model_dir, model_id)
    assert card.onnx["weights_sha256"] == card.weights_sha256 and card.onnx["opset"] == 17
    part = [p.model_id for p in torch_pipeline.embedder.parts].index(model_id)  # type: ignore[union-attr]
    chips = []
    for image in photos:
        detections = torch_pipeline.detector.detect(image)
        if detections:
            chips.append(torch_pipeline.align(image, detections[0], 0).all_chips[part])
    assert len(chips) >= len(NAMES)
    batch = np.stack(chips)
    module, _ = load_network(model_dir, model_id)
    expected = TorchNetwork(module)(batch)
    got = RUNTIMES[runtime][0](model_dir, card, threads=2)(batch)
    assert got.shape == expected.shape == (len(chips), card.embedding_dim)
    assert _cosines(expected, got).min() > MIN_COSINE


def _crops(photos: list[np.ndarray], size: int) -> np.ndarray:
    """Real faces (and the border around them) resized to ``size`` and normalised as MTCNN
    feeds RNet and ONet: the kind of input those nets see."""
    finder = FastMTCNN(TorchMTCNNNets())
    crops = []
    for image in photos:
        boxes = finder.detect(image[None])[0][0]
        for x1, y1, x2, y2 in [] if boxes is None else boxes.astype(int):
            for grow in (0, 8):  # the box, and a looser one, as the earlier stages propose
                box = (max(0, x1 - grow), max(0, y1 - grow), x2 + grow, y2 + grow)
                face = Image.fromarray(image).crop(box).resize((size, size), Image.BILINEAR)
                crops.append((np.asarray(face, np.float32) - 127.5) * 0.0078125)
    return np.stack(crops)


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_each_detector_graph_matches_its_net_on_real_inputs(runtime, photos):
    """Net by net, on the same inputs: a pyramid level of each photo for PNet, face crops
    for RNet and ONet. Landmarks are box-relative: 1e-4 of a 500 px box is 0.05 px."""
    ours = RUNTIMES[runtime][1](default_model_dir(), threads=2)
    ref = TorchMTCNNNets()
    for image in photos:
        small = np.asarray(
            Image.fromarray(image).resize((image.shape[1] // 3, image.shape[0] // 3))
        )
        x = np.ascontiguousarray((small[None].astype(np.float32) - 127.5) * 0.0078125)
        for got, want in zip(ours.pnet(x), ref.pnet(x.copy()), strict=True):
            assert got.shape == want.shape
            assert np.abs(got - want).max() < 1e-4
    for size, name in ((24, "rnet"), (48, "onet")):
        crops = _crops(photos, size)
        got_all = getattr(ours, name)(crops)
        want_all = getattr(ref, name)(crops.copy())
        for got, want in zip(got_all, want_all, strict=True):
            assert got.shape == want.shape and len(got) == len(crops)
            assert np.abs(got - want).max() < 1e-4


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _found(detected) -> list[tuple[np.ndarray, float, np.ndarray]]:  # type: ignore[no-untyped-def]
    """One image's detections as (box, probability, landmarks); none: an empty list."""
    boxes, probs, points = (x[0] for x in detected)
    if boxes is None or probs is None or points is None:
        return []
    return [(b, float(p), pt) for b, p, pt in zip(boxes, probs, points, strict=True)]


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_the_detector_graphs_find_what_the_torch_nets_find(runtime, photos):
    """Whole detections. MTCNN thresholds and truncates at every stage (a PNet cell at 0.6,
    a crop's integer corner), so a rounding difference anywhere, another CPU's as much as
    another runtime's, can now and then move a face by a few pixels (1 photo in 528 of
    LFW-dev, by 4 px): every face is found by both, the same box to IoU 0.9, and nearly all
    of them to half a pixel."""
    torch_mtcnn = FastMTCNN(TorchMTCNNNets())
    onnx_mtcnn = FastMTCNN(RUNTIMES[runtime][1](default_model_dir(), threads=2))
    faces, close = 0, 0
    for image in photos:
        ours = _found(onnx_mtcnn.detect(image[None]))
        ref = _found(torch_mtcnn.detect(image[None]))
        # Every confident face of either is the other's too; a score near a threshold may
        # fall either side of it on another runtime (or CPU), so "confident" is 0.95 here.
        for a, b in ((ours, ref), (ref, ours)):
            for box, prob, _ in (f for f in a if f[1] >= 0.95):
                assert b, "a face one found, the other did not"
                best = max(b, key=lambda f: _iou(box, f[0]))
                assert _iou(box, best[0]) > 0.9
                assert abs(prob - best[1]) < 0.01
        for box, _, points in (f for f in ref if f[1] >= 0.95):
            best = max(ours, key=lambda f: _iou(box, f[0]))
            faces += 1
            close += bool(np.abs(best[2] - points).max() < PX_TOL)
    assert faces >= len(photos)
    assert close >= 0.9 * faces


def test_the_served_pipeline_embeds_as_the_torch_reference(photos, torch_pipeline, served_pipeline):
    """The default model (fused) end to end, photo to unit vector, on both runtimes."""
    assert served_pipeline.model_id == torch_pipeline.model_id
    assert served_pipeline.card.weights_sha256 == torch_pipeline.card.weights_sha256
    ours = served_pipeline.process_many(photos)
    ref = torch_pipeline.process_many(photos)
    cosines = []
    for a, b in zip(ours, ref, strict=True):
        assert type(a) is type(b)
        if isinstance(a, FaceResult) and isinstance(b, FaceResult):
            cosines.append(float(a.primary.vector @ b.primary.vector))
    assert len(cosines) >= len(NAMES)
    # Where detection moved a face (see above) the chip moves with it: the same face still.
    assert min(cosines) > 0.95
    assert np.mean(np.array(cosines) > MIN_COSINE) >= 0.9


@pytest.mark.parametrize("runtime", [None, *sorted(RUNTIMES)])
def test_serving_on_a_graph_runtime_never_imports_torch(runtime, faces_dir):
    """A photo to an embedding in a fresh process, on the default runtime (None) and on
    each graph runtime: neither torch nor anything that loads it (facenet-pytorch,
    torchvision, safetensors, onnx) is imported, not even lazily on the way."""
    code = (
        "import sys\n"
        "from facegate.pipeline.face_pipeline import FacePipeline\n"
        "from facegate.settings import Settings\n"
        f"result = FacePipeline(Settings()).process({str(faces_dir / 'person_a_1.jpg')!r})\n"
        "assert result.primary.vector.shape == (256,)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'facenet_pytorch', 'safetensors', 'onnx'))\n"
        "print(loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    if runtime is not None:
        env["FACEGATE_RUNTIME"] = runtime
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_openvino_serves_without_loading_its_model_converter(faces_dir):
    """``import openvino`` would load ``openvino.tools.ovc`` (0.14 s of a cold start); the
    runtime skips it when it imports OpenVINO first, and leaves a process that imported
    OpenVINO itself as it was."""
    photo = str(faces_dir / "person_a_1.jpg")
    served = (
        "import sys\n"
        "from facegate.pipeline.face_pipeline import FacePipeline\n"
        "from facegate.settings import Settings\n"
        f"result = FacePipeline(Settings(runtime='openvino')).process({photo!r})\n"
        "assert result.primary.vector.shape == (256,)\n"
        "print(sys.modules.get('openvino.tools.ovc', 'absent'))\n"
    )
    mine = "import openvino\n" + served + "print(callable(openvino.convert_model))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    outputs = []
    for code in (served, mine):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.split())
    assert outputs[0] == ["None"]  # marked absent: never imported
    assert outputs[1][0].startswith("<module") and outputs[1][-1] == "True"


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_a_graph_that_is_not_the_exported_one_is_refused(runtime, tmp_path):
    network, nets = RUNTIMES[runtime]
    model_dir = tmp_path / "models"
    shutil.copytree(default_model_dir() / "sface", model_dir / "sface")
    card = read_card(model_dir, "sface")
    # Each runtime serves its own graph (OpenVINO the one with int8 FC groups): whichever it
    # is, a changed byte in it is refused.
    for record in (card.onnx, card.onnx["fc_weights"]):
        graph = model_dir / "sface" / record["file"]
        intact = graph.read_bytes()
        graph.write_bytes(intact[:-1] + b"\0")
        try:
            network(model_dir, card)
        except ModelNotFoundError as refused:
            assert "does not match its recorded sha256" in str(refused)
            break
        finally:
            graph.write_bytes(intact)
    else:
        pytest.fail("a corrupted graph was served")
    write_card(model_dir, replace(card, onnx={**card.onnx, "weights_sha256": "0" * 64}))
    with pytest.raises(ModelNotFoundError, match="exported from other weights"):
        network(model_dir, read_card(model_dir, "sface"))
    write_card(model_dir, replace(card, onnx={}))
    with pytest.raises(ModelNotFoundError, match="FACEGATE_RUNTIME=torch"):
        network(model_dir, read_card(model_dir, "sface"))
    record = json.loads((default_model_dir() / "mtcnn" / "detector.json").read_text())
    assert set(record["graphs"]) == {"pnet", "rnet", "onet"}
    with pytest.raises(ModelNotFoundError, match="run 'facegate setup'"):
        nets(model_dir)
