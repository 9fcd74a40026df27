"""Fixtures shared by unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture()
def logging_left_as_found() -> Iterator[None]:
    """For tests that call the CLI's main(): it points structlog at this test's captured
    stderr (and at its log level), which must not outlive the test."""
    yield
    structlog.reset_defaults()
