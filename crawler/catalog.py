"""The dataset catalog: ``DATASET_DIR/catalog.sqlite``, schema version 3 (docs/dataset.md).

Version 2 added ``source_width``/``source_height``, version 3 ``pdq``/``pdq_quality`` and the
``image_looks`` table (thumbnails for dedupe's second look); an older catalog gets them (NULL on
its old rows) the first time it is opened, and its hashes are remade when a crawl with another
``hash_recipe`` opens it (``crawler.images.rehash``).

SQLite in WAL mode lets readers run beside one writer, and a busy timeout plus ``BEGIN IMMEDIATE``
around each check-and-insert serialises writers, so several ``scrapy crawl`` processes can write
one dataset at once. One ``Catalog`` wraps one connection; it may be used from worker threads
(calls are serialised by a lock), and each process or component opens its own.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CATALOG_NAME", "COLUMNS", "CSV_NAME", "REVIEW_DELETE", "SCHEMA_VERSION", "Catalog"]

CATALOG_NAME = "catalog.sqlite"
CSV_NAME = "catalog.csv"
SCHEMA_VERSION = "3"
# The reason of a row whose image a person deleted in review (crawler/review.py); later crawls
# reject copies of it.
REVIEW_DELETE = "review_delete"
# Longest `url` kept for data: URIs (docs/dataset.md): a base64 image can be megabytes.
DATA_URI_KEEP_CHARS = 100

COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "label",
    "status",
    "path",
    "reason",
    "duplicate_of",
    "hash_distance",
    "sha256",
    "phash",
    "width",
    "height",
    "bytes",
    "format",
    "url",
    "page_url",
    "spider",
    "query",
    "licence",
    "author",
    "source_width",
    "source_height",
    "listing_url",
    "pdq",
    "pdq_quality",
)
# Columns added after version 1, with their SQL types (appended by ALTER TABLE on old catalogs).
_ADDED_COLUMNS = {
    "source_width": "INTEGER",
    "source_height": "INTEGER",
    "listing_url": "TEXT",
    "pdq": "TEXT",
    "pdq_quality": "INTEGER",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('stored', 'duplicate', 'rejected')),
    path TEXT,
    reason TEXT,
    duplicate_of TEXT,
    hash_distance INTEGER,
    sha256 TEXT,
    phash TEXT,
    width INTEGER,
    height INTEGER,
    bytes INTEGER,
    format TEXT,
    url TEXT,
    page_url TEXT,
    spider TEXT,
    query TEXT,
    licence TEXT,
    author TEXT,
    source_width INTEGER,
    source_height INTEGER,
    listing_url TEXT,
    pdq TEXT,
    pdq_quality INTEGER
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images (sha256);
CREATE INDEX IF NOT EXISTS images_status_id ON images (status, id);
CREATE INDEX IF NOT EXISTS images_label ON images (label);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS image_hashes (
    image_id INTEGER NOT NULL REFERENCES images (id),
    kind TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (image_id, kind)
);
-- dedupe's second look (crawler/images/pdq.py): trim and caption boxes (8 bytes) and a 32x32
-- RGB thumbnail (3,072 bytes) per image hashed with pdq.
CREATE TABLE IF NOT EXISTS image_looks (
    image_id INTEGER PRIMARY KEY REFERENCES images (id),
    look BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_duplicate_of ON images (duplicate_of);
-- A person's review decision per image (crawler/review.py), pending until applied_at is set.
CREATE TABLE IF NOT EXISTS review (
    image_id INTEGER PRIMARY KEY REFERENCES images (id),
    action TEXT NOT NULL CHECK (action IN ('keep', 'delete', 'move')),
    target_label TEXT,
    path TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    applied_at TEXT
);
"""

_META = {"schema_version": SCHEMA_VERSION, "hash": "pdq", "hash_size": "16"}


