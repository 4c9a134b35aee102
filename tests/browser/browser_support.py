"""What the browser tests' modules import (``conftest.py`` holds their fixtures): where
the browser is, how to enable the tests without one, and the running stack's handle. A
module of its own name: several test folders have a ``conftest``, so none can be imported
by that name."""

from __future__ import annotations

import base64
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path(os.environ.get("FACEGATE_CHROMIUM", "/usr/bin/chromium"))
HOW_TO_ENABLE = (
    f"browser tests need Chromium at {CHROMIUM} and Playwright for Python: "
    "run 'sh tests/browser/install_browser.sh' (or set FACEGATE_CHROMIUM)"
)


def browser_available() -> bool:
    """Whether Playwright imports and the Chromium it is to drive is there."""
    return importlib.util.find_spec("playwright") is not None and os.access(CHROMIUM, os.X_OK)


@dataclass(frozen=True)
class Stack:
    """The running local stack: where the API is and the key it made."""

    url: str
    key: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"x-api-key": self.key}, timeout=60)

    def enrol(self, subject: str, *photos: bytes) -> dict[str, Any]:
        """Register ``subject`` from ``photos`` through the API (not the page)."""
        with self.client() as client:
            answer = client.post(
                f"/subjects/{subject}/faces",
                json={"images": [base64.b64encode(p).decode() for p in photos]},
            )
        assert answer.status_code == 201, answer.text
        found: dict[str, Any] = answer.json()
        assert found["rejected"] == 0, found
        return found

    def has_subject(self, subject: str) -> bool:
        with self.client() as client:
            return client.get(f"/subjects/{subject}").status_code == 200
