"""Child processes run the way a user would type them, their output teed to a log file.

Each stream of a child is read line by line by a thread; every line goes to the log file, and
lines of the streams given a callback also go to that callback (to the console, to a parser).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["Child", "last_error", "python_command", "run", "scrapy_env", "shown"]

LineCallback = Callable[[str], None]


def scrapy_env() -> dict[str, str]:
    """The environment for ``scrapy`` commands: the crawler's settings module, so that they
    find the project from any working directory, not only beside ``scrapy.cfg``."""
    return {**os.environ, "SCRAPY_SETTINGS_MODULE": os.environ.get("SCRAPY_SETTINGS_MODULE", "crawler.settings")}


def python_command(module: str, *args: str) -> list[str]:
    """``python -m <module> <args>`` with this interpreter (the project's environment)."""
    return [sys.executable, "-m", module, *args]


def shown(cmd: list[str]) -> str:
    """The command as a user would type it (``scrapy``, ``python`` instead of full paths)."""
    words = list(cmd)
    if words[:3] == [sys.executable, "-m", "scrapy"]:
        words[:3] = ["scrapy"]
    elif words[:1] == [sys.executable]:
        words[:1] = ["python"]
    return shlex.join(words)


class Child:
    """A running subprocess whose stdout and stderr lines are written to ``log``.

    Args:
        cmd: the command (argv list).
        log: file the child's output goes to (created or truncated); it starts with the command.
        on_stdout, on_stderr: called with each line (no newline) of that stream, from a reader
            thread; ``None`` sends the stream only to the log.
        merge: send stderr into stdout (one stream, one callback: ``on_stdout``).
    """

    def __init__(
        self,
        cmd: list[str],
        log: Path,
        *,
        on_stdout: LineCallback | None = None,
        on_stderr: LineCallback | None = None,
        merge: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cmd = cmd
        self.log = log
        self._log = log.open("w", encoding="utf-8", errors="replace")
        self._log.write(f"$ {shown(cmd)}\n")
        self._log.flush()
        self._lock = threading.Lock()
        # Unbuffered children: lines reach the console as they are written, not at exit.
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=child_env,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        streams: list[tuple[IO[str], LineCallback | None]] = [(self.process.stdout, on_stdout)]  # type: ignore[list-item]
        if not merge:
            streams.append((self.process.stderr, on_stderr))  # type: ignore[arg-type]
        self._readers = [
            threading.Thread(target=self._pump, args=(stream, callback), daemon=True) for stream, callback in streams
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: IO[str], callback: LineCallback | None) -> None:
        for line in stream:
            with self._lock:
                self._log.write(line)
                self._log.flush()
            if callback is not None:
                callback(line.rstrip("\n"))

    def wait(self) -> int:
        """Wait for the child and its output; return its exit status."""
        code = self.process.wait()
        for reader in self._readers:
            reader.join()
        self._log.close()
        return code

    def stop(self) -> None:
        """Terminate the child if it still runs (on Ctrl-C or another child's failure)."""
        if self.process.poll() is None:
            self.process.terminate()


def run(cmd: list[str], log: Path, **kwargs) -> int:
    """Run ``cmd`` to the end (see :class:`Child`); return its exit status."""
    child = Child(cmd, log, **kwargs)
    try:
        return child.wait()
    finally:
        child.stop()


def last_error(log: Path) -> str | None:
    """The last line of ``log`` that reports an error (``error: ...`` or a log line at ERROR)."""
    found = None
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("error:") or " ERROR: " in line or line.startswith(("ValueError", "Error")):
            found = line.strip()
    return found
