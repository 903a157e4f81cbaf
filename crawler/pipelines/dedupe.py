"""Dedupe stage: drop exact and near duplicates of images already in the dataset, any label.

Exact duplicates are found by the SHA-256 of the downloaded bytes (an indexed catalog lookup);
near duplicates by the Hamming distance between perceptual hashes (imagehash ``phash``,
``hash_size=8``: 64 bits) in a ``MultiIndexHashIndex``. The index is filled from the catalog's
``stored`` rows and topped up with rows whose id is above the last one seen before every
decision, so images stored by earlier crawls or by other processes writing the same dataset count.
Images stored by items still in flight are caught by the store stage, which repeats this check
inside its catalog transaction for rows newer than ``catalog_seen_id``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imagehash
from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem, NotConfigured

from crawler.catalog import Catalog
from crawler.hashindex import MultiIndexHashIndex, hamming
from crawler.threads import run_in_thread

if TYPE_CHECKING:
    from PIL import Image
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["DedupePipeline", "Match", "duplicate_reason", "perceptual_hash"]

# phash with hash_size=8 is the catalog's declared hash (meta: hash=phash, hash_size=8).
HASH_SIZE = 8
HASH_BITS = HASH_SIZE * HASH_SIZE


def perceptual_hash(image: Image.Image) -> str:
    """imagehash ``phash`` of a full-size RGB image, 64 bits as 16 lower-case hex chars.

    Always computed from the fully decoded image (never a JPEG ``draft``), so every hash in one
    index comes from the same recipe.
    """
    return str(imagehash.phash(image, hash_size=HASH_SIZE))


def duplicate_reason(label: str, existing_label: str, distance: int, same_bytes: bool) -> str:
    """``label_conflict`` across labels, else ``exact`` (same bytes) or ``near``."""
    if label != existing_label:
        return "label_conflict"
    return "exact" if same_bytes and distance == 0 else "near"


class Match:
    """A stored image an item duplicates: its catalog ``path`` and ``label``, the Hamming
    ``distance`` in bits between the perceptual hashes (0 for the same bytes), and its size
    ``pixels`` (width x height, 0 when unknown)."""

    __slots__ = ("distance", "label", "path", "pixels", "same_bytes")

    def __init__(self, path: str, label: str, distance: int, same_bytes: bool, pixels: int = 0) -> None:
        self.path = path
        self.label = label
        self.distance = distance
        self.same_bytes = same_bytes
        self.pixels = pixels

    @classmethod
    def of_row(cls, row: Any, distance: int, same_bytes: bool) -> Match:
        return cls(row["path"], row["label"], distance, same_bytes, (row["width"] or 0) * (row["height"] or 0))

    def upgraded_by(self, label: str, pixels: int) -> bool:
        """True when an item of ``label`` and ``pixels`` should replace this stored image:
        same label, different bytes, strictly more pixels. Search results and shops serve
        downscaled copies; whichever arrives first, the dataset keeps the largest. Across
        labels the first stays (a label conflict is for a person to settle)."""
        return label == self.label and not self.same_bytes and pixels > self.pixels


class CatalogHashIndex:
    """The catalog's stored perceptual hashes in a ``MultiIndexHashIndex``, kept up to date.

    Thread-safe: ``refresh`` and ``find`` may run in worker threads.
    """

    def __init__(self, catalog: Catalog, max_distance: int) -> None:
        self.catalog = catalog
        self.max_distance = max_distance
        # Sized for the dataset as it is plus room to grow during this crawl.
        self.index = MultiIndexHashIndex.for_size(
            max_distance, 2 * catalog.count_stored(), bits=HASH_BITS
        )
        self.last_id = 0
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Add ``stored`` rows with id above the last seen; return the new last id."""
        with self._lock:
            for row in self.catalog.stored_since(self.last_id):
                if row["phash"]:
                    self.index.add(int(row["phash"], 16), row["id"])
                self.last_id = row["id"]
            return self.last_id

    def find(self, sha256: str, phash: str) -> Match | None:
        """The stored image this one duplicates, exact match first, else the nearest."""
        exact = self.catalog.find_stored_sha256(sha256)
        if exact is not None:
            return Match.of_row(exact, 0, True)
        with self._lock:
            matches = self.index.query(int(phash, 16))
        for distance, row_id in matches:
            row = self.catalog.get(row_id)
            # A row replaced by a larger copy is now a duplicate: its hash still counts, and
            # the image that stands for it is the one it points to.
            if row is not None and row["status"] != "stored" and row["duplicate_of"]:
                row = self.catalog.find_stored_path(row["duplicate_of"])
            if row is not None and row["status"] == "stored":
                return Match.of_row(row, distance, False)
        return None


