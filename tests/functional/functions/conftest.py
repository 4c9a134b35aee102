"""What the API tests of this folder share: the app on the module's moto, with a given key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests_support import clear_app_caches

from app import deps
from app.main import create_app
from facegate.settings import get_settings


@pytest.fixture(scope="module")
def api_client(pipeline: Any, aws: Any) -> Iterator[Callable[..., TestClient]]:
    """``api_client(key, **client options)``: a TestClient of the app, the session's pipeline
    and the module's moto, sending ``key``; the cached stores are dropped before and after
    (they hold clients made under another module's moto)."""
    clear_app_caches()
    app = create_app()
    app.dependency_overrides[deps.get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: aws
    yield lambda key, **options: TestClient(app, headers={"x-api-key": key}, **options)
    clear_app_caches()
