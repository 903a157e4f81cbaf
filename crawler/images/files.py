"""Dataset paths and atomic file writes: ``<DATASET_DIR>/<label>/<sha256>.<ext>``, ``.tmp/``, ``.trash/``.

Bytes to store go to a temporary file in ``DATASET_DIR/.tmp/`` (same filesystem as the label
folders) and are renamed into place with ``os.replace``, so readers see either no file or the
complete one. Files a person or the store takes out of the dataset move to ``DATASET_DIR/.trash/``
under their relative path, never deleted. See ``crawler.pipelines.store`` for when each is fsynced.

Permissions: ``tempfile.mkstemp`` creates its files with mode 0600, which a rename keeps; stored
images get what any new file gets under the process's umask instead (0644 under the usual 022),
as the catalog beside them does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = [
    "FILE_MODE",
    "TMP_DIR",
    "TRASH_DIR",
    "discard",
    "fsync_dir",
    "image_path",
    "move_to_trash",
    "write_tmp",
]

TMP_DIR = ".tmp"
TRASH_DIR = ".trash"


def _umask() -> int:
    """This process's umask: from ``/proc`` (Linux), else by setting and restoring it, which is
    done once, at import, and could race only with a thread creating files at that moment."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of stored image files: a regular file's default under this process's umask.
FILE_MODE = 0o666 & ~_umask()


def image_path(label: str, sha256: str, ext: str) -> str:
    """The catalog ``path`` of a stored image, relative to the dataset, POSIX separators:
    ``<label>/<sha256>.<ext>`` (``label`` already sanitised, ``sha256`` 64 hex chars)."""
    return f"{label}/{sha256}.{ext}"


def write_tmp(data: bytes, tmp_dir: Path, *, fsync: bool = True) -> Path:
    """Write ``data`` to a new file ``img-*.part`` in ``tmp_dir`` (created if missing; mode
    ``FILE_MODE``, fsynced if ``fsync``) and return its path; a kill before the rename into a
    label folder leaves it to ``python -m crawler.dataset check --repair``.

    Raises:
        OSError: from the filesystem; the file is removed first.
    """
    try:
        fd, name = tempfile.mkstemp(prefix="img-", suffix=".part", dir=tmp_dir)
    except FileNotFoundError:  # the first file, or the folder was removed meanwhile
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="img-", suffix=".part", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    return Path(name)


def discard(path: str | os.PathLike[str]) -> None:
    """Remove a temporary file unless it is gone already (e.g. renamed into a label folder)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def fsync_dir(path: Path) -> None:
    """fsync a folder, which makes a rename into it durable; a no-op where the platform cannot
    (e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def move_to_trash(dataset_dir: Path, path: str) -> Path:
    """Move the dataset file ``path`` (relative) to ``.trash/<path>`` and return the new
    location; nothing happens if the file is gone already."""
    trash = dataset_dir / TRASH_DIR / path
    trash.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.replace(dataset_dir / path, trash)
    return trash
