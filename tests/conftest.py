"""Fixtures shared by every test folder.

Under pytest's prepend import mode, importing this file puts ``tests/`` on sys.path (before any
test module is imported), so helper modules here, such as ``uvicorn_thread.py``, can be imported by
plain name from tests/crawler and tests/trainer alike."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO_ROOT.parent / "shared" / "data" / "hymenoptera_data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The real photos (``{train,val}/{ants,bees}``) beside the checkout; skips when absent."""
    if not (HYMENOPTERA / "train").is_dir():
        pytest.skip(f"real photos not found at {HYMENOPTERA}")
    return HYMENOPTERA
