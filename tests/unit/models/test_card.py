"""Model cards made through the one constructor path, ``ModelCard.for_weights``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from facegate.errors import ValidationError
from facegate.models.card import NETWORK_INPUTS, PIXEL_FORMAT, ModelCard, read_card, write_card
from facegate.models.templates import TEMPLATES


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not really weights, but bytes with a digest")
    return path


def test_for_weights_reads_the_file_and_the_architecture(tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    card = ModelCard.for_weights(
        weights,
        model_id="dlib-resnet",
        version="v1",
        architecture="dlib_resnet",
        embedding_dim=128,
        threshold=0.9,
        source={"file": "x.dat"},
        calibration={"threshold": 0.9},
        license="CC0-1.0",
    )
    assert card.weights_file == "model.safetensors"
    assert card.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (card.input_size, card.template) == (150, "dlib_150")
    assert card.pixel_format == PIXEL_FORMAT
    assert "122.782" in card.pixel_normalisation
    write_card(tmp_path, card)
    assert read_card(tmp_path, "dlib-resnet") == card


def test_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no input facts"):
        ModelCard.for_weights(
            _weights(tmp_path),
            model_id="x",
            version="v1",
            architecture="vit_huge",
            embedding_dim=512,
            threshold=0.5,
            source={},
            calibration={},
        )


def test_every_architecture_input_names_a_known_template_of_its_size() -> None:
    for architecture, network in NETWORK_INPUTS.items():
        assert network.template in TEMPLATES, architecture
        assert TEMPLATES[network.template][1] == network.input_size, architecture


def test_every_buildable_architecture_has_its_input_facts() -> None:
    """The registry builds networks by architecture; each one needs its card facts."""
    from facegate.models.registry import BUILDERS

    assert set(BUILDERS) <= set(NETWORK_INPUTS)
