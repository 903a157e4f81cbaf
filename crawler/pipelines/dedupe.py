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
the val photos.

The hash recipe (``HASH_RECIPE``, kept in the catalog's ``meta`` table). Every hash, the full
``phash`` included, is taken from one canonical reduction of the stored picture: longest side
``CANONICAL_SIDE`` pixels (``canonical_image``). phash only looks at a 32x32 LANCZOS reduction,
so 160 pixels keep every window's detail, and a small canonical image makes trimming, cropping
and the ten resizes cheap (``benchmarks/dedupe_quality`` measured 128, 160 and 192 pixels with
BILINEAR and LANCZOS reductions: 160 with LANCZOS had the best recall, 91.0%, and no false
match; the 256 pixels used before gave 90.4%). JPEGs are decoded straight at reduced size with
libjpeg's DCT scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8, never below the canonical size),
which skips most of the inverse DCT and colour conversion; other formats are decoded fully and
reduced. The rule
is fixed by the stored format, so one picture always hashes the same way: drafted and
full-size decodes are never mixed for JPEGs (on the hymenoptera photos the two paths differ by
0-4 bits for most windows but by up to 42 bits for a few, enough to hide a duplicate). A catalog
whose ``hash_recipe`` differs (or is missing: datasets from before the recipe was recorded) is
rehashed from its stored files when a crawl opens it (``rehash_catalog``).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imagehash
import numpy as np
from itemadapter import ItemAdapter
from PIL import Image, ImageOps, ImageStat
from scrapy.exceptions import DropItem, NotConfigured

from crawler.catalog import REVIEW_DELETE, Catalog
from crawler.hashindex import MultiIndexHashIndex, hamming
from crawler.threads import run_in_thread

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = [
    "CANONICAL_SIDE",
    "HASH_FUNCTIONS",
    "HASH_RECIPE",
    "MATCH_PAIRS",
    "VARIANTS",
    "DedupePipeline",
    "Match",
    "canonical_image",
    "canonical_size",
    "decode_canonical_jpeg",
    "duplicate_reason",
    "ensure_hash_recipe",
    "hash_recipe",
    "hashes_of",
    "image_hashes",
    "perceptual_hash",
    "rehash_catalog",
    "trim_borders",
]

# phash with hash_size=8 is the catalog's declared hash (meta: hash=phash, hash_size=8).
HASH_SIZE = 8
HASH_BITS = HASH_SIZE * HASH_SIZE


# Longest side of the canonical reduction every hash is taken from, pixels (module docstring).
CANONICAL_SIDE = 160
# imagehash's 64-bit hashes dedupe can use (DEDUPE_HASH); phash is the default and the one the
# thresholds, MATCH_PAIRS and benchmarks/dedupe_quality figures are for.
HASH_FUNCTIONS: dict[str, Callable[..., imagehash.ImageHash]] = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "average_hash": imagehash.average_hash,
    "whash": imagehash.whash,
}
DEFAULT_HASH = "phash"


def hash_recipe(hash_name: str = DEFAULT_HASH) -> str:
    """The catalog ``meta`` value naming how hashes are made; a catalog with another is rehashed.

    Raises:
        ValueError: for a ``hash_name`` not in ``HASH_FUNCTIONS``.
    """
    if hash_name not in HASH_FUNCTIONS:
        raise ValueError(f"unknown perceptual hash {hash_name!r}; valid: {', '.join(HASH_FUNCTIONS)}")
    return f"{hash_name}{HASH_SIZE}-canonical{CANONICAL_SIDE}-jpegdraft"


HASH_RECIPE = hash_recipe()


