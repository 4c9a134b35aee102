"""The service tests' fake processor (:mod:`service_fakes`), fresh for each test."""

from __future__ import annotations

import pytest
from service_fakes import VECTORS, FakeProcessor


@pytest.fixture
def processor() -> FakeProcessor:
    """Knows the photos of :data:`service_fakes.VECTORS`; records the policies it was asked."""
    return FakeProcessor(VECTORS)
