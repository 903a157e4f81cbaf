"""Dedupe stage: drop exact and near duplicates of images already in the dataset, any label.

Exact duplicates are found by the SHA-256 of the downloaded bytes (an indexed catalog lookup);
near duplicates by the Hamming distance between perceptual hashes (imagehash ``phash``,
``hash_size=8``: 64 bits) in a ``MultiIndexHashIndex``. The index is filled from the catalog's
``stored`` rows and topped up with rows whose id is above the last one seen before every
decision, so images stored by earlier crawls or by other processes writing the same dataset count.
Images stored by items still in flight are caught by the store stage, which repeats this check
inside its catalog transaction for rows newer than ``catalog_seen_id``.

Variant hashes. Shops and search results serve copies that move a plain phash far: cropped by
~10%, letterboxed to a square, framed by a border, given a caption bar, rotated a few degrees.
Plain phash at a safe threshold catches well under half of those (``benchmarks/dedupe_quality``).
So every image also gets the phash of a few windows of itself (``VARIANTS``): after trimming
uniform borders (letterbox bars, frames), the central 90% (which also drops the fill of a small
rotation); the central 80% and 90%; the top 88% (a caption bar below); and the four 90% corner
windows (a crop that keeps one corner). Two images are near duplicates when their full phashes
are within ``DEDUPE_MAX_DISTANCE`` bits or one of the ``MATCH_PAIRS`` of windows is within
``DEDUPE_VARIANT_DISTANCE`` bits (pairs are symmetric, so the order of arrival does not matter).
The pairs were chosen greedily on the hymenoptera train photos and their copies and checked on
the val photos: 0 false matches and ~92% recall on each half. Variants are hashed from one
canonical reduction of the decoded image (longest side ``CANONICAL_SIDE`` pixels), the same for
every image, so hashes in one index always come from the same recipe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imagehash
import numpy as np
from itemadapter import ItemAdapter
from PIL import Image, ImageStat
from scrapy.exceptions import DropItem, NotConfigured

from crawler.catalog import Catalog
from crawler.hashindex import MultiIndexHashIndex, hamming
from crawler.threads import run_in_thread

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = [
    "MATCH_PAIRS",
    "VARIANTS",
    "DedupePipeline",
    "Match",
    "duplicate_reason",
    "image_hashes",
    "perceptual_hash",
    "trim_borders",
]

# phash with hash_size=8 is the catalog's declared hash (meta: hash=phash, hash_size=8).
HASH_SIZE = 8
HASH_BITS = HASH_SIZE * HASH_SIZE


def perceptual_hash(image: Image.Image) -> str:
    """imagehash ``phash`` of a full-size RGB image, 64 bits as 16 lower-case hex chars.

    Always computed from the fully decoded image (never a JPEG ``draft``), so every hash in one
    index comes from the same recipe.
    """
    return str(imagehash.phash(image, hash_size=HASH_SIZE))


# Windows of the canonical image, as (left, top, right, bottom) fractions; "trim90" is taken
# after trim_borders. Names are the `kind` column of the catalog's image_hashes table.
VARIANTS: dict[str, tuple[float, float, float, float]] = {
    "trim90": (0.05, 0.05, 0.95, 0.95),
    "c80": (0.10, 0.10, 0.90, 0.90),
    "c90": (0.05, 0.05, 0.95, 0.95),
    "top88": (0.0, 0.0, 1.0, 0.88),
    "tl90": (0.0, 0.0, 0.9, 0.9),
    "tr90": (0.1, 0.0, 1.0, 0.9),
    "bl90": (0.0, 0.1, 0.9, 1.0),
    "br90": (0.1, 0.1, 1.0, 1.0),
}
# (kind of one image, kind of the other) compared at DEDUPE_VARIANT_DISTANCE; both orders count.
MATCH_PAIRS: tuple[tuple[str, str], ...] = (
    ("trim90", "trim90"),  # letterbox, border, rotation
    ("phash", "top88"),  # caption bar below
    ("c80", "c90"),  # border, rotation, symmetric crop
    ("phash", "c90"),  # crop
    ("c80", "tl90"),  # crop keeping one corner
    ("c80", "tr90"),
    ("c80", "bl90"),
    ("c80", "br90"),
)
# Longest side of the canonical reduction the variants are hashed from, pixels: phash looks at
# 32x32, so 256 keeps every window's detail while making trimming and cropping cheap.
CANONICAL_SIDE = 256
# trim_borders: a row or column belongs to a border when this share of its pixels is within
# TRIM_TOLERANCE grey levels of the edge's median (JPEG noise and a stray pixel allowed).
TRIM_TOLERANCE = 40
TRIM_SHARE = 0.97
TRIM_MAX_SHARE = 0.4  # never trim more than this share of a side in one step
# A variant match must also agree on colour: the mean and standard deviation of R, G and B over
# the central 80% of the trimmed image, within this many levels each. Smooth low-detail pictures
# (gradients, studio backgrounds) have windows with alike phashes; their colours tell them apart.
COLOUR_TOLERANCE = 16
COLOUR_KIND = "colour"


def trim_borders(image: Image.Image) -> Image.Image:
    """``image`` without uniform borders (letterbox bars, frames), found on its grey levels.

    Each side is trimmed while its outermost rows/columns are uniform (see ``TRIM_SHARE``);
    repeated up to three times so a frame around a letterbox goes too. Returns the image itself
    when nothing is uniform, and never trims a side by more than 40% at once or below 16 pixels.
    """
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    top, left = 0, 0
    bottom, right = grey.shape
    for _ in range(3):
        changed = False
        for side in "tblr":
            window = grey[top:bottom, left:right]
            if min(window.shape) < 16:
                break
            edge = {"t": window[0], "b": window[-1], "l": window[:, 0], "r": window[:, -1]}[side]
            uniform = (np.abs(window - np.median(edge)) <= TRIM_TOLERANCE).mean(
                axis=1 if side in "tb" else 0
            ) >= TRIM_SHARE
            run = uniform if side in "tl" else uniform[::-1]
            count = len(run) if run.all() else int(np.argmin(run))
            if count == 0 or count > len(run) * TRIM_MAX_SHARE:
                continue
            changed = True
            if side == "t":
                top += count
            elif side == "b":
                bottom -= count
            elif side == "l":
                left += count
            else:
                right -= count
        if not changed:
            break
    if (left, top, right, bottom) == (0, 0, *grey.shape[::-1]):
        return image
    return image.crop((left, top, right, bottom))


def image_hashes(image: Image.Image) -> dict[str, str]:
    """Every perceptual hash dedupe compares, as ``{kind: 16 hex chars}``.

    ``phash`` is imagehash's phash of ``image`` itself (the catalog's ``phash`` column); the
    ``VARIANTS`` are phashes of windows of one canonical reduction of it (see the module
    docstring); ``colour`` (12 hex chars) is the colour signature variant matches must agree on
    (mean and standard deviation of R, G, B, one byte each). ``image`` is RGB, fully decoded.
    """
    hashes = {"phash": perceptual_hash(image)}
    canonical = image
    if max(image.size) > CANONICAL_SIDE:
        canonical = image.copy()
        canonical.thumbnail((CANONICAL_SIDE, CANONICAL_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    trimmed = trim_borders(canonical)
    width, height = trimmed.size
    centre = trimmed.crop((round(0.1 * width), round(0.1 * height), round(0.9 * width), round(0.9 * height)))
    stat = ImageStat.Stat(centre)
    hashes[COLOUR_KIND] = bytes(min(255, round(v)) for v in (*stat.mean, *stat.stddev)).hex()
    for kind, box in VARIANTS.items():
        source = trimmed if kind == "trim90" else canonical
        width, height = source.size
        window = source.crop(
            (round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height))
        )
        hashes[kind] = str(imagehash.phash(window, hash_size=HASH_SIZE))
    return hashes


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
    """The catalog's stored perceptual hashes in one ``MultiIndexHashIndex`` per hash kind,
    kept up to date.

    Thread-safe: ``refresh`` and ``find`` may run in worker threads.
    """

    def __init__(self, catalog: Catalog, max_distance: int, variant_distance: int | None = None) -> None:
        self.catalog = catalog
        self.max_distance = max_distance
        self.variant_distance = max_distance if variant_distance is None else variant_distance
        # Sized for the dataset as it is plus room to grow during this crawl.
        expected = 2 * catalog.count_stored()
        # Full phashes are also compared with variants (MATCH_PAIRS), at the variant distance.
        self.index = MultiIndexHashIndex.for_size(
            max(max_distance, self.variant_distance), expected, bits=HASH_BITS
        )
        self.variants = {
            kind: MultiIndexHashIndex.for_size(self.variant_distance, expected, bits=HASH_BITS)
            for kind in VARIANTS
        }
        self.colours: dict[int, bytes] = {}
        self.last_id = 0
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Add ``stored`` rows with id above the last seen; return the new last id."""
        with self._lock:
            since = self.last_id
            for row in self.catalog.stored_since(since):
                if row["phash"]:
                    self.index.add(int(row["phash"], 16), row["id"])
                self.last_id = row["id"]
            if self.variant_distance and self.last_id > since:
                for row in self.catalog.hashes_since(since):
                    if row["image_id"] > self.last_id:
                        continue
                    if row["kind"] in self.variants:
                        self.variants[row["kind"]].add(int(row["hash"], 16), row["image_id"])
                    elif row["kind"] == COLOUR_KIND:
                        self.colours[row["image_id"]] = bytes.fromhex(row["hash"])
            return self.last_id

    def find(self, sha256: str, phash: str, hashes: Mapping[str, str] | None = None) -> Match | None:
        """The stored image this one duplicates: exact match first, else the nearest by full
        phash, else the nearest by a pair of variant hashes (``MATCH_PAIRS``)."""
        exact = self.catalog.find_stored_sha256(sha256)
        if exact is not None:
            return Match.of_row(exact, 0, True)
        with self._lock:
            matches = self.index.query(int(phash, 16), self.max_distance)
            if not matches and hashes and self.variant_distance:
                found: dict[Any, int] = {}
                values = {"phash": phash, **hashes}
                colour = bytes.fromhex(hashes.get(COLOUR_KIND, ""))
                for mine, theirs in {*MATCH_PAIRS, *((b, a) for a, b in MATCH_PAIRS)}:
                    index = self.index if theirs == "phash" else self.variants.get(theirs)
                    if mine not in values or index is None:
                        continue
                    for distance, row_id in index.query(int(values[mine], 16), self.variant_distance):
                        if _same_colour(colour, self.colours.get(row_id, b"")):
                            found[row_id] = min(distance, found.get(row_id, HASH_BITS))
                matches = sorted(((d, row_id) for row_id, d in found.items()), key=lambda m: m[0])
        for distance, row_id in matches:
            row = self.catalog.get(row_id)
            # A row replaced by a larger copy is now a duplicate: its hash still counts, and
            # the image that stands for it is the one it points to.
            if row is not None and row["status"] != "stored" and row["duplicate_of"]:
                row = self.catalog.find_stored_path(row["duplicate_of"])
            if row is not None and row["status"] == "stored":
                return Match.of_row(row, distance, False)
        return None


