"""Dedupe stage: drop exact and near duplicates of images already in the dataset, any label.

Exact duplicates are found by the SHA-256 of the downloaded bytes (an indexed catalog lookup);
near duplicates by the Hamming distance between perceptual hashes (imagehash ``phash``,
``hash_size=8``: 64 bits) in a ``MultiIndexHashIndex``. The index is filled from the catalog's
``stored`` rows and topped up with rows whose id is above the last one seen before every
decision, so images stored by earlier crawls or by other processes writing the same dataset count.
Images stored by items still in flight are caught by the store stage, which repeats this check
inside its catalog transaction for rows newer than ``catalog_seen_id``.

The hashes come with the item (``image_hashes``, from the prepare stage); the recipe, the match
policy and the index live in ``crawler.images`` (``hashing``, ``matching``, ``index``), the
rehash of an older catalog in ``crawler.images.rehash``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem, NotConfigured

from crawler.catalog import REVIEW_DELETE, Catalog
from crawler.images.index import CatalogHashIndex
from crawler.images.matching import Match, mark_duplicate, source_pixels
from crawler.images.rehash import ensure_hash_recipe
from crawler.setting_values import dedupe_hash, get_int

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["DedupePipeline"]


class DedupePipeline:
    """Drop items whose image is already stored (any label), exactly or nearly.

    Settings:
        DATASET_DIR: the dataset folder holding ``catalog.sqlite`` (required).
        DEDUPE_MAX_DISTANCE: largest Hamming distance between 64-bit phashes, in bits, that
            still counts as the same picture. The default (6, ``crawler/settings.py``) was
            measured on the 396 hymenoptera photos in ../shared: a half-size JPEG q60 copy moves phash by 0-4 bits, while the
            closest two distinct photos are 14 bits apart; for unrelated hashes, distance <= 6
            has probability ~4.5e-12 per pair (binomial tail of 64 fair bits), i.e. about two
            chance matches among a million images.
        DEDUPE_VARIANT_DISTANCE: largest Hamming distance, in bits, between the variant hashes
            of a ``MATCH_PAIRS`` pair (0 turns variants off). At 8 bits, the default, the copies
            of ``benchmarks/dedupe_quality`` are caught 91% of the time with no false match
            among the 78,606 pairs of distinct hymenoptera photos. Each image is compared
            through 16 pairs, so the chance rate for unrelated hashes is ~16 x 3.0e-10 per
            pair of images (see README for the figures).
        DEDUPE_HASH: the imagehash hash (``HASH_FUNCTIONS``: ``phash``, the default, ``dhash``,
            ``average_hash`` or ``whash``), 64 bits, for the image and its windows. The
            distances above were measured for phash. Changing it on an existing dataset
            rehashes its stored images when the crawl opens it (hashes of two kinds are never
            compared); crawls writing one dataset at the same time must use the same hash.

    Takes the hashes the prepare stage computed (``image_hashes``). Sets ``phash``, ``hashes`` (the
    variants, for the catalog's ``image_hashes``) and ``catalog_seen_id`` on unique items. A
    larger copy (more pixels, same label) of a stored image passes with ``replaces`` set: the
    store stage swaps it in and turns the smaller one's row into its duplicate. A duplicate
    gets ``status = "duplicate"``, ``reason`` (``exact``, ``near`` or ``label_conflict``),
    ``duplicate_of`` and ``hash_distance``. A copy of an image a person deleted in review
    (``python -m crawler.review``) gets ``status = "rejected"``, ``reason = "review_delete"``:
    deletions stick across later crawls. Stats: ``dedupe/unique``, ``dedupe/upgrade``,
    ``dedupe/<reason>``.

    Raises:
        NotConfigured: without DATASET_DIR.
        UserError: on a distance outside 0-63 bits or an unknown ``DEDUPE_HASH`` (the crawl
            does not start).
        DropItem: with the duplicate reason.
    """

    def __init__(
        self,
        crawler: Crawler,
        *,
        dataset_dir: Path,
        max_distance: int,
        variant_distance: int,
        hash_name: str,
    ) -> None:
        self.crawler = crawler
        self.dataset_dir = dataset_dir
        self.max_distance = max_distance
        self.variant_distance = variant_distance
        self.hash_name = hash_name
        self.hashes: CatalogHashIndex | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        dataset_dir = settings.get("DATASET_DIR")
        if not dataset_dir:
            raise NotConfigured("DATASET_DIR is not set (the dataset folder to dedupe against)")
        return cls(
            crawler,
            dataset_dir=Path(dataset_dir),
            max_distance=get_int(settings, "DEDUPE_MAX_DISTANCE", unit="bits", minimum=0, maximum=63, example=6),
            variant_distance=get_int(
                settings, "DEDUPE_VARIANT_DISTANCE", unit="bits", minimum=0, maximum=63, example=8,
                note="0: no variants",
            ),
            hash_name=dedupe_hash(settings),
        )

    def open_spider(self) -> None:
        catalog = Catalog(self.dataset_dir)
        ensure_hash_recipe(catalog, self.hash_name)
        self.hashes = CatalogHashIndex(catalog, self.max_distance, self.variant_distance)
        self.hashes.refresh()
        logger.info(
            "dedupe index: %d stored images, %s, max distance %d bits (variants %d bits)",
            self.hashes.stored,
            self.hash_name,
            self.max_distance,
            self.variant_distance,
        )

    def close_spider(self) -> None:
        if self.hashes is not None:
            self.hashes.catalog.close()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        stats = self.crawler.stats
        assert stats is not None and self.hashes is not None
        hashes = adapter.pop("image_hashes", None)
        if hashes is None:
            raise DropItem("not_verified")  # the prepare stage must run first; a configuration error
        hashes = dict(hashes)
        # On the reactor, not in a thread: the lookup is in memory (0.2-0.3 ms) plus at most two
        # small indexed reads of rows committed since, which a WAL reader never waits for; a trip
        # to a thread and back cost the reactor more than that.
        seen_id, match = self._decide(hashes, adapter["sha256"])
        adapter["phash"] = hashes.pop("phash")
        if self.variant_distance:
            adapter["hashes"] = hashes
        adapter["catalog_seen_id"] = seen_id
        if match is None:
            stats.inc_value("dedupe/unique")
            return item
        if match.deleted:
            adapter["status"] = "rejected"
            adapter["reason"] = REVIEW_DELETE
            adapter["hash_distance"] = match.distance
            adapter.pop("body", None)
            stats.inc_value(f"dedupe/{REVIEW_DELETE}")
            logger.info("copy (%d bits) of an image deleted in review: %s", match.distance, str(adapter["url"])[:100])
            raise DropItem(REVIEW_DELETE)
        if match.upgraded_by(adapter["label"], source_pixels(adapter)):
            adapter["replaces"] = [(match.path, match.distance)]
            stats.inc_value("dedupe/upgrade")
            return item
        mark_duplicate(adapter, match)
        stats.inc_value(f"dedupe/{adapter['reason']}")
        raise DropItem(adapter["reason"])

    def _decide(self, hashes: dict[str, str], sha256: str) -> tuple[int, Match | None]:
        """Top up the index and look the image up (reads the catalog's new rows, if any)."""
        assert self.hashes is not None
        seen_id = self.hashes.refresh()
        variants = {kind: value for kind, value in hashes.items() if kind != "phash"}
        return seen_id, self.hashes.find(sha256, hashes["phash"], variants)

