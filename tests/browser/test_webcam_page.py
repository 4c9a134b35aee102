"""The webcam page in a real browser: register, identify, log in with the liveness check.

Chromium's fake camera plays videos made here from real photos (:mod:`fake_camera`): an
LFW-dev person whose head turns (a frontal photo, a photo turned to his left and its mirror
image), the same frontal photo held still, and a stranger (one of the project's test
photos). The page talks to a private local stack over HTTP, as a deployed page would.

Each test saves a screenshot of its end state as ``tests/browser/artifacts/<step>.png``; and
each checks that the page made no request to another origin, hit no script error and no
Content-Security-Policy refusal, and opened no dialog.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from browser_support import HOW_TO_ENABLE, Stack, browser_available
from fake_camera import HEIGHT, WIDTH, camera_frame, pose_loop, still, write_y4m
from PIL import Image

if not browser_available():
    pytest.skip(HOW_TO_ENABLE, allow_module_level=True)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, ViewportSize

#: An LFW-dev person with a frontal photo and a clearly turned one, picked by the landmark
#: yaw estimate of facegate.liveness.pose (yunet): 0.05 frontal, +1.18 turned (to his own
#: left), -1.07 for its mirror image; the server asks for 0.8 from the centre. The three
#: faces are one person to the model (lowest pair cosine 0.75, threshold 0.63).
PERSON = "Mohammad_Khatami"
FRONTAL = "Mohammad_Khatami_0005.jpg"
TURNED_LEFT = "Mohammad_Khatami_0010.jpg"
#: The page's capture schedule (app.js), which the pose video is timed against.
FRAMES_PER_STEP = 5
SUBJECT = "alex"
OTHER = "person-b"
PHONE: ViewportSize = {"width": 390, "height": 844}
SLOW = 60_000  # ms: a log-in takes ~8 s of capture, then the frames' check


@dataclass(frozen=True)
class Videos:
    turning: Path
    still: Path
    stranger: Path
    empty: Path


@pytest.fixture(scope="module")
def photos(lfw_dev: Path) -> dict[str, Path]:
    folder = lfw_dev / PERSON
    return {"frontal": folder / FRONTAL, "turned_left": folder / TURNED_LEFT}


@pytest.fixture(scope="module")
def videos(
    photos: dict[str, Path], faces_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Videos:
    folder = tmp_path_factory.mktemp("camera")
    return Videos(
        turning=write_y4m(
            folder / "turning.y4m", pose_loop(photos["frontal"], photos["turned_left"])
        ),
        still=write_y4m(folder / "still.y4m", still(photos["frontal"])),
        stranger=write_y4m(folder / "stranger.y4m", still(faces_dir / "impostor_1.jpg")),
        empty=write_y4m(folder / "empty.y4m", [np.full((HEIGHT, WIDTH, 3), 128, np.uint8)]),
    )


@pytest.fixture(scope="module")
def turning(launch: Callable[[Path], Browser], videos: Videos) -> Browser:
    return launch(videos.turning)


@pytest.fixture(scope="module")
def held_up(launch: Callable[[Path], Browser], videos: Videos) -> Browser:
    return launch(videos.still)


@pytest.fixture(scope="module")
def nobody(launch: Callable[[Path], Browser], videos: Videos) -> Browser:
    return launch(videos.empty)


@pytest.fixture(scope="module")
def stranger(launch: Callable[[Path], Browser], videos: Videos) -> Browser:
    return launch(videos.stranger)


def jpeg(frame: Any) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def alex(stack: Stack, photos: dict[str, Path]) -> str:
    """The turning person, registered: by the page's own test when it ran first, else
    through the API (so that each test also runs alone)."""
    if not stack.has_subject(SUBJECT):
        stack.enrol(SUBJECT, jpeg(camera_frame(photos["frontal"])))
    return SUBJECT


@pytest.fixture(scope="module")
def person_b(stack: Stack, faces_dir: Path) -> str:
    """Another person, registered through the API."""
    if not stack.has_subject(OTHER):
        stack.enrol(OTHER, (faces_dir / "person_b_1.jpg").read_bytes())
    return OTHER


@dataclass
class Visit:
    """One tab on the page, and what it did: its requests and its console errors."""

    page: Page
    origin: str
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def posted(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies the page POSTed to ``path`` (relative to the origin)."""
        return [
            json.loads(r.post_data or "null")
            for r in self.requests
            if r.method == "POST" and r.url == f"{self.origin}/{path}"
        ]

    def check_clean(self) -> None:
        """Same origin only; no script error, no CSP refusal, no dialog (never alert())."""
        foreign = [r.url for r in self.requests if not r.url.startswith(self.origin + "/")]
        assert foreign == []
        assert self.errors == []


