"""The torch port of SFace computes what the published ONNX graph computes.

The reference is onnx's own ReferenceEvaluator, a numpy interpreter of the ONNX operators
(DequantizeLinear with block_size included) running the shipped file as it is: independent of
our converter and of torch. Inputs are real aligned faces, not noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facegate.models.assets import SFACE_ONNX_SHA256
from facegate.models.card import read_card, sha256_file
from facegate.models.convert_sface import ConversionError, convert_sface
from facegate.models.sface import SFace

REPO = Path(__file__).resolve().parents[3]
ONNX = REPO / ".cache" / "downloads" / "face_recognition_sface_2021dec_int8bq.onnx"


@pytest.fixture(scope="module")
def onnx_file() -> Path:
    if not ONNX.is_file():
        pytest.fail(f"{ONNX} missing: run 'make setup'")
    assert sha256_file(ONNX) == SFACE_ONNX_SHA256
    return ONNX


@pytest.fixture(scope="module")
def chips(pipeline, faces_dir) -> np.ndarray:
    out = []
    for name in ("person_a_1", "person_b_2", "impostor_1"):
        image = pipeline.decode(faces_dir / f"{name}.jpg")
        detection = pipeline.detector.detect(image)[0]
        out.append(pipeline.align(image, detection, 0).chip)
    return np.stack(out)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_port_matches_onnx_reference_on_real_faces(onnx_file, chips):
    from onnx.reference import ReferenceEvaluator

    x = chips.transpose(0, 3, 1, 2).astype(np.float32)
    reference = ReferenceEvaluator(str(onnx_file))
    expected = np.concatenate(
        [reference.run(None, {"data": x[i : i + 1]})[0] for i in range(len(x))]
    )

    state, _ = convert_sface(onnx_file)
    model = SFace()
    model.load_state_dict(state, strict=False)
    model.eval()
    with torch.no_grad():
        plain = model(torch.from_numpy(x)).numpy()
        fused = model.fuse()(torch.from_numpy(x)).numpy()
    assert _cosine(expected, plain).min() > 0.9999
    assert _cosine(expected, fused).min() > 0.9999
    np.testing.assert_allclose(plain, expected, atol=1e-3 * np.abs(expected).max())


def test_dequantised_fp32_copy_converts_to_identical_weights(onnx_file, tmp_path):
    """The converter accepts an unquantised fp32 SFace file (what OpenCV Zoo publishes)."""
    import onnx

    state, fp32_model = convert_sface(onnx_file)
    ops = {n.op_type for n in fp32_model.graph.node}
    assert "DequantizeLinear" not in ops
    path = tmp_path / "sface_fp32.onnx"
    onnx.save(fp32_model, str(path))
    state_fp32, _ = convert_sface(path)
    assert state.keys() == state_fp32.keys()
    for key in state:
        assert torch.equal(state[key], state_fp32[key]), key


def test_served_weights_are_the_converted_ones(pipeline, onnx_file):
    state, _ = convert_sface(onnx_file)
    from safetensors.torch import load_file

    served = load_file(str(pipeline.settings.model_dir / "sface" / "model.safetensors"))
    assert all(torch.equal(served[k], state[k]) for k in state)
    served_sha = sha256_file(pipeline.settings.model_dir / "sface" / "model.safetensors")
    assert served_sha == read_card(pipeline.settings.model_dir, "sface").weights_sha256


def test_other_architectures_are_refused(onnx_file, tmp_path):
    import onnx

    model = onnx.load(str(onnx_file))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [2, 2]
    path = tmp_path / "changed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ConversionError, match="stride"):
        convert_sface(path)
