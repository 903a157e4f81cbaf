"""The dataset catalog: ``DATASET_DIR/catalog.sqlite`` or a PostgreSQL database
(``CATALOG_URL``), schema version 3 (docs/dataset.md).

Version 2 added ``source_width``/``source_height``, version 3 ``pdq``/``pdq_quality`` and the
``image_looks`` table (the grey squares of dedupe's second look); an older catalog gets them (NULL on
its old rows) the first time it is opened, and its hashes are remade when a crawl with another
``hash_recipe`` opens it (``crawler.images.rehash``).

SQLite in WAL mode lets readers run beside one writer, and a busy timeout plus ``BEGIN IMMEDIATE``
around each check-and-insert serialises writers, so several ``scrapy crawl`` processes can write
one dataset at once. With ``CATALOG_URL=postgresql://...`` the catalog is a PostgreSQL
database instead (same schema, same protocol: ``crawler.catalog_engines``), so crawls on several
machines share one catalog. The SQL below is written once for both engines (``?`` placeholders,
``ON CONFLICT``, ``RETURNING``). One ``Catalog`` wraps one connection; it may be used from
worker threads (calls are serialised by a lock), and each process or component opens its own.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crawler.catalog_engines import open_engine

logger = logging.getLogger(__name__)

#: A result row, read by position or column name (``sqlite3.Row``, or its PostgreSQL equivalent
#: from ``crawler.catalog_engines``).
Row = Any

__all__ = ["CATALOG_NAME", "COLUMNS", "CSV_NAME", "REVIEW_DELETE", "SCHEMA_VERSION", "Catalog", "has_catalog"]

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
_INSERTED = tuple(key for key in COLUMNS if key != "id")
_INSERT_SQL = (
    f"INSERT INTO images ({', '.join(_INSERTED)}) VALUES ({', '.join('?' for _ in _INSERTED)}) RETURNING id"  # noqa: S608 (fixed column names)
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
    id {id},
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
-- dedupe's second look (crawler/images/pdq.py, LOOK_HEADER): trim and caption boxes and the
-- canonical size (10 bytes) and the 64x64 grey square PDQ hashed (4,096 bytes), per image hashed with pdq.
CREATE TABLE IF NOT EXISTS image_looks (
    image_id INTEGER PRIMARY KEY REFERENCES images (id),
    look {blob} NOT NULL
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


def has_catalog(dataset_dir: str | os.PathLike[str], url: str | None = None) -> bool:
    """Whether the dataset has a catalog: always with a ``url`` (its database holds it; opening
    it says whether it can be reached), else whether ``dataset_dir/catalog.sqlite`` exists."""
    return bool(url) or (Path(dataset_dir) / CATALOG_NAME).exists()


class Catalog:
    """One connection to the catalog, created with its schema if missing: the PostgreSQL
    database at ``url``, else ``<dataset_dir>/catalog.sqlite``.

    Args:
        dataset_dir: the dataset folder (created if missing); its files are the images.
        url: ``postgresql://user[:password]@host[:port]/dbname`` (``CATALOG_URL``), or ``None``
            for the SQLite file in ``dataset_dir``.
        timeout: seconds a write waits for another writer's lock before failing
            (``sqlite3.OperationalError``, ``psycopg.errors.LockNotAvailable``).
        durable: SQLite only: commit with ``synchronous=FULL`` (each commit survives power
            loss) instead of ``NORMAL`` (survives a killed process; the last commits may roll
            back on power loss). PostgreSQL commits are durable as its server is configured.

    Attributes:
        path: the SQLite file, or the PostgreSQL URL without its password (for messages).
        engine: ``"sqlite"`` or ``"postgresql"``.

    Raises:
        sqlite3.DatabaseError: if the file exists and is not a SQLite database.
        crawler.errors.UserError: ``url`` is not a PostgreSQL URL, or its server cannot be used.
    """

    def __init__(
        self, dataset_dir: str | os.PathLike[str], *, url: str | None = None,
        timeout: float = 60.0, durable: bool = False,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._engine = open_engine(self.dataset_dir, url, file_name=CATALOG_NAME, timeout=timeout, durable=durable)
        self.engine = "postgresql" if url else "sqlite"
        self.path: Path | str = self.dataset_dir / CATALOG_NAME if not url else self._engine.where
        self._conn: Any = self._engine.conn
        schema = _SCHEMA.format(**self._engine.types)
        with self.transaction():
            for statement in schema.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", _META.items()
            )
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older catalog to ``SCHEMA_VERSION`` (inside the opening transaction, so
        two processes opening it at once migrate it once)."""
        present = {column[0] for column in self._conn.execute("SELECT * FROM images LIMIT 0").description}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._conn.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")
        self._conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    # -- connection management -------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._engine.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A writing transaction (``BEGIN IMMEDIATE`` in SQLite, ``BEGIN`` and the catalog's
        advisory lock in PostgreSQL) ... ``COMMIT`` (``ROLLBACK`` on error), holding the write
        lock; yields the connection (``execute``/``executemany`` with ``?`` placeholders).

        Other processes' writers wait (busy/lock timeout) until the block ends, so a check
        made inside the block still holds when its insert commits.
        """
        with self._lock:
            self._engine.begin()
            try:
                yield self._conn
            except BaseException:
                self._engine.rollback()
                raise
            self._engine.commit()

    # -- writes ----------------------------------------------------------------------------

    def insert(self, row: Mapping[str, Any], *, conn: Any = None) -> int:
        """Insert one ``images`` row and return its id.

        Unknown keys are ignored, except ``hashes``: a ``{kind: hex}`` dict of extra perceptual
        hashes (the dedupe stage's variants) written to ``image_hashes``, and ``look`` (bytes,
        dedupe's look: the picture's 64x64 grey square, kept for ``stored`` rows only) written to ``image_looks``, in the
        same transaction. ``created_at`` defaults to now (UTC, ISO-8601); ``data:``
        URLs are cut to 100 characters. Pass ``conn`` (from ``transaction()``) to insert inside
        an open transaction; otherwise the insert is its own transaction.
        """
        values = {key: row.get(key) for key in _INSERTED}
        values["created_at"] = values["created_at"] or datetime.now(UTC).isoformat(
            timespec="milliseconds"
        )
        url = values["url"]
        if isinstance(url, str) and url.startswith("data:"):
            values["url"] = url[:DATA_URI_KEEP_CHARS]
        look = row.get("look") if values["status"] == "stored" else None
        if conn is not None:
            return self._insert(conn, _INSERT_SQL, tuple(values.values()), row.get("hashes"), look)
        with self.transaction() as tx:
            return self._insert(tx, _INSERT_SQL, tuple(values.values()), row.get("hashes"), look)

    @staticmethod
    def _insert(conn: Any, sql: str, values: tuple[Any, ...], hashes: Any, look: Any) -> int:
        # fetchall, not fetchone: sqlite3 finishes a RETURNING statement only when its rows
        # are all read.
        row_id = int(conn.execute(sql, values).fetchall()[0][0])
        if hashes:
            conn.executemany(
                "INSERT INTO image_hashes (image_id, kind, hash) VALUES (?, ?, ?) "
                "ON CONFLICT (image_id, kind) DO UPDATE SET hash = excluded.hash",
                [(row_id, kind, value) for kind, value in hashes.items()],
            )
        if look:
            conn.execute(
                "INSERT INTO image_looks (image_id, look) VALUES (?, ?) "
                "ON CONFLICT (image_id) DO UPDATE SET look = excluded.look",
                (row_id, bytes(look)),
            )
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

    def stored_since(self, last_id: int, *, deleted: bool = False) -> list[Row]:
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

    def hashes_since(self, last_id: int, *, deleted: bool = False) -> list[Row]:
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
        """The ``image_looks`` blob of row ``row_id`` (dedupe's look), or ``None``."""
        with self._lock:
            found = self._conn.execute("SELECT look FROM image_looks WHERE image_id = ?", (row_id,)).fetchone()
        return None if found is None else bytes(found[0])

    def find_decided_sha256(self, sha256: str) -> Row | None:
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
        """A token that changes whenever a row is added to the catalog, by any process: in
        SQLite ``data_version`` (commits by other connections) and this connection's
        ``total_changes``, reading no table; in PostgreSQL the highest committed id (ids are
        handed out in commit order). Equal tokens mean no new rows."""
        with self._lock:
            return self._engine.version()

    def others_version(self) -> int | None:
        """A token that changes whenever another connection (another component or process)
        commits to the catalog, or ``None`` when the engine has none (PostgreSQL): then what
        was read before must be read again. SQLite: ``data_version``, reading no table."""
        with self._lock:
            return self._engine.others_version()

    def count_stored(self) -> int:
        """Number of ``stored`` rows."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM images WHERE status = 'stored'").fetchone()[0])

    def find_stored_sha256(self, sha256: str, *, deleted: bool = False) -> Row | None:
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

    def find_stored_path(self, path: str) -> Row | None:
        """The ``stored`` row of this dataset-relative path, or ``None``."""
        with self._lock:
            return self._conn.execute(
                "SELECT * FROM images WHERE path = ? AND status = 'stored' ORDER BY id LIMIT 1", (path,)
            ).fetchone()

    def get(self, row_id: int) -> Row | None:
        """The row with this id, or ``None``."""
        with self._lock:
            return self._conn.execute("SELECT * FROM images WHERE id = ?", (row_id,)).fetchone()

    def rows(self, where: str = "", params: tuple[Any, ...] = ()) -> list[Row]:
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

    def set_meta(self, key: str, value: str, *, conn: Any = None) -> None:
        """Set one ``meta`` entry (in the caller's transaction when ``conn`` is given)."""
        sql = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        if conn is not None:
            conn.execute(sql, (key, value))
            return
        with self.transaction() as tx:
            tx.execute(sql, (key, value))

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
