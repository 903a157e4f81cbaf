"""Dedupe stage: drop exact and near duplicates of images already in the dataset, any label.

Exact duplicates are found by the SHA-256 of the downloaded bytes (an indexed catalog lookup;
bytes an earlier crawl judged a duplicate get the same verdict again); near duplicates by the
Hamming distance between perceptual hashes (PDQ, 256 bits, by default; or a 64-bit imagehash
hash) in a multi-index hashing index, with the match rule of ``crawler.images.matching``. The index is filled from the catalog's
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
from crawler.images.index import CatalogHashIndex, PdqCatalogIndex, catalog_index
from crawler.images.matching import DedupeRule, Match, mark_duplicate, source_pixels
from crawler.images.pdq import DIHEDRAL_KINDS
from crawler.images.rehash import ensure_hash_recipe
from crawler.setting_values import dedupe_rule
from crawler.threads import run_in_thread

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["DedupePipeline"]


class DedupePipeline:
    """Drop items whose image is already stored (any label), exactly or nearly.

    Settings:
        DATASET_DIR: the dataset folder holding ``catalog.sqlite`` (required).
        DEDUPE_HASH: ``pdq`` (the default: PDQ, 256 bits, with its 8 flips and rotations,
            window hashes, a quality score and a second look; ``crawler.images.pdq``), or one
            of imagehash's 64-bit ``phash``, ``dhash``, ``average_hash``, ``whash`` (windows
            and a colour gate; no flips or rotations). Changing it on an existing dataset
            rehashes its stored images when the crawl opens it (hashes of two kinds are never
            compared); crawls writing one dataset at the same time must use the same hash.
        DEDUPE_MAX_DISTANCE, DEDUPE_VARIANT_DISTANCE, DEDUPE_MIN_QUALITY, DEDUPE_LOOK_DISTANCE,
            DEDUPE_LOOK_DIFFERENCE: the match rule's thresholds (``crawler.images.matching``);
            unset, each takes the hash's default (``DEDUPE_DEFAULTS`` in
            ``crawler/settings.py``). pdq: 31 and 24 bits of 256, quality 50, second look up
            to 50 bits at a median difference of 0.10. On ``../shared/real/neardup`` copies
            were <= 14 bits away (full picture) and <= 16 (windows), distinct pictures >= 50
            and >= 34; 0 false merges among the 78,606 pairs of hymenoptera photos and the
            shop mirrors' distinct products (README "Near-duplicate quality"). phash: 6 and
            8 bits of 64 (the 396 hymenoptera photos: a half-size JPEG q60 copy moves phash by
            0-4 bits, the closest two distinct photos are 14 apart; ``benchmarks/dedupe_quality``).

    Takes the hashes the prepare stage computed (``image_hashes``). Sets ``phash``, ``hashes`` (the
    windows, for the catalog's ``image_hashes``), with pdq ``pdq``, ``pdq_quality``,
    ``pdq_dihedral`` (for the store's re-check) and ``look``, and ``catalog_seen_id`` on unique items. A
    larger copy (more pixels, same label) of a stored image passes with ``replaces`` set: the
    store stage swaps it in and turns the smaller one's row into its duplicate. A duplicate
    gets ``status = "duplicate"``, ``reason`` (``exact``, ``near`` or ``label_conflict``),
    ``duplicate_of`` and ``hash_distance``. A copy of an image a person deleted in review
    (``python -m crawler.review``) gets ``status = "rejected"``, ``reason = "review_delete"``:
    deletions stick across later crawls. Stats: ``dedupe/unique``, ``dedupe/upgrade``,
    ``dedupe/<reason>``.

    Raises:
        NotConfigured: without DATASET_DIR.
        UserError: on a threshold out of range or an unknown ``DEDUPE_HASH``
            (``crawler.setting_values.dedupe_rule``; the crawl does not start).
        DropItem: with the duplicate reason.
    """

    def __init__(
        self,
        crawler: Crawler,
        *,
        dataset_dir: Path,
        rule: DedupeRule,
    ) -> None:
        self.crawler = crawler
        self.dataset_dir = dataset_dir
        self.rule = rule
        self.hash_name = rule.hash_name
        self.hashes: CatalogHashIndex | PdqCatalogIndex | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        dataset_dir = settings.get("DATASET_DIR")
        if not dataset_dir:
            raise NotConfigured("DATASET_DIR is not set (the dataset folder to dedupe against)")
        return cls(crawler, dataset_dir=Path(dataset_dir), rule=dedupe_rule(settings))

    def open_spider(self) -> None:
        catalog = Catalog(self.dataset_dir, url=self.crawler.settings.get("CATALOG_URL"))
        ensure_hash_recipe(catalog, self.hash_name)
        self.hashes = catalog_index(catalog, self.rule)
        self.hashes.refresh()
        logger.info("dedupe index: %d stored images, %s", self.hashes.stored, self.rule)

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
        # phash: on the reactor, not in a thread: the lookup is in memory (0.2-0.3 ms) plus at
        # most two small indexed reads of rows committed since, which a WAL reader never waits
        # for; a trip to a thread and back cost the reactor more than that. pdq's lookup (10
        # hashes of 256 bits and 9 of 64 per image, 0.4-0.5 ms with its catch-up;
        # ``benchmarks/dedupe_decide``) goes to a thread.
        if self.rule.pdq:
            seen_id, match = await run_in_thread(self._decide, hashes, adapter["sha256"])
        else:
            seen_id, match = self._decide(hashes, adapter["sha256"])
        adapter["phash"] = hashes.pop("phash")
        if self.rule.pdq:
            adapter["pdq_dihedral"] = tuple(hashes.pop(kind) for kind in DIHEDRAL_KINDS)
            adapter["pdq"] = adapter["pdq_dihedral"][0]
            adapter["pdq_quality"] = hashes.pop("pdq_quality")
            adapter["look"] = hashes.pop("look")
        if self.rule.variant_distance:
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
        if isinstance(self.hashes, PdqCatalogIndex):
            return seen_id, self.hashes.find(sha256, hashes)
        variants = {kind: value for kind, value in hashes.items() if kind != "phash"}
        return seen_id, self.hashes.find(sha256, hashes["phash"], variants)

