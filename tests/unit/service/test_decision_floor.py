"""Decisions a request cannot bend: the deployment's minimum threshold, 1:N answers that name
only matching subjects, and scores shown to 3 decimals that never contradict ``match``.

With the fake processor's card, the floor is its FAR 1e-2 threshold (0.31) unless the
deployment names one; every similarity is known, so each test states the answer it expects.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from service_fakes import (
    ANN_1,
    ANN_PROBE,
    BOB,
    CARD_DEFAULT,
    FARS,
    TWO,
    VECTORS,
    FakeProcessor,
    make_card,
)

from facegate.errors import ValidationError
from facegate.http_errors import status_for
from facegate.service import FaceService, decision_threshold, probes
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore

#: The probe against ANN_1, the one enrolled face it matches: about 0.700140.
ANN_SIMILARITY = float(VECTORS[ANN_PROBE][0] @ VECTORS[ANN_1][0])


def service_for(fresh_aws, processor: FakeProcessor, **kwargs: float) -> FaceService:
    settings = fresh_aws.settings
    return FaceService(
        processor,
        SubjectStore.from_settings(settings),
        PhotoStore.from_settings(settings),
        **kwargs,  # type: ignore[arg-type]
    )


# -- the floor -------------------------------------------------------------------------


def test_the_default_floor_is_the_card_s_far_1e_2_threshold(processor):
    assert probes.decision_floor(processor) == FARS["0.01"]
    assert decision_threshold(processor, FARS["0.01"]) == FARS["0.01"]
    assert decision_threshold(processor, None, 0.01) == FARS["0.01"]
    for low in (-1.0, 0.0, FARS["0.01"] - 0.001):
        with pytest.raises(ValidationError, match=r"below this deployment's minimum 0\.31") as e:
            decision_threshold(processor, low)
        assert e.value.code == "validation_error" and status_for(e.value) == 400


def test_a_calibrated_far_looser_than_the_floor_is_refused():
    card = make_card()
    card = dataclasses.replace(card, calibration={"far_thresholds": {**FARS, "0.1": 0.2}})
    fake = FakeProcessor(VECTORS, card=card)
    with pytest.raises(ValidationError, match=r"FAR 0\.1 .*below this deployment's minimum 0\.31"):
        decision_threshold(fake, None, 0.1)


def test_an_explicit_floor_overrides_the_card_s():
    fake = FakeProcessor(VECTORS)
    assert probes.decision_floor(fake, 0.45) == 0.45
    with pytest.raises(ValidationError, match=r"minimum 0\.45"):
        decision_threshold(fake, None, 0.01, min_threshold=0.45)
    assert decision_threshold(fake, None, 0.001, min_threshold=0.45) == FARS["0.001"]
    # nothing is decided below the floor, the deployment's own threshold included
    assert decision_threshold(fake, min_threshold=0.45) == 0.45
    # a deployment may open the whole range on purpose
    assert decision_threshold(fake, -1.0, min_threshold=-1.0) == -1.0


def test_the_default_floor_never_refuses_the_deployment_s_own_threshold():
    """A deployment deciding below the card's FAR 1e-2 threshold (an explicit, lower
    ``FACEGATE_THRESHOLD``) lets a request ask for that threshold, and no lower."""
    fake = FakeProcessor(VECTORS, card=make_card(threshold=0.2))
    assert probes.decision_floor(fake) == 0.2
    assert decision_threshold(fake, 0.2) == 0.2
    with pytest.raises(ValidationError, match=r"minimum 0\.2"):
        decision_threshold(fake, 0.19)


def test_every_face_operation_refuses_a_threshold_below_the_floor(fresh_aws, processor):
    """``threshold: -1`` made every answer a match; now it is a 400, before any photo is
    decoded."""
    service = service_for(fresh_aws, processor)
    service.enrol("ann", [ANN_1])
    processor.policies.clear()
    reference = VECTORS[ANN_1][0].tolist()
    answers = {
        "photos": lambda: service.compare_photos(ANN_PROBE, BOB, threshold=-1),
        "embedding": lambda: service.compare_embedding(BOB, reference, threshold=-1),
        "subject": lambda: service.compare_subject(BOB, "ann", threshold=-1),
        "identify": lambda: service.identify(BOB, threshold=-1),
    }
    for name, answer in answers.items():
        with pytest.raises(ValidationError, match=r"minimum 0\.31"):
            answer()
        assert processor.policies == [], name


def test_the_service_s_explicit_floor_applies_to_every_request(fresh_aws, processor):
    service = service_for(fresh_aws, processor, min_threshold=0.45)
    with pytest.raises(ValidationError, match=r"minimum 0\.45"):
        service.compare_photos(ANN_PROBE, ANN_1, far=0.01)
    assert service.compare_photos(ANN_PROBE, ANN_1)["threshold"] == 0.45
    assert service_for(fresh_aws, processor).compare_photos(ANN_PROBE, ANN_1)["threshold"] == (
        CARD_DEFAULT
    )


# -- 1:N names matching subjects only --------------------------------------------------


def test_identify_returns_only_candidates_at_or_above_the_threshold(fresh_aws, processor):
    service = service_for(fresh_aws, processor)
    service.enrol("ann", [ANN_1])
    service.enrol("bob", [BOB])  # about 0.14 to the probe: never a candidate
    service.enrol("two", [TWO])  # (0, 0, 0, 1): 0 to the probe
    answer = service.identify(ANN_PROBE, top_k=5)
    assert [c["subject_id"] for c in answer["candidates"]] == ["ann"]
    assert answer["match"] is True and answer["best"] == answer["candidates"][0]
    strict = service.identify(ANN_PROBE, top_k=5, threshold=round(ANN_SIMILARITY + 0.01, 3))
    assert strict["candidates"] == [] and strict["best"] is None and strict["match"] is False


# -- scores to 3 decimals --------------------------------------------------------------


def _three_decimals(value: float) -> bool:
    return math.isclose(value * 1000, round(value * 1000), abs_tol=1e-6)


def test_answers_show_scores_to_three_decimals(fresh_aws, processor):
    service = service_for(fresh_aws, processor)
    enrolled = service.enrol("ann", [ANN_1])
    reference = VECTORS[ANN_1][0].tolist()
    answers = [
        service.compare_photos(ANN_PROBE, ANN_1),
        service.compare_embedding(ANN_PROBE, reference),
        service.compare_subject(ANN_PROBE, "ann"),
    ]
    for answer in answers:
        assert _three_decimals(answer["similarity"]), answer["similarity"]
        assert answer["similarity"] == pytest.approx(ANN_SIMILARITY, abs=1e-3)
        assert answer["faces"][0]["score"] == 0.988
    found = service.identify(ANN_PROBE)
    assert _three_decimals(found["candidates"][0]["similarity"])
    assert found["face"]["score"] == 0.988
    assert enrolled["photos"][0]["face"]["score"] == 0.988
    assert [f["score"] for f in service.embed(TWO)["faces"]] == [0.988, 0.988]


@pytest.mark.parametrize(
    "threshold,match",
    [
        (math.floor(ANN_SIMILARITY * 1e4) / 1e4, True),
        (math.ceil(ANN_SIMILARITY * 1e4) / 1e4, False),
    ],
)
def test_a_shown_score_never_contradicts_the_decision(fresh_aws, processor, threshold, match):
    """Similarity 0.70014 at threshold 0.7001 is a match: shown as 0.700 it would read as
    below the threshold. Scores are rounded towards the decision (up for a match, down for
    none), so ``similarity >= threshold`` on the answer always equals ``match``."""
    service = service_for(fresh_aws, processor)
    service.enrol("ann", [ANN_1])
    reference = VECTORS[ANN_1][0].tolist()
    answers = [
        service.compare_photos(ANN_PROBE, ANN_1, threshold=threshold),
        service.compare_embedding(ANN_PROBE, reference, threshold=threshold),
        service.compare_subject(ANN_PROBE, "ann", threshold=threshold),
    ]
    for answer in answers:
        assert answer["match"] is match
        assert (answer["similarity"] >= answer["threshold"]) is match, answer
    found = service.identify(ANN_PROBE, threshold=threshold)
    assert found["match"] is match
    assert all(c["similarity"] >= found["threshold"] for c in found["candidates"])


def test_the_floor_is_a_setting_that_a_lower_deployment_threshold_contradicts(monkeypatch):
    from pydantic import ValidationError as SettingsError

    from facegate.settings import Settings

    monkeypatch.setenv("FACEGATE_MIN_THRESHOLD", "0.45")
    assert Settings().min_threshold == 0.45
    assert Settings(threshold=0.5).threshold == 0.5
    with pytest.raises(SettingsError, match="below FACEGATE_MIN_THRESHOLD"):
        Settings(threshold=0.4)
    monkeypatch.delenv("FACEGATE_MIN_THRESHOLD")
    assert Settings().min_threshold is None


@pytest.mark.parametrize(("similarity", "match"), [(1.0000003, True), (-1.0000003, False)])
def test_a_shown_score_stays_a_cosine(similarity, match):
    """Unit vectors' float dot product can pass 1 by a few ulps: rounded towards a match it
    would read 1.001 (a photo against itself), a cosine no two vectors have."""
    from facegate.service.probes import shown_score

    assert shown_score(similarity, match) == (1.0 if match else -1.0)
