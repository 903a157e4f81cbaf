"""The in-memory index of a catalog's stored perceptual hashes, kept up to date (dedupe's lookup).

Filled from the catalog's ``stored`` rows (and rows a person deleted in review, so their copies
are rejected), then topped up before every decision with rows committed since, by this crawl's
store stage or by another process writing the same dataset; nothing is read when no other
connection committed since the last look (``Catalog.version``). Imports no Scrapy.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from crawler.catalog import REVIEW_DELETE, Catalog
from crawler.hashindex import MultiIndexHashIndex
from crawler.images.hashing import COLOUR_KIND, HASH_BITS, VARIANTS
from crawler.images.matching import MATCH_PAIRS, Match, same_colour

__all__ = ["CatalogHashIndex"]


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
                        and same_colour(colour, self.colours.get(row_id, b""))
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
