"""The threshold service: a raw threshold, or the card's calibrated one for a target FAR."""

from __future__ import annotations

from dataclasses import replace

import pytest

from facegate.errors import ValidationError
from facegate.models.card import ModelCard, resolve_threshold
from facegate.settings import Settings

CARD = ModelCard(
    model_id="m",
    version="1",
    architecture="sface",
    embedding_dim=128,
    input_size=112,
    template="arcface_112",
    pixel_format="RGB",
    pixel_normalisation="",
    weights_file="w",
    weights_sha256="0",
    threshold=0.37,
    calibration={"far_thresholds": {"0.01": 0.30, "0.001": 0.37}},
)


def test_far_picks_the_calibrated_threshold_however_it_is_written():
    assert resolve_threshold(CARD, far=1e-3) == 0.37
    assert resolve_threshold(CARD, far=0.01) == 0.30
    assert resolve_threshold(CARD) == 0.37
    assert resolve_threshold(CARD, threshold=0.5) == 0.5


def test_an_uncalibrated_far_is_refused_with_the_ones_that_exist():
    with pytest.raises(ValidationError, match=r"FAR 0.05; calibrated FARs: 0.001, 0.01"):
        resolve_threshold(CARD, far=0.05)
    bare = ModelCard(**{**CARD.__dict__, "calibration": {}})
    with pytest.raises(ValidationError, match="calibrated FARs: none"):
        resolve_threshold(bare, far=1e-3)


def test_threshold_and_far_together_are_refused():
    with pytest.raises(ValidationError, match="not both"):
        resolve_threshold(CARD, threshold=0.4, far=1e-3)
    with pytest.raises(ValueError, match="FACEGATE_THRESHOLD or FACEGATE_FAR"):
        Settings(threshold=0.4, far=1e-3)
    with pytest.raises(ValidationError, match="between -1 and 1"):
        resolve_threshold(CARD, threshold=1.5)


def test_settings_read_the_far_from_the_environment(monkeypatch):
    monkeypatch.setenv("FACEGATE_FAR", "0.01")
    assert Settings().far == 0.01


def test_a_card_decides_at_the_threshold_calibrated_with_the_detector():
    mtcnn = {"detector": "mtcnn", "threshold": 0.40, "far_thresholds": {"0.001": 0.40}}
    yunet = {"detector": "yunet", **CARD.calibration, "threshold": 0.37}
    card = replace(CARD, calibration=yunet, calibrations={"yunet": yunet, "mtcnn": mtcnn})
    assert card.for_detector("yunet") is card
    other = card.for_detector("mtcnn")
    assert (other.threshold, other.calibration) == (0.40, mtcnn)
    assert resolve_threshold(other, far=1e-3) == 0.40
    with pytest.raises(ValidationError, match=r"calibrated FARs: 0\.001$"):  # mtcnn: no 1e-2
        resolve_threshold(other, far=0.01)
    # A model calibrated once (a user's) keeps its one threshold on every detector.
    assert CARD.for_detector("mtcnn") is CARD