def canonical_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` scaled so the longest side is ``CANONICAL_SIDE`` pixels (rounded, at
    least 1); ``size`` itself when it is no larger."""
    width, height = size
    longest = max(width, height)
    if longest <= CANONICAL_SIDE:
        return size
    scale = CANONICAL_SIDE / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def canonical_image(image: Image.Image) -> Image.Image:
    """``image`` (RGB) reduced to ``canonical_size`` (LANCZOS after an integer box reduction,
    Pillow's ``reducing_gap=2.0``); ``image`` itself when it is no larger."""
    size = canonical_size(image.size)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def decode_canonical_jpeg(body: bytes) -> Image.Image:
    """The canonical RGB image of JPEG ``body``: decoded at reduced size with libjpeg's DCT
    scaling (Pillow ``draft``, never below ``canonical_size``), EXIF-oriented, reduced.

    Every entropy-coded block is still decoded, so truncated or corrupt data raises as a full
    decode does.

    Raises:
        OSError, SyntaxError, ValueError...: whatever Pillow raises on bad data.
    """
    with Image.open(io.BytesIO(body), formats=["JPEG"]) as image:
        image.draft(None, canonical_size(image.size))
        image.load()
        return canonical_image(ImageOps.exif_transpose(image).convert("RGB"))


def perceptual_hash(image: Image.Image, hash_name: str = DEFAULT_HASH) -> str:
    """imagehash's ``hash_name`` (default ``phash``; 64 bits, 16 lower-case hex chars) of the
    canonical reduction of ``image`` (RGB; pass the canonical image itself, e.g.
    ``decode_canonical_jpeg``'s, to follow ``HASH_RECIPE``)."""
    return str(HASH_FUNCTIONS[hash_name](canonical_image(image), hash_size=HASH_SIZE))


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
    box = _trim_box(np.asarray(image.convert("L")))
    if box == (0, 0, *image.size):
        return image
    return image.crop(box)


def _trim_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of ``trim_borders`` for an ``(H, W)`` uint8 grey image."""
    grey = grey.astype(np.int16)
    top, left = 0, 0
    bottom, right = grey.shape
    for _ in range(3):
        changed = False
        for side in "tblr":
            window = grey[top:bottom, left:right]
            if min(window.shape) < 16:
                break
            # Rows (or columns) from this side inwards, so that run[0] is the outermost.
            lines = {"t": window, "b": window[::-1], "l": window.T, "r": window.T[::-1]}[side]
            count = _uniform_run(lines, np.median(lines[0]), int(len(lines) * TRIM_MAX_SHARE) + 1)
            if count == 0 or count > len(lines) * TRIM_MAX_SHARE:
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
    return left, top, right, bottom


def _uniform_run(lines: np.ndarray, level: float, limit: int) -> int:
    """How many of the first ``lines`` (up to ``limit``; more would not be trimmed anyway)
    are uniform: ``TRIM_SHARE`` of their pixels within ``TRIM_TOLERANCE`` of ``level``.
    Looks at a few lines at a time, since most pictures stop at the first."""
    count, step = 0, 4
    while count < min(limit, len(lines)):
        chunk = lines[count : min(count + step, limit)]
        uniform = (np.abs(chunk - level) <= TRIM_TOLERANCE).mean(axis=1) >= TRIM_SHARE
        if not uniform.all():
            return count + int(np.argmin(uniform))
        count += len(chunk)
        step *= 4
    return count


def _window(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A fractional ``(left, top, right, bottom)`` box in pixels of an image of ``size``."""
    width, height = size
    return round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height)


def phash_many(greys: list[Image.Image]) -> list[str]:
    """imagehash ``phash`` (``hash_size=8``) of several grey (mode ``L``) images, as 16 hex chars.

    The same recipe as ``imagehash.phash`` (LANCZOS to 32x32, 2-D DCT-II, bits of the 8x8
    low-frequency corner above its median), bit for bit (tests check it), but with the DCT, the
    medians and the hex encoding done once for the whole ``(N, 32, 32)`` stack instead of N
    times in Python: the per-call overhead was most of the cost of hashing 9 windows of a
    256-pixel image.
    """
    import scipy.fftpack  # here: crawls that hash in worker processes never import it (0.2 s)

    side = HASH_SIZE * 4  # imagehash's highfreq_factor
    pixels = np.stack([np.asarray(g.resize((side, side), Image.Resampling.LANCZOS)) for g in greys])
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)
    low = dct[:, :HASH_SIZE, :HASH_SIZE].reshape(len(greys), HASH_BITS)
    bits = low > np.median(low, axis=1, keepdims=True)
    return [row.tobytes().hex() for row in np.packbits(bits, axis=1)]


def image_hashes(image: Image.Image, hash_name: str = DEFAULT_HASH) -> dict[str, str]:
    """Every perceptual hash dedupe compares, as ``{kind: 16 hex chars}``.

    ``phash`` is imagehash's ``hash_name`` hash (default phash) of the canonical image (the
    catalog's ``phash`` column, whichever hash ``meta.hash`` names); the ``VARIANTS`` are the
    same hash of windows of it (see the module docstring); ``colour`` (12 hex
    chars) is the colour signature variant matches must agree on (mean and standard deviation
    of R, G, B, one byte each). ``image`` is RGB: the canonical image (``VerifiedImage.image``,
    which follows ``HASH_RECIPE``), or a larger one, reduced here with ``canonical_image``.

    The windows are cut from one grey copy of the canonical image: converting to grey is per
    pixel, so cropping before or after it gives the same pixels, and one conversion replaces
    ten (plus the one ``trim_borders`` needs).
    """
    canonical = canonical_image(image)
    grey = canonical.convert("L")
    box = _trim_box(np.asarray(grey))
    left, top = box[0], box[1]
    trimmed_size = (box[2] - left, box[3] - top)
    centre = _window((0.1, 0.1, 0.9, 0.9), trimmed_size)
    stat = ImageStat.Stat(canonical.crop((left + centre[0], top + centre[1], left + centre[2], top + centre[3])))
    boxes = [(0, 0, *canonical.size)]
    for kind, fractions in VARIANTS.items():
        if kind == "trim90":
            x0, y0, x1, y1 = _window(fractions, trimmed_size)
            boxes.append((left + x0, top + y0, left + x1, top + y1))
        else:
            boxes.append(_window(fractions, canonical.size))
    # Without borders to trim (most pictures) "trim90" is the same window as "c90": hash once.
    unique = list(dict.fromkeys(boxes))
    windows = [grey if box == boxes[0] else grey.crop(box) for box in unique]
    if hash_name == "phash":
        values = phash_many(windows)
    else:
        values = [str(HASH_FUNCTIONS[hash_name](window, hash_size=HASH_SIZE)) for window in windows]
    of_box = dict(zip(unique, values, strict=True))
    hashes = {"phash": of_box[boxes[0]], COLOUR_KIND: bytes(min(255, round(v)) for v in (*stat.mean, *stat.stddev)).hex()}
    hashes.update((kind, of_box[box]) for kind, box in zip(VARIANTS, boxes[1:], strict=True))
    return hashes


def hashes_of(image: Image.Image, hash_name: str = DEFAULT_HASH, *, variants: bool = True) -> dict[str, str]:
    """The hashes dedupe compares for ``image`` (RGB, see ``image_hashes``): every kind of
    ``image_hashes`` when ``variants`` (``DEDUPE_VARIANT_DISTANCE`` > 0), else ``{"phash": ...}``."""
    if variants:
        return image_hashes(image, hash_name)
    return {"phash": perceptual_hash(image, hash_name)}


def rehash_catalog(catalog: Catalog, hash_name: str = DEFAULT_HASH, *, batch: int = 256) -> tuple[int, int]:
    """Recompute ``phash`` and the ``image_hashes`` of every ``stored`` image from its file,
    with ``hash_recipe(hash_name)``, then record the recipe and the hash in the catalog's
    ``meta`` (``hash_recipe``, ``hash``).

    For catalogs made before the recipe was recorded, or with another one: their hashes would
    not be comparable with a new crawl's (see the module docstring). Files go through
    ``verify_image`` (no size limits), so each is hashed exactly as a crawl hashes the bytes it
    stores. Runs in batches of ``batch`` rows, each its own transaction, so a kill leaves the
    recipe unrecorded and the next open starts again. Takes about 1-3 ms per image.

    Returns:
        ``(rehashed, skipped)``: images rehashed, and stored images whose file is missing or no
        longer decodes (left as they are and logged; ``python -m crawler.dataset check`` reports
        them).
    """
    from crawler.pipelines.verify import Rejected, verify_image  # verify imports this module

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
            updates.append((row_id, image_hashes(image, hash_name)))
        with catalog.transaction() as tx:
            for row_id, hashes in updates:
                tx.execute("UPDATE images SET phash = ? WHERE id = ?", (hashes.pop("phash"), row_id))
                tx.execute("DELETE FROM image_hashes WHERE image_id = ?", (row_id,))
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


def duplicate_reason(label: str, existing_label: str, distance: int, same_bytes: bool) -> str:
    """``label_conflict`` across labels, else ``exact`` (same bytes) or ``near``."""
    if label != existing_label:
        return "label_conflict"
    return "exact" if same_bytes and distance == 0 else "near"


def source_pixels(row: Mapping[str, Any]) -> int:
    """Pixels of the image as downloaded (``source_width`` x ``source_height``; the stored
    ``width`` x ``height`` for rows from before those columns, or 0 when unknown). A copy
    replaces a stored one by this size, so that with ``VERIFY_MAX_SIDE`` two copies larger
    than the limit still compare by what was downloaded."""
    width = row["source_width"] if "source_width" in row.keys() and row["source_width"] else row["width"]
    height = row["source_height"] if "source_height" in row.keys() and row["source_height"] else row["height"]
    return (width or 0) * (height or 0)


class Match:
    """A stored image an item duplicates: its catalog ``path`` and ``label``, the Hamming
    ``distance`` in bits between the perceptual hashes (0 for the same bytes), and its size
    ``pixels`` (width x height, 0 when unknown). ``deleted``: the image is not stored but was
    deleted by a person in review (``path`` is then ``None``), so copies of it are rejected."""

    __slots__ = ("deleted", "distance", "label", "path", "pixels", "same_bytes")

    def __init__(
        self, path: str, label: str, distance: int, same_bytes: bool, pixels: int = 0, deleted: bool = False
    ) -> None:
        self.path = path
        self.label = label
        self.distance = distance
        self.same_bytes = same_bytes
        self.pixels = pixels
        self.deleted = deleted

    @classmethod
    def of_row(cls, row: Any, distance: int, same_bytes: bool) -> Match:
        deleted = "status" in row.keys() and row["status"] == "rejected"
        return cls(row["path"], row["label"], distance, same_bytes, source_pixels(row), deleted)

    def upgraded_by(self, label: str, pixels: int) -> bool:
        """True when an item of ``label`` and ``pixels`` should replace this stored image:
        same label, different bytes, strictly more pixels. Search results and shops serve
        downscaled copies; whichever arrives first, the dataset keeps the largest. Across
        labels the first stays (a label conflict is for a person to settle); a deleted image
        is never brought back by a larger copy."""
        return not self.deleted and label == self.label and not self.same_bytes and pixels > self.pixels


class CatalogHashIndex:
    """The catalog's stored perceptual hashes, every kind (``phash`` and the ``VARIANTS``) in
    one ``MultiIndexHashIndex`` under the key ``row_id * 16 + kind``, kept up to date.

    One index rather than one per kind: an image asks for its 9 hashes at once, so a decision
    is one vectorised search (a handful of numpy calls per substring table) instead of one per
    ``MATCH_PAIRS`` pair, which at a few thousand images cost more than hashing the image.
    The memory is the same (one entry per stored hash either way); each query meets the
    candidates of every kind, which are filtered by kind after the exact Hamming check.

    Thread-safe: ``refresh`` and ``find`` may run in worker threads.
    """

    KINDS: tuple[str, ...] = ("phash", *VARIANTS)  # a kind's code is its position here

    def __init__(self, catalog: Catalog, max_distance: int, variant_distance: int | None = None) -> None:
        self.catalog = catalog
        self.max_distance = max_distance
        self.variant_distance = max_distance if variant_distance is None else variant_distance
        # Sized for the dataset as it is plus room to grow during this crawl.
        expected = 2 * catalog.count_stored() * (len(self.KINDS) if self.variant_distance else 1)
        # Full phashes are also compared with variants (MATCH_PAIRS), at the variant distance.
        self.index = MultiIndexHashIndex.for_size(
            max(max_distance, self.variant_distance), expected, bits=HASH_BITS
        )
        self._codes = {kind: code for code, kind in enumerate(self.KINDS)}
        pairs = {*MATCH_PAIRS, *((b, a) for a, b in MATCH_PAIRS)}
        # For each kind of the query image, the codes of stored kinds it is compared with.
        self._partners = {
            mine: frozenset(self._codes[theirs] for m, theirs in pairs if m == mine) for mine in self.KINDS
        }
        self.colours: dict[int, bytes] = {}
        self.ids_of_sha256: dict[str, int] = {}  # first stored row of each SHA-256 seen
        self.stored = 0  # stored images indexed
        self.last_id = 0
        self._version: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Add ``stored`` rows with id above the last seen; return the new last id. Reads no
        table when nothing was committed since the last call (``Catalog.version``)."""
        with self._lock:
            version = self.catalog.version()
            if version == self._version:
                return self.last_id
            self._version = version
            since = self.last_id
            # Images deleted in review stay in the index, so their copies are rejected.
            for row in self.catalog.stored_since(since, deleted=True):
                if row["phash"]:
                    self.index.add(int(row["phash"], 16), row["id"] * 16)
                if row["sha256"]:
                    self.ids_of_sha256.setdefault(row["sha256"], row["id"])
                self.stored += row["status"] == "stored"
                self.last_id = row["id"]
            if self.variant_distance and self.last_id > since:
                for row in self.catalog.hashes_since(since, deleted=True):
                    if row["image_id"] > self.last_id:
                        continue
                    code = self._codes.get(row["kind"])
                    if code:  # a variant (0 is phash, which lives in the images table)
                        self.index.add(int(row["hash"], 16), row["image_id"] * 16 + code)
                    elif row["kind"] == COLOUR_KIND:
                        self.colours[row["image_id"]] = bytes.fromhex(row["hash"])
            return self.last_id

    def find(self, sha256: str, phash: str, hashes: Mapping[str, str] | None = None) -> Match | None:
        """The stored image this one duplicates: exact match first, else the nearest by full
        phash, else the nearest by a pair of variant hashes (``MATCH_PAIRS``)."""
        # Most items are new: the in-memory map answers them without a query; a hit is
        # confirmed in the catalog (the row may have been replaced or reviewed away since).
        if sha256 in self.ids_of_sha256:
            exact = self.catalog.find_stored_sha256(sha256, deleted=True)
            if exact is not None:
                return Match.of_row(exact, 0, True)
        variants = self.variant_distance and hashes
        values = {"phash": phash}
        if variants:
            values.update((kind, value) for kind, value in hashes.items() if kind in self._codes)
        queries = sorted(set(values.values()))
        radius = max(self.max_distance, self.variant_distance) if variants else self.max_distance
        with self._lock:
            found_of = dict(zip(queries, self.index.query_batch([int(v, 16) for v in queries], radius), strict=True))
        # Full phash against full phashes first (sorted by distance, then insertion).
        matches = [(d, key >> 4) for d, key in found_of[phash] if key & 15 == 0 and d <= self.max_distance]
        if not matches and variants:
            found: dict[int, int] = {}
            colour = bytes.fromhex(hashes.get(COLOUR_KIND, ""))
            for mine, value in values.items():
                partners = self._partners[mine]
                for distance, key in found_of[value]:
                    row_id = key >> 4
                    if (
                        distance <= self.variant_distance
                        and key & 15 in partners
                        and _same_colour(colour, self.colours.get(row_id, b""))
                    ):
                        found[row_id] = min(distance, found.get(row_id, HASH_BITS))
            matches = sorted(((d, row_id) for row_id, d in found.items()), key=lambda m: m[0])
        for distance, row_id in matches:
            row = self.catalog.get(row_id)
            # A row replaced by a larger copy is now a duplicate: its hash still counts, and
            # the image that stands for it is the one it points to.
            if row is not None and row["status"] != "stored" and row["duplicate_of"]:
                row = self.catalog.find_stored_path(row["duplicate_of"])
            if row is not None and (row["status"] == "stored" or row["reason"] == REVIEW_DELETE):
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
            of a ``MATCH_PAIRS`` pair (default 8; 0 turns variants off). At 8 bits the copies
            of ``benchmarks/dedupe_quality`` are caught 91% of the time with no false match
            among the 78,606 pairs of distinct hymenoptera photos. Each image is compared
            through 16 pairs, so the chance rate for unrelated hashes is ~16 x 3.0e-10 per
            pair of images (see README for the figures).
        DEDUPE_HASH: the imagehash hash (``HASH_FUNCTIONS``: ``phash``, the default, ``dhash``,
            ``average_hash`` or ``whash``), 64 bits, for the image and its windows. The
            distances above were measured for phash. Changing it on an existing dataset
            rehashes its stored images when the crawl opens it (hashes of two kinds are never
            compared); crawls writing one dataset at the same time must use the same hash.

    Hashes the item's ``image``, or takes the hashes verify computed in a worker process
    (``image_hashes``: the same ``hashes_of``, same recipe). Sets ``phash``, ``hashes`` (the
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
        ValueError: on a distance outside [0, 64) or an unknown ``DEDUPE_HASH`` (the crawl
            does not start).
        DropItem: with the duplicate reason.
    """

    MAX_DISTANCE = 6
    VARIANT_DISTANCE = 8

    def __init__(
        self,
        crawler: Crawler,
        *,
        dataset_dir: Path,
        max_distance: int,
        variant_distance: int = VARIANT_DISTANCE,
        hash_name: str = DEFAULT_HASH,
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
        max_distance = settings.getint("DEDUPE_MAX_DISTANCE", cls.MAX_DISTANCE)
        variant_distance = settings.getint("DEDUPE_VARIANT_DISTANCE", cls.VARIANT_DISTANCE)
        for name, value in (("DEDUPE_MAX_DISTANCE", max_distance), ("DEDUPE_VARIANT_DISTANCE", variant_distance)):
            if not 0 <= value < HASH_BITS:
                raise ValueError(f"{name} must be in [0, {HASH_BITS}) bits, got {value}")
        hash_name = settings.get("DEDUPE_HASH", DEFAULT_HASH)
        hash_recipe(hash_name)  # ValueError naming the valid hashes
        return cls(
            crawler,
            dataset_dir=Path(dataset_dir),
            max_distance=max_distance,
            variant_distance=variant_distance,
            hash_name=hash_name,
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
        # Verify hands on the canonical image, or, when it ran in a worker process, its hashes.
        image = adapter.pop("image", None)
        computed = adapter.pop("image_hashes", None)
        if image is None and computed is None:
            raise DropItem("not_verified")  # verify must run first; a configuration error
        hashes, seen_id, match = await run_in_thread(self._decide, computed or image, adapter["sha256"])
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

    def _decide(
        self, image: Image.Image | Mapping[str, str], sha256: str
    ) -> tuple[dict[str, str], int, Match | None]:
        assert self.hashes is not None
        if isinstance(image, Mapping):
            hashes = dict(image)
        else:
            hashes = hashes_of(image, self.hash_name, variants=bool(self.variant_distance))
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
