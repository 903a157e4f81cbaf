"""The catalog on both engines (SQLite in the dataset folder, PostgreSQL at CATALOG_URL):
schema as documented, safe with several connections and processes; WAL for SQLite."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from crawler.catalog import COLUMNS, Catalog
from crawler.catalog_engines import to_psycopg
from crawler.errors import UserError

DOC = Path(__file__).resolve().parents[2] / "docs" / "dataset.md"


def test_schema_matches_the_documented_columns(tmp_path: Path, catalog_url: str | None) -> None:
    with Catalog(tmp_path, url=catalog_url) as catalog:
        names = [column[0] for column in catalog._conn.execute("SELECT * FROM images LIMIT 0").description]
        assert tuple(names) == COLUMNS
        assert catalog.meta() == {"schema_version": "3", "hash": "pdq", "hash_size": "16"}
    documented = DOC.read_text(encoding="utf-8")
    for column in COLUMNS:
        assert f"| {column}" in documented or f", {column}" in documented or f"{column}, " in documented


def test_wal_mode(tmp_path: Path) -> None:
    Catalog(tmp_path).close()
    plain = sqlite3.connect(tmp_path / "catalog.sqlite")
    assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plain.close()


def test_two_connections_see_each_other(tmp_path: Path, catalog_url: str | None) -> None:
    first = Catalog(tmp_path, url=catalog_url)
    second = Catalog(tmp_path, url=catalog_url)
    try:
        before = second.version()
        assert second.version() == before  # nothing committed: the same token
        row_id = first.insert({"label": "ants", "status": "stored", "path": "ants/x.jpg", "phash": "00",
                               "hashes": {"phash_crop": "0f"}, "look": b"\x00\xff"})
        assert second.version() != before  # the other connection's commit shows
        assert second.get(row_id)["path"] == "ants/x.jpg"
        assert dict(second.get(row_id))["label"] == "ants"
        assert [r["id"] for r in second.stored_since(0)] == [row_id]
        assert second.stored_since(row_id) == []
        assert [tuple(r) for r in second.hashes_since(0)] == [(row_id, "phash_crop", "0f")]
        assert second.look(row_id) == b"\x00\xff"
        first.set_meta("hash_recipe", "a")
        first.set_meta("hash_recipe", "b")  # replaces
        assert second.meta()["hash_recipe"] == "b"
    finally:
        first.close()
        second.close()


OPENER = """
import sys, time
from crawler.catalog import Catalog
for folder, url, start in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    while time.time() < float(start):
        pass
    Catalog(folder, url=url or None).close()
"""


def test_processes_opening_one_fresh_dataset_at_once_all_succeed(
    tmp_path: Path, catalog_url: str | None, request: pytest.FixtureRequest
) -> None:
    """Six processes open each of eight new datasets at the same instant (as two crawls into a
    fresh dataset do): none fails with "database is locked" while the file turns to WAL, nor
    (PostgreSQL) on two CREATE TABLEs at once."""
    urls = [catalog_url and request.getfixturevalue("postgres_session").new_database() for _ in range(8)]
    start = time.time() + 3.0  # after every process has imported the catalog
    rounds = [arg for n in range(8) for arg in (str(tmp_path / f"d{n}"), urls[n] or "", str(start + 0.3 * n))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, *rounds], cwd=Path(__file__).resolve().parents[2],
            stderr=subprocess.PIPE, text=True,
        )
        for _ in range(6)
    ]
    errors = [err for proc in procs if (err := proc.communicate(timeout=120)[1]) and proc.returncode]
    assert errors == []
    if catalog_url:
        for url in urls:
            with Catalog(tmp_path, url=url) as catalog:
                assert catalog.meta()["schema_version"] == "3"
        return
    for n in range(8):
        with sqlite3.connect(tmp_path / f"d{n}" / "catalog.sqlite") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_immediate_transaction_serialises_writers(tmp_path: Path, catalog_url: str | None) -> None:
    first = Catalog(tmp_path, url=catalog_url)
    second = Catalog(tmp_path, url=catalog_url, timeout=5)
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


def test_failed_transaction_rolls_back(tmp_path: Path, catalog_url: str | None) -> None:
    with Catalog(tmp_path, url=catalog_url) as catalog:
        with pytest.raises(RuntimeError), catalog.transaction() as tx:
            catalog.insert({"label": "a", "status": "stored"}, conn=tx)
            raise RuntimeError
        assert catalog.rows() == []


def test_status_is_constrained(tmp_path: Path, catalog_url: str | None) -> None:
    with Catalog(tmp_path, url=catalog_url) as catalog:
        with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
            catalog.insert({"label": "a", "status": "kept"})
        assert catalog.rows() == []  # rolled back: the connection is usable
        catalog.insert({"label": "a", "status": "rejected"})


def test_data_uri_urls_are_truncated_and_csv_export_has_every_row(tmp_path: Path, catalog_url: str | None) -> None:
    with Catalog(tmp_path, url=catalog_url) as catalog:
        catalog.insert({"label": "a", "status": "rejected", "reason": "too_small", "url": "data:image/gif;base64," + "A" * 500})
        catalog.insert({"label": "b", "status": "stored", "path": "b/x.png", "url": "http://h/x.png"})
        assert len(catalog.rows()[0]["url"]) == 100
        path = catalog.export_csv()
        assert catalog.summary() == {"a": {"rejected/too_small": 1}, "b": {"stored": 1}}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == ["a", "b"]
    assert tuple(rows[0]) == COLUMNS


def test_placeholders_are_converted_for_psycopg_outside_string_literals() -> None:
    assert to_psycopg("SELECT * FROM images WHERE label = ? AND url LIKE '%?%' AND id > ?") == (
        "SELECT * FROM images WHERE label = %s AND url LIKE '%%?%%' AND id > %s"
    )


def test_a_percent_in_a_query_reaches_postgresql_intact(tmp_path: Path, postgres_url: str) -> None:
    with Catalog(tmp_path, url=postgres_url) as catalog:
        catalog.insert({"label": "50%", "status": "rejected", "url": "http://h/a?b=1"})
        catalog.insert({"label": "other", "status": "rejected"})
        assert [r["label"] for r in catalog.rows("label LIKE '%\\%' ESCAPE '\\' AND url LIKE ?", ("%?b=1",))] == ["50%"]
        assert [r["label"] for r in catalog.rows("label LIKE '%0\\%'")] == ["50%"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://nobody@127.0.0.1:1/catalog", "cannot open the catalog database postgresql://nobody@127.0.0.1:1/catalog"),
        ("postgresql://u:hunter2@127.0.0.1:1/c", "cannot open the catalog database postgresql://u:***@127.0.0.1:1/c"),
        ("mysql://h/db", "unsupported catalog URL"),
        ("postgresql://127.0.0.1:notaport/db", "cannot open the catalog database"),
    ],
)
def test_a_bad_or_unreachable_catalog_url_is_a_user_error(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        Catalog(tmp_path, url=url, timeout=5)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "(check CATALOG_URL" in str(caught.value) or "(give postgresql://" in str(caught.value)


def test_an_unknown_database_names_itself(tmp_path: Path, postgres_session) -> None:
    with pytest.raises(UserError, match='database "nope" does not exist'):
        Catalog(tmp_path, url=postgres_session.url("nope"))