@pytest.fixture
def visit(stack: Stack) -> Iterator[Callable[..., Visit]]:
    """``visit(browser, key=...)``: the page open at phone width, the key entered."""
    contexts = []

    def open_page(browser: Browser, key: str | None = None) -> Visit:
        context = browser.new_context(viewport=PHONE)
        contexts.append(context)
        page = context.new_page()
        seen = Visit(page, stack.url)
        page.on("request", lambda request: seen.requests.append(request))
        page.on("pageerror", lambda error: seen.errors.append(f"page error: {error}"))
        page.on("dialog", lambda dialog: seen.errors.append(f"dialog: {dialog.message}"))

        def console(message: ConsoleMessage) -> None:
            # A refusal's 4xx is logged by Chromium itself; everything else is a fault.
            if message.type == "error" and "Failed to load resource" not in message.text:
                seen.errors.append(f"console: {message.text}")

        page.on("console", console)
        page.goto(f"{stack.url}/")
        page.wait_for_selector("body[data-ready=true]")
        page.get_by_label("Key", exact=True).fill(stack.key if key is None else key)
        page.get_by_role("button", name="Use this key").click()
        assert "A key is set" in page.locator("#key-status").inner_text()
        return seen

    yield open_page
    for context in contexts:
        context.close()


def screenshot(page: Page, folder: Path, step: str) -> None:
    page.screenshot(path=str(folder / f"{step}.png"), full_page=True)


def outcome(page: Page, result: str) -> dict[str, str | None]:
    """The action's outcome once shown: the result region's data and text."""
    region = page.locator(f"#{result}-result[data-outcome]")
    region.wait_for(timeout=SLOW)
    return {
        "outcome": region.get_attribute("data-outcome"),
        "code": region.get_attribute("data-code"),
        "reason": region.get_attribute("data-reason"),
        "text": region.inner_text(),
    }


def decoded_jpeg(image: str) -> bytes:
    data = base64.b64decode(image, validate=True)
    assert data[:3] == b"\xff\xd8\xff", "not a bare base64 JPEG"
    return data


def log_in(seen: Visit, subject: str) -> dict[str, str | None]:
    page = seen.page
    page.get_by_role("tab", name="Log in").click()
    page.locator("#panel-login").get_by_label("Subject id").fill(subject)
    page.get_by_role("button", name="Log in").click()
    return outcome(page, "login")


def check_challenge_answered(seen: Visit, subject: str) -> None:
    """The page answered the challenge it got: every step in its order, 5 frames each."""
    (asked,) = seen.posted("liveness/challenges")
    assert asked == {"subject_id": subject}
    (answered,) = seen.posted("liveness/verify")
    (issued,) = [
        r.response().json()  # type: ignore[union-attr]
        for r in seen.requests
        if r.url.endswith("/liveness/challenges")
    ]
    assert answered["challenge_id"] == issued["challenge_id"]
    assert answered["subject_id"] == subject
    labels = [f["step"] for f in answered["frames"]]
    assert labels == [s for s in issued["steps"] for _ in range(FRAMES_PER_STEP)]
    assert issued["steps"][0] == "center"
    for frame in answered["frames"]:
        decoded_jpeg(frame["image"])


def test_register_captures_three_frames_all_accepted(turning, visit, stack, artifacts):
    seen = visit(turning)
    page = seen.page
    page.locator("#panel-register").get_by_label("Subject id").fill(SUBJECT)
    page.get_by_role("button", name="Capture 3 frames").click()
    shown = outcome(page, "register")
    screenshot(page, artifacts, "register")
    assert shown["outcome"] == "accepted", shown
    assert "3 of 3 frames accepted" in str(shown["text"])
    frames = page.locator("#register-frames li")
    assert frames.count() == 3
    assert page.locator("#register-frames li[data-verdict=accepted]").count() == 3
    sent = seen.posted(f"subjects/{SUBJECT}/faces")
    assert len(sent) == 3 and all(set(body) == {"image"} for body in sent)
    for body in sent:
        decoded_jpeg(body["image"])
    assert stack.has_subject(SUBJECT)
    seen.check_clean()


