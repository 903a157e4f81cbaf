"""Rehash a catalog: recompute every stored image's perceptual hashes from its file.

A catalog whose recorded ``hash_recipe`` (``crawler.images.hashing.hash_recipe``) differs from the
crawl's, or is missing (datasets from before the recipe was recorded), holds hashes a new crawl
cannot compare with its own; ``ensure_hash_recipe`` rehashes it when a crawl opens it, and
``python -m crawler.dataset rehash`` does the same ahead of time.
"""

from __future__ import annotations

import logging

from crawler.catalog import Catalog
from crawler.images.decode import Rejected, verify_image
from crawler.images.hashing import DEFAULT_HASH, PDQ, hash_recipe, hashes_of
from crawler.images.pdq import DIHEDRAL_KINDS

logger = logging.getLogger(__name__)

__all__ = ["ensure_hash_recipe", "rehash_catalog"]


def rehash_catalog(catalog: Catalog, hash_name: str = DEFAULT_HASH, *, batch: int = 256) -> tuple[int, int]:
    """Recompute ``phash``, ``pdq``, ``pdq_quality``, the ``image_hashes`` and the
    ``image_looks`` of every ``stored`` image from its file, with ``hash_recipe(hash_name)``
    (the pdq columns and looks are cleared for a 64-bit hash), then record the recipe and the hash in the catalog's
    ``meta`` (``hash_recipe``, ``hash``).

    For catalogs made before the recipe was recorded, or with another one: their hashes would
    not be comparable with a new crawl's (``crawler.images.hashing``). Files go through
    ``verify_image`` (no size limits), so each is hashed exactly as a crawl hashes the bytes it
    stores. Runs in batches of ``batch`` rows, each its own transaction, so a kill leaves the
    recipe unrecorded and the next open starts again. Takes about 1-3 ms per image.

    Returns:
        ``(rehashed, skipped)``: images rehashed, and stored images whose file is missing or no
        longer decodes (left as they are and logged; ``python -m crawler.dataset check`` reports
        them).
    """
    rows = [(row["id"], row["path"]) for row in catalog.rows("status = 'stored'")]
    rehashed = skipped = 0
    for start in range(0, len(rows), batch):
        updates = []
        for row_id, path in rows[start : start + batch]:
            try:
                body = (catalog.dataset_dir / path).read_bytes()
                image = verify_image(body, min_side=1, max_pixels=2**62, max_bytes=2**62).image
            except (OSError, Rejected) as exc:
                logger.warning("rehash: skipped %s: %s", path, exc)
                skipped += 1
                continue
            updates.append((row_id, hashes_of(image, hash_name)))
        with catalog.transaction() as tx:
            for row_id, hashes in updates:
                look = hashes.pop("look", None)
                quality = hashes.pop("pdq_quality", None)
                pdq = hashes.get(PDQ)
                for kind in DIHEDRAL_KINDS:  # query-only hashes, never stored
                    hashes.pop(kind, None)
                tx.execute(
                    "UPDATE images SET phash = ?, pdq = ?, pdq_quality = ? WHERE id = ?",
                    (hashes.pop("phash"), pdq, quality, row_id),
                )
                tx.execute("DELETE FROM image_hashes WHERE image_id = ?", (row_id,))
                tx.execute("DELETE FROM image_looks WHERE image_id = ?", (row_id,))
                if look:
                    tx.execute("INSERT INTO image_looks (image_id, look) VALUES (?, ?)", (row_id, look))
                tx.executemany(
                    "INSERT INTO image_hashes (image_id, kind, hash) VALUES (?, ?, ?)",
                    [(row_id, kind, value) for kind, value in hashes.items()],
                )
        rehashed += len(updates)
        if len(rows) > batch:
            logger.info("rehash: %d of %d stored images", min(start + batch, len(rows)), len(rows))
    _record_recipe(catalog, hash_name)
    return rehashed, skipped


def _record_recipe(catalog: Catalog, hash_name: str) -> None:
    with catalog.transaction() as tx:
        catalog.set_meta("hash_recipe", hash_recipe(hash_name), conn=tx)
        catalog.set_meta("hash", hash_name, conn=tx)
        catalog.set_meta("hash_size", "16" if hash_name == PDQ else "8", conn=tx)


def ensure_hash_recipe(catalog: Catalog, hash_name: str = DEFAULT_HASH) -> None:
    """Make the catalog's hashes follow ``hash_recipe(hash_name)``: record it on a catalog with
    no stored image, rehash (``rehash_catalog``) one whose recorded recipe differs (another
    hash, or an older recipe) or is missing."""
    recipe = hash_recipe(hash_name)
    recorded = catalog.meta().get("hash_recipe")
    if recorded == recipe:
        return
    stored = catalog.count_stored()
    if not stored:
        _record_recipe(catalog, hash_name)
        return
    logger.warning(
        "catalog %s: hashes were made with recipe %s, not %s; rehashing its %d stored images",
        catalog.path, recorded or "(none recorded)", recipe, stored,
    )
    rehashed, skipped = rehash_catalog(catalog, hash_name)
    logger.warning("rehashed %d images (%d skipped: missing or undecodable files)", rehashed, skipped)
