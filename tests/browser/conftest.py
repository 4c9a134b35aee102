"""What the browser tests share: Chromium under Playwright, the local stack, the screenshots.

The tests drive Debian's Chromium (``/usr/bin/chromium``, or ``FACEGATE_CHROMIUM``) through
Playwright for Python: ``playwright install`` downloads its own browsers, which set-up cannot
do offline. Without either, every browser test skips with one line saying how to get them
(``tests/browser/install_browser.sh``).

The page is served by the local stack (``facegate local up``, as ``make demo`` runs it), on
free ports and a private state directory: the API function as Lambda runs it, behind the
local API Gateway, so the page meets the same limits a deployed one does.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser_support import (
    ARTIFACTS,
    CHROMIUM,
    HOW_TO_ENABLE,
    Stack,
    browser_available,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The browser's executable; skips (saying how to enable) without it or Playwright.
    A test module skips itself at import for one line in the report, not one per test."""
    if not browser_available():
        pytest.skip(HOW_TO_ENABLE)
    return CHROMIUM


@pytest.fixture(scope="module")
def stack(chromium: Path) -> Iterator[Stack]:
    """A private local stack for the module (:mod:`facegate_local.private_stack`: the
    ``facegate local`` commands ``make demo`` runs, on free ports and a state directory of
    its own); started after the browser check, so that a machine without Chromium skips
    without starting it."""
    from facegate_local.private_stack import private_stack

    with private_stack() as running:
        yield Stack(running.api_url, running.api_key)


@pytest.fixture(scope="module")
def playwright(chromium: Path) -> Iterator[Playwright]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def launch(playwright: Playwright, chromium: Path) -> Iterator[Callable[[Path], Browser]]:
    """``launch(video)``: a Chromium whose camera plays ``video`` (a .y4m, looped). The fake
    camera is the browser process's, so each video gets its own browser."""
    browsers: list[Browser] = []

    def start(video: Path) -> Browser:
        args = [
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",  # grants the camera without asking
            f"--use-file-for-fake-video-capture={video.resolve()}",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
        browser = playwright.chromium.launch(executable_path=str(chromium), args=args)
        browsers.append(browser)
        return browser

    yield start
    for browser in browsers:
        browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots of each test's end state: ``tests/browser/artifacts/<step>.png``."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS
