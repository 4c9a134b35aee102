"""Log in with a liveness check through the HTTP API, on real photos against moto.

The live person is an LFW-dev one photographed both frontal and turned: Bill_Frist_0004
(yaw ~0) and Bill_Frist_0002, his head turned to his right (yaw ~-1.1 with YuNet's
landmarks), whose mirror image is the same face turned to his left (~+1.2); the frontal and
turned photos are one person at cosine ~0.72, above the model's threshold. A still photo is
the frontal one in every frame.
"""

from __future__ import annotations

import base64
import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tests_support import clear_app_caches

from app.deps import get_pipeline
from app.main import create_app
from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.challenges import ChallengeStore
from facegate.storage.clients import aws_client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(pipeline, aws):
    clear_app_caches()
    key = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table).create("tests")
    app = create_app()
    app.dependency_overrides[get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: aws
    yield TestClient(app, headers={"x-api-key": key})
    clear_app_caches()


@pytest.fixture(scope="module")
def frames(lfw_dev):
    """The frames a live Bill Frist sends for each step, as base64 JPEGs."""
    person = lfw_dev / "Bill_Frist"
    frontal = (person / "Bill_Frist_0004.jpg").read_bytes()
    turned = Image.open(person / "Bill_Frist_0002.jpg").convert("RGB")
    mirrored = io.BytesIO()
    turned.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, "JPEG", quality=92)
    return {
        "center": b64(frontal),
        "right": b64((person / "Bill_Frist_0002.jpg").read_bytes()),
        "left": b64(mirrored.getvalue()),
    }


@pytest.fixture(scope="module")
def enrolled(client, lfw_dev, faces_dir):
    for subject, path in (
        ("frist", lfw_dev / "Bill_Frist" / "Bill_Frist_0005.jpg"),
        ("person_a", faces_dir / "person_a_1.jpg"),
    ):
        answer = client.post(f"/subjects/{subject}/faces", json={"image": b64(path.read_bytes())})
        assert answer.status_code == 201 and answer.json()["accepted"] == 1, answer.text
    return "frist"


def _challenge(client) -> dict:
    answer = client.post("/liveness/challenges")
    assert answer.status_code == 201, answer.text
    return answer.json()


def _answer(challenge: dict, frames: dict, subject: str, **replace: str) -> dict:
    """Two frames per step, in the challenge's order; ``replace`` swaps a step's frames."""
    chosen = frames | replace
    return {
        "challenge_id": challenge["challenge_id"],
        "subject_id": subject,
        "frames": [{"step": s, "image": chosen[s]} for s in challenge["steps"] for _ in (1, 2)],
    }


def test_a_challenge_is_centre_then_both_turns_and_holds_nothing_personal(client, aws):
    orders = set()
    for _ in range(12):
        challenge = _challenge(client)
        orders.add(tuple(challenge["steps"]))
        assert challenge["expires_in"] == aws.liveness_ttl_seconds == 30
        assert len(challenge["challenge_id"]) == 32
    assert orders == {("center", "left", "right"), ("center", "right", "left")}
    item = aws_client("dynamodb", aws).get_item(
        TableName=aws.table,
        Key={"pk": {"S": f"CHALLENGE#{challenge['challenge_id']}"}, "sk": {"S": "META"}},
    )["Item"]
    assert set(item) == {"pk", "sk", "steps", "expires_at"}


def test_the_live_subject_is_granted_once(client, frames, enrolled, pipeline):
    challenge = _challenge(client)
    body = _answer(challenge, frames, enrolled)
    answer = client.post("/liveness/verify", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["live"] is True and result["granted"] is True and result["match"] is True
    assert result["similarity"] >= result["threshold"] == pytest.approx(pipeline.threshold)
    turns = {s["step"]: s for s in result["steps"]}
    assert set(turns) == {"left", "right"}
    assert all(s["passed"] and s["movement"] >= s["required"] for s in turns.values())
    replayed = client.post("/liveness/verify", json=body)
    assert replayed.status_code == 404, replayed.text
    assert replayed.json()["error"]["code"] == "challenge_unknown"


def test_a_live_person_who_is_not_the_subject_is_denied(client, frames, enrolled):
    answer = client.post("/liveness/verify", json=_answer(_challenge(client), frames, "person_a"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["live"] is True and answer.json()["granted"] is False


def test_a_still_photo_is_refused_as_not_live(client, frames, enrolled):
    still = {"left": frames["center"], "right": frames["center"]}
    answer = client.post(
        "/liveness/verify", json=_answer(_challenge(client), frames, enrolled, **still)
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "liveness_failed" and error["reason"] == "no_movement"


def test_turns_in_the_wrong_order_are_refused(client, frames, enrolled):
    swapped = {"left": frames["right"], "right": frames["left"]}
    answer = client.post(
        "/liveness/verify", json=_answer(_challenge(client), frames, enrolled, **swapped)
    )
    assert answer.status_code == 422 and answer.json()["error"]["reason"] == "no_movement"


def test_another_face_in_a_step_is_refused(client, frames, enrolled, faces_dir):
    other = b64((faces_dir / "impostor_1.jpg").read_bytes())
    answer = client.post(
        "/liveness/verify", json=_answer(_challenge(client), frames, enrolled, left=other)
    )
    assert answer.status_code == 422 and answer.json()["error"]["reason"] == "different_people"


def test_an_expired_challenge_is_refused(client, frames, enrolled, aws):
    store = ChallengeStore.from_settings(aws)
    late = store.issue(["center", "left", "right"], now=time.time() - 60)
    answer = client.post(
        "/liveness/verify", json=_answer(late.to_dict(time.time()), frames, enrolled)
    )
    assert answer.status_code == 410, answer.text
    assert answer.json()["error"]["code"] == "challenge_expired"
    again = client.post(
        "/liveness/verify", json=_answer(late.to_dict(time.time()), frames, enrolled)
    )
    assert again.json()["error"]["code"] == "challenge_unknown"


def test_an_unknown_subject_uses_the_challenge_up(client, frames):
    challenge = _challenge(client)
    answer = client.post("/liveness/verify", json=_answer(challenge, frames, "nobody"))
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_subject"
    retry = client.post("/liveness/verify", json=_answer(challenge, frames, "frist"))
    assert retry.json()["error"]["code"] == "challenge_unknown"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frames": []}, "non-empty list"),
        ({"frames": [{"step": "sideways", "image": "AAAA"}]}, "step must be one of"),
        ({"frames": [{"step": "center"}]}, "with an image"),
        ({"subject_id": None}, "required strings"),
    ],
)
def test_malformed_answers_are_bad_requests(client, frames, change, message):
    body = _answer(_challenge(client), frames, "frist") | change
    answer = client.post("/liveness/verify", json=body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]["message"]