def test_register_says_why_each_frame_is_rejected(nobody, visit, stack, artifacts):
    seen = visit(nobody)
    page = seen.page
    page.locator("#panel-register").get_by_label("Subject id").fill("nobody")
    page.get_by_role("button", name="Capture 3 frames").click()
    shown = outcome(page, "register")
    screenshot(page, artifacts, "register-rejected")
    assert shown["outcome"] == "rejected", shown
    assert "0 of 3 frames accepted" in str(shown["text"])
    rejected = page.locator("#register-frames li[data-verdict=rejected][data-code=no_face]")
    assert rejected.count() == 3
    assert "No face was found" in rejected.first.inner_text()
    assert not stack.has_subject("nobody")
    seen.check_clean()


def test_identify_names_the_registered_person(turning, visit, alex, artifacts):
    seen = visit(turning)
    page = seen.page
    page.get_by_role("tab", name="Identify").click()
    page.get_by_role("button", name="Identify").click()
    shown = outcome(page, "identify")
    screenshot(page, artifacts, "identify-match")
    assert shown["outcome"] == "match", shown
    assert f"Best match: {alex}" in str(shown["text"])
    seen.check_clean()


def test_identify_finds_no_match_for_a_stranger(stranger, visit, alex, person_b, artifacts):
    seen = visit(stranger)
    page = seen.page
    page.get_by_role("tab", name="Identify").click()
    page.get_by_role("button", name="Identify").click()
    shown = outcome(page, "identify")
    screenshot(page, artifacts, "identify-no-match")
    assert shown["outcome"] == "no_match", shown
    assert "No match" in str(shown["text"])
    assert alex not in str(shown["text"]) and person_b not in str(shown["text"])
    seen.check_clean()


def test_log_in_with_a_turning_head_is_granted(turning, visit, alex, artifacts):
    seen = visit(turning)
    shown = log_in(seen, alex)
    screenshot(seen.page, artifacts, "login-granted")
    assert shown["outcome"] == "granted", shown
    assert "Access granted" in str(shown["text"])
    check_challenge_answered(seen, alex)
    states = seen.page.locator("#login-steps li .state").all_inner_texts()
    assert states[0].startswith("captured")  # center: the reference, not judged by itself
    assert all(state.startswith("passed") for state in states[1:]), states
    seen.check_clean()


def test_log_in_as_someone_else_is_denied(turning, visit, alex, person_b, artifacts):
    seen = visit(turning)
    shown = log_in(seen, person_b)
    screenshot(seen.page, artifacts, "login-denied")
    assert shown["outcome"] == "denied" and shown["code"] is None, shown
    assert "Access denied" in str(shown["text"])
    assert f"does not match {person_b}" in str(shown["text"])
    check_challenge_answered(seen, person_b)
    seen.check_clean()


def test_a_photo_held_up_is_refused_as_not_live(held_up, visit, alex, artifacts):
    seen = visit(held_up)
    shown = log_in(seen, alex)
    screenshot(seen.page, artifacts, "login-still-photo")
    assert shown["outcome"] == "denied", shown
    assert (shown["code"], shown["reason"]) == ("liveness_failed", "no_movement")
    assert "No head movement was seen" in str(shown["text"])
    check_challenge_answered(seen, alex)
    seen.check_clean()


def test_a_refused_key_is_shown_in_words_and_tabs_work_by_keyboard(stranger, visit, artifacts):
    seen = visit(stranger, key="fg_not-a-key")
    page = seen.page
    register = page.get_by_role("tab", name="Register")
    register.focus()
    page.keyboard.press("ArrowLeft")  # wraps round to the last tab
    identify = page.get_by_role("tab", name="Identify")
    assert identify.get_attribute("aria-selected") == "true"
    assert page.evaluate("document.activeElement.id") == "tab-identify"
    assert page.locator("#panel-identify").is_visible()
    assert not page.locator("#panel-register").is_visible()
    page.keyboard.press("Tab")  # into the panel, then its button
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "identify-go"
    page.keyboard.press("Enter")
    shown = outcome(page, "identify")
    screenshot(page, artifacts, "refused-key")
    assert (shown["outcome"], shown["code"]) == ("error", "unauthorized"), shown
    assert "The API key was refused" in str(shown["text"])
    seen.check_clean()