def _same_colour(mine: bytes, theirs: bytes) -> bool:
    """Colour signatures (``image_hashes``) within ``COLOUR_TOLERANCE`` levels each; an image
    without one (catalogued before variants existed) never matches by variants."""
    return len(mine) == len(theirs) == 6 and max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) <= COLOUR_TOLERANCE


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
        DEDUPE_VARIANT_DISTANCE: largest Hamming distance, in bits, between the variant hashes
            of a ``MATCH_PAIRS`` pair (default 8; 0 turns variants off). On the hymenoptera
            photos every variant pair of distinct photos is at least 12 bits apart; at 8 bits
            the copies of ``benchmarks/dedupe_quality`` are caught ~93% of the time with no
            false match. Each image is compared through 16 pairs, so the chance rate for
            unrelated hashes is ~16 x 3.0e-10 per pair of images (see README for the figures).

    Sets ``phash``, ``hashes`` (the variants, for the catalog's ``image_hashes``) and
    ``catalog_seen_id`` on unique items. A larger copy (more pixels, same
    label) of a stored image passes with ``replaces`` set: the store stage swaps it in and
    turns the smaller one's row into its duplicate. A duplicate gets
    ``status = "duplicate"``, ``reason`` (``exact``, ``near`` or ``label_conflict``),
    ``duplicate_of`` and ``hash_distance``. Stats: ``dedupe/unique``, ``dedupe/upgrade``, ``dedupe/<reason>``.

    Raises:
        NotConfigured: without DATASET_DIR, or on a distance outside [0, 64).
        DropItem: with the duplicate reason.
    """

    MAX_DISTANCE = 6
    VARIANT_DISTANCE = 8

    def __init__(
        self, crawler: Crawler, *, dataset_dir: Path, max_distance: int, variant_distance: int = VARIANT_DISTANCE
    ) -> None:
        self.crawler = crawler
        self.dataset_dir = dataset_dir
        self.max_distance = max_distance
        self.variant_distance = variant_distance
        self.hashes: CatalogHashIndex | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        dataset_dir = settings.get("DATASET_DIR")
        if not dataset_dir:
            raise NotConfigured("DATASET_DIR is not set (the dataset folder to dedupe against)")
        max_distance = settings.getint("DEDUPE_MAX_DISTANCE", cls.MAX_DISTANCE)
        variant_distance = settings.getint("DEDUPE_VARIANT_DISTANCE", cls.VARIANT_DISTANCE)
        for name, value in (("DEDUPE_MAX_DISTANCE", max_distance), ("DEDUPE_VARIANT_DISTANCE", variant_distance)):
            if not 0 <= value < HASH_BITS:
                raise NotConfigured(f"{name} must be in [0, {HASH_BITS}) bits, got {value}")
        return cls(
            crawler, dataset_dir=Path(dataset_dir), max_distance=max_distance, variant_distance=variant_distance
        )

    def open_spider(self) -> None:
        self.hashes = CatalogHashIndex(Catalog(self.dataset_dir), self.max_distance, self.variant_distance)
        self.hashes.refresh()
        logger.info(
            "dedupe index: %d stored hashes, max distance %d bits (variants %d bits)",
            len(self.hashes.index),
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
        image = adapter.pop("image", None)
        if image is None:
            raise DropItem("not_verified")  # verify must run first; a configuration error
        hashes, seen_id, match = await run_in_thread(self._decide, image, adapter["sha256"])
        adapter["phash"] = hashes.pop("phash")
        if self.variant_distance:
            adapter["hashes"] = hashes
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

    def _decide(self, image: Image.Image, sha256: str) -> tuple[dict[str, str], int, Match | None]:
        assert self.hashes is not None
        hashes = image_hashes(image) if self.variant_distance else {"phash": perceptual_hash(image)}
        seen_id = self.hashes.refresh()
        variants = {kind: value for kind, value in hashes.items() if kind != "phash"}
        return hashes, seen_id, self.hashes.find(sha256, hashes["phash"], variants)


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
