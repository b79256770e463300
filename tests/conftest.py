"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CAPTURES = REPO.parent / "shared" / "captures"


@pytest.fixture(scope="session")
def captures() -> Path:
    """The directory of real captures (../shared/captures beside the checkout)."""
    if not CAPTURES.is_dir():
        pytest.skip(f"real captures not found at {CAPTURES}")
    return CAPTURES