def find_in_rows(
    rows: list[Any], sha256: str, phash: str | None, max_distance: int
) -> Match | None:
    """Like ``CatalogHashIndex.find`` over a short list of catalog rows (a linear scan, for the
    handful stored since an item's dedupe decision)."""
    best: Match | None = None
    value = int(phash, 16) if phash else None
    for row in rows:
        if row["sha256"] == sha256:
            return Match.of_row(row, 0, True)
        if value is not None and row["phash"]:
            distance = hamming(value, int(row["phash"], 16))
            if distance <= max_distance and (best is None or distance < best.distance):
                best = Match.of_row(row, distance, False)
    return best


class DedupePipeline:
    """Drop items whose image is already stored (any label), exactly or nearly.

    Settings:
        DATASET_DIR: the dataset folder holding ``catalog.sqlite`` (required).
        DEDUPE_MAX_DISTANCE: largest Hamming distance between 64-bit phashes, in bits, that
            still counts as the same picture (default 6). Measured on the 396 hymenoptera
            photos in ../shared: a half-size JPEG q60 copy moves phash by 0-4 bits, while the
            closest two distinct photos are 14 bits apart; for unrelated hashes, distance <= 6
            has probability ~4.5e-12 per pair (binomial tail of 64 fair bits), i.e. about two
            chance matches among a million images.

    Sets ``phash`` and ``catalog_seen_id`` on unique items. A larger copy (more pixels, same
    label) of a stored image passes with ``replaces`` set: the store stage swaps it in and
    turns the smaller one's row into its duplicate. A duplicate gets
    ``status = "duplicate"``, ``reason`` (``exact``, ``near`` or ``label_conflict``),
    ``duplicate_of`` and ``hash_distance``. Stats: ``dedupe/unique``, ``dedupe/upgrade``, ``dedupe/<reason>``.

    Raises:
        NotConfigured: without DATASET_DIR, or on a negative DEDUPE_MAX_DISTANCE.
        DropItem: with the duplicate reason.
    """

    MAX_DISTANCE = 6

    def __init__(self, crawler: Crawler, *, dataset_dir: Path, max_distance: int) -> None:
        self.crawler = crawler
        self.dataset_dir = dataset_dir
        self.max_distance = max_distance
        self.hashes: CatalogHashIndex | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        dataset_dir = settings.get("DATASET_DIR")
        if not dataset_dir:
            raise NotConfigured("DATASET_DIR is not set (the dataset folder to dedupe against)")
        max_distance = settings.getint("DEDUPE_MAX_DISTANCE", cls.MAX_DISTANCE)
        if not 0 <= max_distance < HASH_BITS:
            raise NotConfigured(f"DEDUPE_MAX_DISTANCE must be in [0, {HASH_BITS}) bits")
        return cls(crawler, dataset_dir=Path(dataset_dir), max_distance=max_distance)

    def open_spider(self) -> None:
        self.hashes = CatalogHashIndex(Catalog(self.dataset_dir), self.max_distance)
        self.hashes.refresh()
        logger.info(
            "dedupe index: %d stored hashes, max distance %d bits",
            len(self.hashes.index),
            self.max_distance,
        )

    def close_spider(self) -> None:
        if self.hashes is not None:
            self.hashes.catalog.close()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        stats = self.crawler.stats
        assert stats is not None and self.hashes is not None
        image = adapter.pop("image", None)
        if image is None:
            raise DropItem("not_verified")  # verify must run first; a configuration error
        phash, seen_id, match = await run_in_thread(self._decide, image, adapter["sha256"])
        adapter["phash"] = phash
        adapter["catalog_seen_id"] = seen_id
        if match is None:
            stats.inc_value("dedupe/unique")
            return item
        if match.upgraded_by(adapter["label"], adapter["width"] * adapter["height"]):
            adapter["replaces"] = [(match.path, match.distance)]
            stats.inc_value("dedupe/upgrade")
            return item
        mark_duplicate(adapter, match)
        stats.inc_value(f"dedupe/{adapter['reason']}")
        raise DropItem(adapter["reason"])

    def _decide(self, image: Image.Image, sha256: str) -> tuple[str, int, Match | None]:
        assert self.hashes is not None
        phash = perceptual_hash(image)
        seen_id = self.hashes.refresh()
        return phash, seen_id, self.hashes.find(sha256, phash)


def mark_duplicate(adapter: ItemAdapter, match: Match) -> None:
    """Record on the item that it duplicates ``match`` and drop its bytes."""
    adapter["status"] = "duplicate"
    adapter["reason"] = duplicate_reason(
        adapter["label"], match.label, match.distance, match.same_bytes
    )
    adapter["duplicate_of"] = match.path
    adapter["hash_distance"] = match.distance
    adapter.pop("body", None)
    logger.info(
        "%s duplicate (%d bits) of %s: %s",
        adapter["reason"],
        match.distance,
        match.path,
        str(adapter.get("url", ""))[:100],
    )
