"""Store stage: write the image to ``<DATASET_DIR>/<label>/<sha256>.<ext>`` and its catalog row.

The write is atomic: bytes go to a temporary file in ``DATASET_DIR/.tmp/`` (same filesystem),
are fsynced, then renamed into the label folder with ``os.replace``; the catalog row is committed
after the rename, so a killed crawl can leave at worst an uncatalogued file, never a row without
its file or half an image under a label.

The rename and the insert happen inside one ``BEGIN IMMEDIATE`` catalog transaction that first
re-checks the rows stored since the item's dedupe decision (``catalog_seen_id``): two copies of
one picture in flight at once, in this process or another, cannot both be stored.

Durability (``STORE_FSYNC``, default off). A killed process cannot leave half an image under a
label whether or not anything is fsynced: the kernel finishes a ``write`` that returned, and
``rename`` is atomic, so other processes (and ``check``) see either the old name or the complete
new file; the catalog (SQLite WAL, ``synchronous=NORMAL``) is likewise safe against kills. That
is the default: crash-safe, like SQLite's own WAL default, Scrapy's ``FilesPipeline`` and the
download tools this project is compared with. Power loss or a kernel crash can then lose the last
files or rows; ``python -m crawler.dataset check --repair`` afterwards brings the dataset back to
a consistent state. ``-s STORE_FSYNC=1`` makes it durable instead: each image and its folder entry
are fsynced before the catalog row that names them, and the store's catalog commits with
``synchronous=FULL``. It cost 10-25% of the crawl's throughput in ``benchmarks/pipeline_throughput``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem, NotConfigured
from scrapy.utils.defer import deferred_from_coro

from crawler.catalog import Catalog
from crawler.labels import sanitize_label
from crawler.images.files import TMP_DIR, fsync_dir, image_path, move_to_trash, write_tmp
from crawler.images.matching import DedupeRule, Match, find_in_rows, mark_duplicate, source_pixels
from crawler.images.pdq import DIHEDRAL_KINDS
from crawler.setting_values import dedupe_rule, get_bool
from crawler.threads import run_in_thread, sha256_hex

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["StorePipeline"]

_FULL = "max_images"
_REPLACED = "replaced"


def _full_picture(row: dict[str, Any]) -> dict[str, Any] | None:
    """The item's full-picture PDQ hashes as ``pdq_pair_match`` takes them, or ``None``
    without pdq (the dedupe stage set ``pdq_dihedral``, ``pdq_quality`` and ``look``)."""
    dihedral = row.get("pdq_dihedral")
    if not dihedral:
        return None
    return {
        **dict(zip(DIHEDRAL_KINDS, dihedral, strict=True)),
        "pdq_quality": row.get("pdq_quality") or 0,
        "look": row.get("look") or b"",
    }


class StorePipeline:
    """Store each surviving image once, folder by label, with a ``stored`` catalog row.

    Settings:
        DATASET_DIR: the dataset folder (required; created if missing).
        DEDUPE_*: shared with the dedupe stage (``dedupe_rule``), for the in-transaction
            re-check (same bytes, or the full-picture rule: flips and rotations within
            ``DEDUPE_MAX_DISTANCE``, the quality gate and the second look; windows are left to
            the dedupe stage).
        STORE_FSYNC: durability against power loss (default off: crash-safe only): fsync
            each image and its folder before its row commits, which commits with
            ``synchronous=FULL`` (see the module docstring).

    The spider's ``max_images`` attribute (if set) caps how many images this crawl stores:
    when reached, the spider is closed (reason ``max_images``) and later items are dropped
    without a catalog row (they were never judged). Stores ``staged`` (the temporary file
    the prepare stage wrote, renamed into place) or else ``body``. Sets ``path`` and
    ``status = "stored"`` and removes ``body``. Stats: ``store/stored``, ``dedupe/<reason>``
    for late duplicates.

    Raises:
        NotConfigured: without DATASET_DIR.
        DropItem: ``exact``/``near``/``label_conflict`` for a duplicate found at commit time,
            ``max_images`` once the cap is reached.
    """

    def __init__(self, crawler: Crawler, *, dataset_dir: Path, rule: DedupeRule, fsync: bool) -> None:
        self.crawler = crawler
        self.dataset_dir = dataset_dir
        self.tmp_dir = dataset_dir / TMP_DIR
        self.rule = rule
        self.fsync = fsync
        self.catalog: Catalog | None = None
        self.stored = 0
        self._closing: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        dataset_dir = settings.get("DATASET_DIR")
        if not dataset_dir:
            raise NotConfigured("DATASET_DIR is not set (the dataset folder to store images in)")
        fsync = get_bool(settings, "STORE_FSYNC")
        return cls(crawler, dataset_dir=Path(dataset_dir), rule=dedupe_rule(settings), fsync=fsync)

    def open_spider(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(self.dataset_dir, url=self.crawler.settings.get("CATALOG_URL"), durable=self.fsync)

    def close_spider(self) -> None:
        if self.catalog is not None:
            self.catalog.close()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        stats = self.crawler.stats
        assert stats is not None
        max_images = getattr(self.crawler.spider, "max_images", None)
        if max_images is not None and self.stored >= max_images:
            adapter.pop("body", None)
            raise DropItem("max_images", log_level="DEBUG")
        label = sanitize_label(adapter["label"])
        adapter["label"] = label
        staged = adapter.pop("staged", None)
        if staged:  # the prepare stage already wrote the bytes to a temporary file
            source: bytes | Path = Path(staged[0])
            digest = staged[1]
        else:
            source = adapter.pop("body")
            digest = await sha256_hex(source)
        adapter["path"] = image_path(label, digest, adapter["ext"])
        adapter["status"] = "stored"
        outcome = await run_in_thread(self._commit, source, dict(adapter), max_images)
        if outcome == _FULL:
            for key in ("path", "status"):
                adapter.pop(key, None)
            raise DropItem("max_images", log_level="DEBUG")
        if isinstance(outcome, Match):
            adapter.pop("path", None)
            mark_duplicate(adapter, outcome)
            stats.inc_value(f"dedupe/{adapter['reason']}")
            raise DropItem(adapter["reason"])
        if outcome != _REPLACED:
            stats.inc_value("store/stored")
        if max_images is not None and self.stored >= max_images and self._closing is None:
            logger.info("stored %d images (max_images): closing the spider", self.stored)
            self._closing = deferred_from_coro(
                self.crawler.engine.close_spider_async(reason="max_images")
            )
        return item

    def _commit(self, source: bytes | Path, row: dict[str, Any], max_images: int | None) -> Match | str | None:
        """Write the file (``source``: its bytes, or the temporary file holding them, which is
        renamed or removed) and its row unless a duplicate was stored meanwhile or the crawl's
        ``max_images`` is reached (blocking). Returns ``None`` for a new image, ``"replaced"``
        when it took the place of a smaller stored copy, the ``Match`` of a late duplicate,
        or ``"max_images"``. Commits of this process are serialised by the
        catalog's lock, so the count checked here is exact."""
        assert self.catalog is not None
        tmp = source if isinstance(source, Path) else write_tmp(source, self.tmp_dir, fsync=self.fsync)
        try:
            with self.catalog.transaction() as tx:
                if max_images is not None and self.stored >= max_images:
                    return _FULL
                newer = self.catalog.stored_since(row.get("catalog_seen_id") or 0)
                match = find_in_rows(
                    newer, row["sha256"], row.get("phash"), self.rule.max_distance, self.rule,
                    _full_picture(row), self.catalog.look,
                )
                pixels = source_pixels(row)
                if match is not None:
                    if not match.upgraded_by(row["label"], pixels):
                        return match
                    row["replaces"] = [*(row.get("replaces") or []), (match.path, match.distance)]
                target = self.dataset_dir / row["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                if self.fsync:
                    fsync_dir(target.parent)
                self.catalog.insert(row, conn=tx)
                demoted = [
                    old_path
                    for old_path, distance in row.get("replaces") or []
                    if self._demote(tx, old_path, distance, new_path=row["path"])
                ]
                if not demoted:
                    self.stored += 1
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for old_path in demoted:
            self._trash(old_path)
        # A larger copy that replaces a stored image adds no image to the label:
        # max_images and store/stored count images kept, not files written.
        return _REPLACED if demoted else None

    def _demote(self, tx: Any, old_path: str, distance: int, *, new_path: str) -> bool:
        """Turn the stored row of ``old_path`` into a duplicate of ``new_path`` and re-point the
        rows that named it (inside the caller's transaction; the file moves to ``.trash/``
        after the commit). Returns whether a stored row was demoted (``False`` if it is gone
        already).

        Re-pointing, rather than keeping the first copy and recording the larger one as a
        duplicate, keeps the dataset's promise that the largest copy is the one stored (search
        results and shops serve thumbnails first), while ``duplicate_of`` still always names a
        stored image (issue 13)."""
        if old_path == new_path:
            return False
        updated = tx.execute(
            "UPDATE images SET status = 'duplicate', reason = 'near', duplicate_of = ?, "
            "hash_distance = ?, path = NULL WHERE path = ? AND status = 'stored'",
            (new_path, distance, old_path),
        ).rowcount
        if updated:
            tx.execute(
                "UPDATE images SET duplicate_of = ? WHERE duplicate_of = ? AND status = 'duplicate'",
                (new_path, old_path),
            )
        if updated:
            assert self.crawler.stats is not None
            self.crawler.stats.inc_value("store/replaced")
            logger.info("replaced %s by the larger copy %s", old_path, new_path)
        return bool(updated)

    def _trash(self, path: str) -> None:
        """Move a demoted image to ``.trash/`` (after its row's commit, so a kill in between
        leaves an orphan file for ``check --repair``, never a stored row without its file)."""
        move_to_trash(self.dataset_dir, path)
