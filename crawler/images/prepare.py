"""The per-image work of a crawl, in one call: verify and normalise, hash, stage the bytes to store.

``prepare_image`` is what the prepare stage (``crawler.pipelines.prepare``) runs for each
downloaded image, in a worker process (``crawler.workers``) or, without one, in a pipeline
thread: the same function and the same result either way, so the item has one shape whatever
the execution mode. Only sizes, hashes and the staged file's name come back, never pixels, so
the result is small to send between processes. Imports no Scrapy: a worker process loads
Pillow, numpy and imagehash and nothing of the crawl.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crawler.images.decode import verify_image
from crawler.images.files import write_tmp
from crawler.images.hashing import DEFAULT_HASH, hashes_of

__all__ = ["PreparedImage", "prepare_image"]


@dataclass(frozen=True)
class PreparedImage:
    """Outcome of ``prepare_image``: what ``VerifiedImage`` says, minus the pixels and the bytes.

    ``hashes`` are dedupe's hashes of the canonical image (``hashes_of``); ``staged`` the
    temporary file holding the bytes to store and ``sha256`` their SHA-256 (hex), or both
    ``None`` when no folder was given, in which case ``body`` holds re-encoded bytes (``None``:
    store the downloaded bytes as they are).
    """

    width: int
    height: int
    source_width: int
    source_height: int
    source_format: str
    format: str
    reencoded: bool
    resized: bool
    hashes: dict[str, Any]
    staged: str | None = None
    sha256: str | None = None
    body: bytes | None = None


def prepare_image(
    body: bytes,
    limits: dict[str, Any],
    hash_name: str = DEFAULT_HASH,
    variants: bool = True,
    tmp_dir: str | None = None,
    fsync: bool = False,
) -> PreparedImage:
    """Verify ``body`` (``verify_image(body, **limits)``), hash it for dedupe (``hashes_of``, with
    the windows when ``variants``) and write the bytes to store into a new temporary file in
    ``tmp_dir`` (fsynced if ``fsync``; see ``crawler.images.files``): every per-image step that
    needs the CPU, in one call. Without ``tmp_dir`` (a crawl with no dataset) nothing is written.

    Raises:
        Rejected: as ``verify_image``.
        OSError: writing the temporary file.
    """
    result = verify_image(body, **limits)
    hashes = hashes_of(result.image, hash_name, variants=variants)
    staged = digest = reencoded_body = None
    if tmp_dir is not None:
        staged = str(write_tmp(result.body, Path(tmp_dir), fsync=fsync))
        digest = hashlib.sha256(result.body).hexdigest()
    elif result.reencoded:
        reencoded_body = result.body
    return PreparedImage(
        result.width, result.height, result.source_width, result.source_height, result.source_format,
        result.format, result.reencoded, result.resized, hashes, staged, digest, reencoded_body,
    )

