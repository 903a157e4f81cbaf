"""Helpers for tests that run whole ``scrapy crawl`` processes, as a user types them.

(A module rather than conftest.py, so test modules can import it.)"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# `.venv/bin/scrapy` beside the running interpreter; `python -m scrapy` where there is none.
_SCRAPY = Path(sys.executable).with_name("scrapy")
SCRAPY = [str(_SCRAPY)] if _SCRAPY.exists() else [sys.executable, "-m", "scrapy"]
FAST = ["-s", "AUTOTHROTTLE_ENABLED=0", "-s", "LOG_LEVEL=INFO"]


def gallery_command(start_url: str, label: str, dataset: Path, *extra: str) -> list[str]:
    return [
        *SCRAPY, "crawl", "gallery",
        "-a", f"label={label}",
        "-a", f"start_urls={start_url}",
        "-s", f"DATASET_DIR={dataset}",
        *FAST, *extra,
    ]


def run_crawl(command: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run one crawl to its end; its stdout and stderr together in ``.stdout``."""
    return subprocess.run(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )


def catalog_rows(dataset: Path, catalog_url: str | None = None) -> list[Any]:
    """Every ``images`` row, by id: of ``dataset/catalog.sqlite``, or of the PostgreSQL catalog
    at ``catalog_url`` (rows as dicts); none before the crawl has made the table."""
    if catalog_url:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(catalog_url, row_factory=dict_row) as conn:
            try:
                return conn.execute("SELECT * FROM images ORDER BY id").fetchall()
            except psycopg.errors.UndefinedTable:
                return []
    path = dataset / "catalog.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM images ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # the crawl has not created the table yet
        return []
    finally:
        conn.close()


def stored_paths(dataset: Path) -> set[str]:
    """``<label>/<sha256>.<ext>`` of every image the catalog says is stored."""
    return {r["path"] for r in catalog_rows(dataset) if r["status"] == "stored"}
