"""A throwaway PostgreSQL cluster on 127.0.0.1 for the shared-catalog tests and benchmark.

Debian's ``postgresql`` (``make test`` installs it with ``make postgres``): ``initdb -A trust``
into a temporary folder, ``pg_ctl start`` on a free port with its socket in that folder and
``fsync=off`` (a test cluster need not survive power loss), stopped and removed on exit. As
root, the cluster is made and run as the ``postgres`` user (PostgreSQL refuses to run as
root); otherwise as the current user. (A module rather than conftest.py, so the benchmark can
import it too.)
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Self

__all__ = ["PostgresServer", "find_postgres_bin"]

_DEBIAN_ROOT = Path("/usr/lib/postgresql")


def find_postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: Debian's newest ``/usr/lib/postgresql/<n>/bin``,
    else the folder of an ``initdb`` on PATH; ``None`` when PostgreSQL is not installed."""
    if _DEBIAN_ROOT.is_dir():
        versions = sorted(
            (p for p in _DEBIAN_ROOT.iterdir() if p.name.isdigit() and (p / "bin" / "initdb").exists()),
            key=lambda p: int(p.name),
        )
        if versions:
            return versions[-1] / "bin"
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """``with PostgresServer(bin_dir) as server``: ``server.new_database()`` makes an empty
    database and returns its ``postgresql://<user>@127.0.0.1:<port>/<name>`` URL.

    Raises:
        RuntimeError: ``initdb`` or ``pg_ctl start`` failed (their output in the message).
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
        self.folder = Path(tempfile.mkdtemp(prefix="imageclf-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self.started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def __enter__(self) -> Self:
        if self.as_root:
            shutil.chown(self.folder, self.user, self.user)
        made = self._run("initdb", "-A", "trust", "-U", self.user, "-E", "UTF8", "--locale=C", "-D", str(self.data))
        if made.returncode:
            self.__exit__()
            raise RuntimeError(f"initdb failed: {(made.stdout + made.stderr)[-800:]}")
        started = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-t", "60",
            "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start",
        )
        if started.returncode:
            log = self.folder / "server.log"
            text = log.read_text(errors="replace")[-800:] if log.exists() else started.stderr[-800:]
            self.__exit__()
            raise RuntimeError(f"pg_ctl start failed on port {self.port}: {text}")
        self.started = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"catalog_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.folder, ignore_errors=True)
