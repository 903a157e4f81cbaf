"""The two database engines a catalog can live in, behind one small interface.

- SQLite (the default): ``DATASET_DIR/catalog.sqlite`` through the standard library's
  ``sqlite3``, in WAL mode; ``BEGIN IMMEDIATE`` serialises writers across processes.
- PostgreSQL (``CATALOG_URL=postgresql://user@host:port/db``): one catalog for crawls on many
  machines, through psycopg 3. ``BEGIN`` plus a transaction-scoped advisory lock
  (``pg_advisory_xact_lock``) serialises writers as ``BEGIN IMMEDIATE`` does, so a check made
  inside a transaction still holds when its insert commits, and ids are handed out in commit
  order (a reader following rows by id misses none).

``crawler.catalog`` writes its SQL once, for both: ``?`` placeholders (converted here for
psycopg), ``INSERT ... ON CONFLICT``, ``RETURNING``. What differs per engine lives here: how to
connect, how a writing transaction starts, the DDL's id and blob column types, and the cheap
"did anything commit?" token (``version``).
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from crawler.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["POSTGRES_SCHEMES", "PostgresEngine", "SqliteEngine", "open_engine", "redact"]

POSTGRES_SCHEMES = ("postgresql", "postgres")
# Key of the advisory lock every writing transaction takes (any constant shared by all
# processes; advisory locks are per database, so one key per catalog).
_WRITE_LOCK_KEY = 0x1A6EC1F
# user:password@ in a URL's authority (the password may hold anything but @ and /).
_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)[^@/]*@", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with its password (if any) shown as ``***`` (for messages and logs)."""
    return _PASSWORD.sub(r"\1***@", url)


class SqliteEngine:
    """A ``sqlite3`` connection to ``path`` in WAL mode; ``conn`` is the connection itself
    (no wrapper on the crawl's hot path).

    Raises:
        sqlite3.DatabaseError: the file exists and is not a SQLite database.
    """

    types = {"id": "INTEGER PRIMARY KEY", "blob": "BLOB"}

    def __init__(self, path: Path, *, timeout: float, durable: bool) -> None:
        self.where = str(path)
        # isolation_level=None: no implicit transactions, BEGIN IMMEDIATE is issued explicitly.
        self.conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        mode = self._enter_wal(timeout)
        if mode.lower() != "wal":
            logger.warning("catalog %s: journal mode is %s, not WAL", path, mode)
        # NORMAL is durable against process kills in WAL mode (only power loss may roll back
        # the last commits), and avoids an fsync per row.
        self.conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")

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
                return str(self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def version(self) -> tuple[int, int]:
        """SQLite's ``data_version`` (changes on other connections' commits) and this
        connection's ``total_changes``: no table is read."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0]), self.conn.total_changes

    def others_version(self) -> int | None:
        """SQLite's ``data_version``: it changes when another connection commits."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[tuple[Any, ...]]:
    index = {name: i for i, name in enumerate(names)}

    class Row(tuple):  # type: ignore[type-arg]
        """A result row read by position or by column name, with ``keys()``: what
        ``sqlite3.Row`` offers, so callers read rows of both engines alike."""

        __slots__ = ()

        def __getitem__(self, key: Any) -> Any:
            return tuple.__getitem__(self, index[key] if isinstance(key, str) else key)

        def keys(self) -> list[str]:
            return list(names)

    return Row


def _row_factory(cursor: Any) -> Any:
    if cursor.description is None:
        return tuple
    return _row_class(tuple(column.name for column in cursor.description))


# A string literal (kept, its % doubled), a ? placeholder, or a % (doubled for psycopg).
_SQL_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|%")


@functools.lru_cache(maxsize=1024)
def to_psycopg(sql: str) -> str:
    """``sql`` with ``?`` placeholders (sqlite3's qmark style) as psycopg's ``%s``; a literal
    ``%`` becomes ``%%``; ``?`` inside a quoted string stays."""
    def convert(match: re.Match[str]) -> str:
        token = match.group()
        if token == "?":
            return "%s"
        return token.replace("%", "%%")

    return _SQL_TOKENS.sub(convert, sql)


class _PostgresConnection:
    """The part of a ``sqlite3.Connection`` the catalog and its callers use (``execute``,
    ``executemany``, returning a cursor with ``fetchone``/``fetchall``/``rowcount``/
    ``description``), over a psycopg connection: SQL keeps ``?`` placeholders."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        cursor = self.raw.cursor()
        if params:
            return cursor.execute(to_psycopg(sql), params)
        return cursor.execute(sql)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any:
        cursor = self.raw.cursor()
        cursor.executemany(to_psycopg(sql), list(params))
        return cursor


class PostgresEngine:
    """A psycopg 3 connection to ``url`` in autocommit mode (each read sees every commit so
    far; writing transactions are opened by ``begin``).

    Raises:
        UserError: the URL is malformed, the server unreachable, or the login refused.
    """

    types = {"id": "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "blob": "BYTEA"}

    def __init__(self, url: str, *, timeout: float) -> None:
        import psycopg

        self.where = redact(url)
        try:
            raw = psycopg.connect(
                url, autocommit=True, row_factory=_row_factory, connect_timeout=max(1, int(min(timeout, 30)))
            )
        except psycopg.Error as exc:
            # psycopg's first line says what failed (refused, no such database, bad login).
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            password = _PASSWORD.match(url)
            if password:  # libpq may quote the whole URL back
                reason = reason.replace(url, self.where)
            raise UserError(
                f"cannot open the catalog database {self.where}: {reason} "
                "(check CATALOG_URL / --catalog-url: postgresql://user[:password]@host:port/dbname, "
                "and that the server runs and lets this user in)"
            ) from None
        # A writer waits for the lock at most this long, as SQLite's busy timeout does.
        raw.execute(f"SET lock_timeout = {int(timeout * 1000)}")
        self.conn = _PostgresConnection(raw)

    def begin(self) -> None:
        # One round trip for both (simple query protocol: no parameters).
        self.conn.raw.execute(f"BEGIN; SELECT pg_advisory_xact_lock({_WRITE_LOCK_KEY})")

    def commit(self) -> None:
        self.conn.raw.execute("COMMIT")

    def rollback(self) -> None:
        if not self.conn.raw.closed:
            self.conn.raw.execute("ROLLBACK")

    def version(self) -> tuple[int, int]:
        """The highest committed row id: writers commit in id order (the write lock), so an
        unchanged value means no new row. One index look-up."""
        found = self.conn.raw.execute("SELECT MAX(id) FROM images").fetchone()[0]
        return int(found or 0), 0

    def others_version(self) -> int | None:
        """``None``: PostgreSQL has no cheap token for other sessions' commits (a status
        change adds no id), so callers read again."""
        return None

    def close(self) -> None:
        self.conn.raw.close()


def open_engine(
    dataset_dir: Path, url: str | None, *, file_name: str, timeout: float, durable: bool
) -> SqliteEngine | PostgresEngine:
    """The engine for a catalog: PostgreSQL at ``url`` when given, else SQLite in
    ``dataset_dir/file_name``.

    Raises:
        UserError: ``url`` is not a ``postgresql://`` URL, or its server cannot be used.
    """
    if not url:
        return SqliteEngine(dataset_dir / file_name, timeout=timeout, durable=durable)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in POSTGRES_SCHEMES:
        raise UserError(
            f"unsupported catalog URL {redact(url)!r} (give postgresql://user@host:port/dbname, "
            "or leave CATALOG_URL unset for the SQLite catalog in DATASET_DIR)"
        )
    return PostgresEngine(url, timeout=timeout)
