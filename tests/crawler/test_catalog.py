"""The SQLite catalog: schema as documented, WAL, safe with several connections."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crawler.catalog import COLUMNS, Catalog

DOC = Path(__file__).resolve().parents[2] / "docs" / "dataset.md"


def test_schema_matches_the_documented_columns(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog:
        names = [row[1] for row in catalog._conn.execute("PRAGMA table_info(images)")]
        assert tuple(names) == COLUMNS
        assert catalog.meta() == {"schema_version": "3", "hash": "pdq", "hash_size": "16"}
    documented = DOC.read_text(encoding="utf-8")
    for column in COLUMNS:
        assert f"| {column}" in documented or f", {column}" in documented or f"{column}, " in documented


def test_wal_mode_and_two_connections_see_each_other(tmp_path: Path) -> None:
    first = Catalog(tmp_path)
    second = Catalog(tmp_path)
    try:
        plain = sqlite3.connect(tmp_path / "catalog.sqlite")
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plain.close()
        row_id = first.insert({"label": "ants", "status": "stored", "path": "ants/x.jpg", "phash": "00"})
        assert second.get(row_id)["path"] == "ants/x.jpg"
        assert [r["id"] for r in second.stored_since(0)] == [row_id]
        assert second.stored_since(row_id) == []
    finally:
        first.close()
        second.close()


OPENER = """
import sys, time
from crawler.catalog import Catalog
for folder, start in zip(sys.argv[1::2], sys.argv[2::2]):
    while time.time() < float(start):
        pass
    Catalog(folder).close()
"""


def test_processes_opening_one_fresh_dataset_at_once_all_succeed(tmp_path: Path) -> None:
    """Six processes open each of eight new datasets at the same instant (as two crawls into a
    fresh dataset do): none fails with "database is locked" while the file turns to WAL."""
    start = time.time() + 3.0  # after every process has imported the catalog
    rounds = [arg for n in range(8) for arg in (str(tmp_path / f"d{n}"), str(start + 0.3 * n))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, *rounds], cwd=Path(__file__).resolve().parents[2],
            stderr=subprocess.PIPE, text=True,
        )
        for _ in range(6)
    ]
    errors = [err for proc in procs if (err := proc.communicate(timeout=120)[1]) and proc.returncode]
    assert errors == []
    for n in range(8):
        with sqlite3.connect(tmp_path / f"d{n}" / "catalog.sqlite") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_immediate_transaction_serialises_writers(tmp_path: Path) -> None:
    first = Catalog(tmp_path)
    second = Catalog(tmp_path, timeout=5)
    order: list[str] = []
    try:
        with first.transaction() as tx:
            thread = threading.Thread(
                target=lambda: (second.insert({"label": "b", "status": "rejected"}), order.append("second"))
            )
            thread.start()
            thread.join(0.3)
            assert thread.is_alive()  # blocked on the write lock held by `first`
            first.insert({"label": "a", "status": "rejected"}, conn=tx)
            order.append("first")
        thread.join(5)
        assert order == ["first", "second"]
        assert [r["label"] for r in first.rows()] == ["a", "b"]
    finally:
        first.close()
        second.close()


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog:
        with pytest.raises(RuntimeError), catalog.transaction() as tx:
            catalog.insert({"label": "a", "status": "stored"}, conn=tx)
            raise RuntimeError
        assert catalog.rows() == []


def test_status_is_constrained(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog, pytest.raises(sqlite3.IntegrityError):
        catalog.insert({"label": "a", "status": "kept"})


def test_data_uri_urls_are_truncated_and_csv_export_has_every_row(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog:
        catalog.insert({"label": "a", "status": "rejected", "reason": "too_small", "url": "data:image/gif;base64," + "A" * 500})
        catalog.insert({"label": "b", "status": "stored", "path": "b/x.png", "url": "http://h/x.png"})
        assert len(catalog.rows()[0]["url"]) == 100
        path = catalog.export_csv()
        assert catalog.summary() == {"a": {"rejected/too_small": 1}, "b": {"stored": 1}}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == ["a", "b"]
    assert tuple(rows[0]) == COLUMNS