class Catalog:
    """One connection to ``<dataset_dir>/catalog.sqlite``, created with its schema if missing.

    Args:
        dataset_dir: the dataset folder (created if missing).
        timeout: seconds a write waits for another writer's lock before ``sqlite3.OperationalError``.
        durable: commit with ``synchronous=FULL`` (each commit survives power loss) instead of
            ``NORMAL`` (survives a killed process; the last commits may roll back on power loss).

    Raises:
        sqlite3.DatabaseError: if the file exists and is not a SQLite database.
    """

    def __init__(self, dataset_dir: str | os.PathLike[str], *, timeout: float = 60.0, durable: bool = False) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dataset_dir / CATALOG_NAME
        self._lock = threading.RLock()
        # isolation_level=None: no implicit transactions, we issue BEGIN IMMEDIATE ourselves.
        self._conn = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        mode = self._enter_wal(timeout)
        if mode.lower() != "wal":
            logger.warning("catalog %s: journal mode is %s, not WAL", self.path, mode)
        # NORMAL is durable against process kills in WAL mode (only power loss may roll back
        # the last commits), and avoids an fsync per row.
        self._conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", _META.items()
            )
            self._migrate()

    def _enter_wal(self, timeout: float) -> str:
        """Switch the file to WAL (once per file: the mode persists) and return the journal
        mode now in force. Switching needs an exclusive lock, and SQLite answers "database is
        locked" at once, without its busy handler, when another process holds a lock on the
        new file (several crawls opening one fresh dataset at the same moment did: 7 of 90
        opens failed in a stress run); so this retries for up to ``timeout`` seconds.

        Raises:
            sqlite3.OperationalError: still locked after ``timeout`` seconds, or another error.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return str(self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _migrate(self) -> None:
        """Bring an older catalog to ``SCHEMA_VERSION`` (inside the opening transaction, so
        two processes opening it at once migrate it once)."""
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(images)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._conn.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")
        self._conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    # -- connection management -------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), holding the write lock.

        Other processes' writers wait (busy timeout) until the block ends, so a check made
        inside the block still holds when its insert commits.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- writes ----------------------------------------------------------------------------

    def insert(self, row: Mapping[str, Any], *, conn: sqlite3.Connection | None = None) -> int:
        """Insert one ``images`` row and return its id.

        Unknown keys are ignored, except ``hashes``: a ``{kind: hex}`` dict of extra perceptual
        hashes (the dedupe stage's variants) written to ``image_hashes``, and ``look`` (bytes,
        dedupe's thumbnail, kept for ``stored`` rows only) written to ``image_looks``, in the
        same transaction. ``created_at`` defaults to now (UTC, ISO-8601); ``data:``
        URLs are cut to 100 characters. Pass ``conn`` (from ``transaction()``) to insert inside
        an open transaction; otherwise the insert is its own transaction.
        """
        values = {key: row.get(key) for key in COLUMNS if key != "id"}
        values["created_at"] = values["created_at"] or datetime.now(UTC).isoformat(
            timespec="milliseconds"
        )
        url = values.get("url")
        if isinstance(url, str) and url.startswith("data:"):
            values["url"] = url[:DATA_URI_KEEP_CHARS]
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        sql = f"INSERT INTO images ({names}) VALUES ({marks})"  # noqa: S608 (fixed column names)
        look = row.get("look") if values["status"] == "stored" else None
        if conn is not None:
            return self._insert(conn, sql, tuple(values.values()), row.get("hashes"), look)
        with self.transaction() as tx:
            return self._insert(tx, sql, tuple(values.values()), row.get("hashes"), look)

    @staticmethod
    def _insert(conn: sqlite3.Connection, sql: str, values: tuple[Any, ...], hashes: Any, look: Any) -> int:
        row_id = int(conn.execute(sql, values).lastrowid)
        if hashes:
            conn.executemany(
                "INSERT OR REPLACE INTO image_hashes (image_id, kind, hash) VALUES (?, ?, ?)",
                [(row_id, kind, value) for kind, value in hashes.items()],
            )
        if look:
            conn.execute("INSERT OR REPLACE INTO image_looks (image_id, look) VALUES (?, ?)", (row_id, bytes(look)))
        return row_id

    # -- reads -----------------------------------------------------------------------------

    @staticmethod
    def _counted(deleted: bool, table: str = "") -> tuple[str, tuple[str, ...]]:
        """The SQL condition (and its parameters) for the rows dedupe compares against:
        ``stored`` ones, and with ``deleted`` also those deleted in review. ``table`` is the
        alias of ``images`` in a join."""
        at = f"{table}." if table else ""
        if not deleted:
            return f"{at}status = 'stored'", ()
        return f"({at}status = 'stored' OR ({at}status = 'rejected' AND {at}reason = ?))", (REVIEW_DELETE,)

    def stored_since(self, last_id: int, *, deleted: bool = False) -> list[sqlite3.Row]:
        """``stored`` rows with ``id > last_id`` (id, label, status, path, sha256, phash, width,
        height, source_width, source_height), by id; with ``deleted``, also the rows of images
        deleted in review (``rejected``, reason ``REVIEW_DELETE``)."""
        where, params = self._counted(deleted)
        with self._lock:
            return self._conn.execute(
                "SELECT id, label, status, path, sha256, phash, pdq, pdq_quality, width, height, "
                f"source_width, source_height FROM images WHERE {where} AND id > ? ORDER BY id",  # noqa: S608 (fixed clauses)
                (*params, last_id),
            ).fetchall()

    def hashes_since(self, last_id: int, *, deleted: bool = False) -> list[sqlite3.Row]:
        """``image_hashes`` rows (image_id, kind, hash) of ``stored`` images with ``id > last_id``
        (with ``deleted``, also of images deleted in review)."""
        where, params = self._counted(deleted, "i")
        with self._lock:
            return self._conn.execute(
                "SELECT h.image_id, h.kind, h.hash FROM image_hashes h JOIN images i ON i.id = h.image_id "
                f"WHERE {where} AND i.id > ? ORDER BY h.image_id",  # noqa: S608 (fixed clauses)
                (*params, last_id),
            ).fetchall()

    def look(self, row_id: int) -> bytes | None:
        """The ``image_looks`` blob of row ``row_id`` (dedupe's thumbnail), or ``None``."""
        with self._lock:
            found = self._conn.execute("SELECT look FROM image_looks WHERE image_id = ?", (row_id,)).fetchone()
        return None if found is None else bytes(found[0])

    def find_decided_sha256(self, sha256: str) -> sqlite3.Row | None:
        """The ``stored`` row that an earlier ``duplicate`` row with these downloaded bytes
        names (``duplicate_of``), with that row's ``hash_distance`` as ``decided_distance``, or
        ``None``. So the same bytes crawled again get the same outcome whatever was stored
        since (issue 13: a second crawl of one list stores nothing new and moves no file)."""
        with self._lock:
            return self._conn.execute(
                "SELECT s.*, d.hash_distance AS decided_distance FROM images d JOIN images s ON s.path = d.duplicate_of AND s.status = 'stored' "
                "WHERE d.sha256 = ? AND d.status = 'duplicate' ORDER BY d.id LIMIT 1",
                (sha256,),
            ).fetchone()

    def version(self) -> tuple[int, int]:
        """A token that changes whenever anything commits to the catalog: SQLite's
        ``data_version`` (commits by other connections, other processes included) and this
        connection's ``total_changes``. Equal tokens mean no new rows, without reading a table."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0]), self._conn.total_changes

    def count_stored(self) -> int:
        """Number of ``stored`` rows."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM images WHERE status = 'stored'").fetchone()[0])

    def find_stored_sha256(self, sha256: str, *, deleted: bool = False) -> sqlite3.Row | None:
        """The first ``stored`` row whose downloaded bytes have this SHA-256, or ``None``; with
        ``deleted``, else the first row of such an image deleted in review."""
        where, params = self._counted(deleted)
        with self._lock:
            return self._conn.execute(
                "SELECT id, label, status, path, width, height, source_width, source_height FROM images "
                f"WHERE sha256 = ? AND {where} "  # noqa: S608 (fixed clauses)
                "ORDER BY status = 'stored' DESC, id LIMIT 1",
                (sha256, *params),
            ).fetchone()

    def find_stored_path(self, path: str) -> sqlite3.Row | None:
        """The ``stored`` row of this dataset-relative path, or ``None``."""
        with self._lock:
            return self._conn.execute(
                "SELECT * FROM images WHERE path = ? AND status = 'stored' ORDER BY id LIMIT 1", (path,)
            ).fetchone()

    def get(self, row_id: int) -> sqlite3.Row | None:
        """The row with this id, or ``None``."""
        with self._lock:
            return self._conn.execute("SELECT * FROM images WHERE id = ?", (row_id,)).fetchone()

    def rows(self, where: str = "", params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """All rows (optionally filtered by a trusted SQL ``where`` clause), by id."""
        clause = f"WHERE {where}" if where else ""
        with self._lock:
            return self._conn.execute(
                f"SELECT * FROM images {clause} ORDER BY id",  # noqa: S608 (trusted callers)
                params,
            ).fetchall()

    def meta(self) -> dict[str, str]:
        """The ``meta`` table as a dict."""
        with self._lock:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, key: str, value: str, *, conn: sqlite3.Connection | None = None) -> None:
        """Set one ``meta`` entry (in the caller's transaction when ``conn`` is given)."""
        if conn is not None:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return
        with self.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def summary(self) -> dict[str, dict[str, int]]:
        """Per label: counts of ``stored``, ``duplicate/<reason>`` and ``rejected/<reason>``."""
        with self._lock:
            found = self._conn.execute(
                "SELECT label, status, reason, COUNT(*) FROM images "
                "GROUP BY label, status, reason ORDER BY label"
            ).fetchall()
        result: dict[str, dict[str, int]] = {}
        for label, status, reason, count in found:
            key = status if status == "stored" else f"{status}/{reason}"
            result.setdefault(label, {})[key] = count
        return result

    def export_csv(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write every row as CSV (header = column names) atomically; return the path.

        Defaults to ``<dataset_dir>/catalog.csv``. The file is written to a temporary name in
        the same folder and renamed, so a reader never sees half a file.
        """
        target = Path(path) if path is not None else self.dataset_dir / CSV_NAME
        with self._lock:
            cursor = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM images ORDER BY id")
            fd, tmp = tempfile.mkstemp(prefix=".catalog-", suffix=".csv", dir=target.parent)
            try:
                with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(COLUMNS)
                    writer.writerows(cursor)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return target
