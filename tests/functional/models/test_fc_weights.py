"""SFace's large fully connected layer is served by OpenVINO from int8 groups, and nothing
else changes: the float graph stays what ONNX Runtime serves, the int8 one reproduces it on
real faces, and a model folder exported before this gets the second graph at set-up.

The torch reference for both graphs is in test_onnx_runtime.py (cosine 0.9999 per face on
real aligned chips, each runtime); here, what the rewrite itself must hold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from facegate.models.card import model_path, read_card, sha256_file
from facegate.models.fc_weights import (
    GROUP,
    MIN_WEIGHTS,
    compress_fc_weights,
    dequantise_groups,
    quantise_groups,
)
from facegate.models.graphs import embedder_graph
from facegate.models.onnx_export import FC_INT8_FILE, ONNX_FILE, embedder_exported
from facegate.models.onnx_runtime import OnnxNetwork
from facegate.models.openvino_runtime import OpenVinoNetwork
from facegate.settings import default_model_dir

FC = "inner.pre_fc1.weight"


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def sface_weight() -> np.ndarray:
    return _initializers(model_path(default_model_dir(), "sface") / ONNX_FILE)[FC]


def test_groups_round_trip_within_half_a_step(sface_weight):
    """Each weight comes back within half its group's step (round to nearest), and zero
    stays exactly zero (the zero point is an integer inside 0..255)."""
    q, zero, scale = quantise_groups(sface_weight)
    assert q.dtype == zero.dtype == np.uint8 and scale.dtype == np.float32
    assert q.shape == (128, sface_weight.shape[1] // GROUP, GROUP)
    back = dequantise_groups(q, zero, scale)
    steps = np.repeat(scale[..., 0], GROUP, axis=1)
    assert (np.abs(back - sface_weight) <= steps * 0.5 + 1e-7).all()
    assert np.abs(dequantise_groups(zero, zero, scale)).max() == 0.0


def test_only_large_gemm_weights_are_rewritten():
    """SFace: its one large layer (50,176 x 128) is rewritten and no convolution is;
    dlib's fully connected layer is under the size limit and its graph stays as it was."""
    folder = default_model_dir()
    sface = onnx.load(str(model_path(folder, "sface") / ONNX_FILE))
    before = {t.name for t in sface.graph.initializer}
    layers = compress_fc_weights(sface)
    assert [(layer.name, layer.shape) for layer in layers] == [(FC, (128, 50176))]
    after = {t.name for t in sface.graph.initializer}
    assert before - after == {FC}
    assert {n.op_type for n in sface.graph.node if n.output[0] == FC} == {"Reshape"}

    dlib = onnx.load(str(model_path(folder, "dlib-resnet") / ONNX_FILE))
    serialized = dlib.SerializeToString()
    assert all(np.prod(t.dims) < MIN_WEIGHTS for t in dlib.graph.initializer if len(t.dims) == 2)
    assert compress_fc_weights(dlib) == [] and dlib.SerializeToString() == serialized


def test_openvino_serves_the_int8_graph_and_onnxruntime_the_float_one(pipeline, faces_dir):
    """The card records both graphs; the int8 one holds the layer as uint8 bytes (a quarter
    of the float's) and gives the float graph's embeddings on real aligned faces."""
    folder = default_model_dir()
    card = read_card(folder, "sface")
    record = card.onnx["fc_weights"]
    assert record["file"] == FC_INT8_FILE and record["layers"][0]["name"] == FC
    int8_path = embedder_graph(folder, card, fc_int8=True)
    float_path = embedder_graph(folder, card)
    assert (int8_path.name, float_path.name) == (FC_INT8_FILE, ONNX_FILE)
    stored = _initializers(int8_path)
    assert stored[f"{FC}.int8.q"].dtype == np.uint8 and FC not in stored
    assert FC in _initializers(float_path)

    part = [p.model_id for p in pipeline.embedder.parts].index("sface")
    chips = []
    for photo in sorted(faces_dir.glob("*.jpg")):
        image = np.asarray(Image.open(photo).convert("RGB"))
        found = pipeline.detector.detect(image)
        if found:
            chips.append(pipeline.align(image, found[0], 0).all_chips[part])
    batch = np.stack(chips)
    assert len(batch) >= 6
    on_float = OnnxNetwork(folder, card, threads=2)(batch)
    on_int8 = OpenVinoNetwork(folder, card, threads=2)(batch)
    cosines = np.sum(on_float * on_int8, axis=1) / (
        np.linalg.norm(on_float, axis=1) * np.linalg.norm(on_int8, axis=1)
    )
    assert cosines.min() > 0.9999


def test_a_folder_exported_before_int8_graphs_is_exported_again(tmp_path):
    """A card whose ``onnx`` record predates the int8 graph is not taken as exported (set-up
    writes the second graph), and one whose int8 graph was altered is not either."""
    folder = default_model_dir()
    copy = tmp_path / "models"
    shutil.copytree(model_path(folder, "sface"), copy / "sface")
    card = read_card(copy, "sface")
    assert embedder_exported(copy, card)

    old = json.loads((copy / "sface" / "card.json").read_text())
    del old["onnx"]["fc_weights"]
    (copy / "sface" / "card.json").write_text(json.dumps(old))
    assert not embedder_exported(copy, read_card(copy, "sface"))

    int8 = copy / "sface" / FC_INT8_FILE
    int8.write_bytes(int8.read_bytes()[:-1] + b"\0")
    assert sha256_file(int8) != card.onnx["fc_weights"]["sha256"]
    assert not embedder_exported(copy, card)
