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


@pytest.fixture(scope="session")
def postgres_session():
    """A throwaway PostgreSQL cluster on 127.0.0.1 for the session (``postgres_server.py``);
    skips, saying why, where PostgreSQL is not installed (``make postgres`` installs it)."""
    from postgres_server import PostgresServer, find_postgres_bin

    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (make test installs it: apt-get install postgresql)")
    try:
        with PostgresServer(bin_dir) as server:
            yield server
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL could not be started: {exc}")


@pytest.fixture
def postgres_url(postgres_session) -> str:
    """The URL of a new, empty database in the session's cluster."""
    return postgres_session.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest) -> str | None:
    """Each catalog engine in turn: ``None`` (the SQLite file in the dataset folder), then the
    URL of a new PostgreSQL database (skipped where PostgreSQL is not installed)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")
