"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
