"""The in-memory index of a catalog's stored perceptual hashes, kept up to date (dedupe's lookup).

Filled from the catalog's ``stored`` rows (and rows a person deleted in review, so their copies
are rejected), then topped up before every decision with rows committed since, by this crawl's
store stage or by another process writing the same dataset; nothing is read when no other
connection committed since the last look (``Catalog.version``). Imports no Scrapy.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from crawler.catalog import REVIEW_DELETE, Catalog
from crawler.hashindex import MultiIndexHashIndex, WordsHashIndex
from crawler.images.hashing import COLOUR_KIND, HASH_BITS, VARIANTS
from crawler.images.matching import (
    MATCH_PAIRS,
    WINDOW_LOOKS,
    WINDOW_PAIRS,
    DedupeRule,
    Match,
    pdq_verdict,
    same_colour,
    window_verdict,
)
from crawler.images.pdq import DIHEDRAL_KINDS, FULL, PDQ_BITS, UNCAPTIONED, WINDOWS

__all__ = ["CatalogHashIndex", "PdqCatalogIndex", "catalog_index"]

# At most this many candidates of one image get a second look, plain or aligned (nearest first):
# a flat or near-white picture can be within reach of many stored ones, each look a catalog
# read (and an aligned look 10-20 ms of CPU).
MAX_LOOKS = 16


def catalog_index(catalog: Catalog, rule: DedupeRule) -> CatalogHashIndex | PdqCatalogIndex:
    """The index for ``rule``'s hash: ``PdqCatalogIndex`` for pdq, else ``CatalogHashIndex``."""
    if rule.pdq:
        return PdqCatalogIndex(catalog, rule)
    return CatalogHashIndex(catalog, rule.max_distance, rule.variant_distance)


def _exact(catalog: Catalog, known: dict[str, int], sha256: str) -> Match | None:
    """The stored image with these downloaded bytes, or the one an earlier duplicate with
    these bytes was judged a copy of (so a re-crawl decides as the first crawl did)."""
    # Most items are new: the in-memory map answers them without a query; a hit is
    # confirmed in the catalog (the row may have been replaced or reviewed away since).
    if sha256 in known:
        exact = catalog.find_stored_sha256(sha256, deleted=True)
        if exact is not None:
            return Match.of_row(exact, 0, True)
    decided = catalog.find_decided_sha256(sha256)
    if decided is not None:
        return Match.of_row(decided, decided["decided_distance"] or 0, False)
    return None


class _RefreshingIndex:
    """What both catalog indexes share: follow the catalog's ``stored`` rows (and their extra
    hashes) by id, reading nothing when no commit happened since the last look.

    Subclasses set ``catalog``, ``ids_of_sha256``, ``stored``, ``last_id``, ``_version`` and
    ``_lock`` in ``__init__`` and say whether the extra hashes are read (``_reads_hashes``)
    and what new rows and their extra hashes add (``_add``: rows by id, then hashes).
    """

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
            rows = self.catalog.stored_since(since, deleted=True)
            if not rows:
                return self.last_id
            for row in rows:
                if row["sha256"]:
                    self.ids_of_sha256.setdefault(row["sha256"], row["id"])
                self.stored += row["status"] == "stored"
            self.last_id = rows[-1]["id"]
            last = self.last_id
            extra = self.catalog.hashes_since(since, deleted=True) if self._reads_hashes() else []
            self._add(rows, [row for row in extra if row["image_id"] <= last])
            return self.last_id


class CatalogHashIndex(_RefreshingIndex):
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

    def _reads_hashes(self) -> bool:
        return bool(self.variant_distance)

    def _add(self, rows: list[Any], hash_rows: list[Any]) -> None:
        for row in rows:
            if row["phash"]:
                self.index.add(int(row["phash"], 16), row["id"] * 16)
        for row in hash_rows:
            code = self._codes.get(row["kind"])
            if code:  # a variant (0 is phash, which lives in the images table)
                self.index.add(int(row["hash"], 16), row["image_id"] * 16 + code)
            elif row["kind"] == COLOUR_KIND:
                self.colours[row["image_id"]] = bytes.fromhex(row["hash"])

    def find(self, sha256: str, phash: str, hashes: Mapping[str, str] | None = None) -> Match | None:
        """The stored image this one duplicates: exact match first, else the nearest by full
        phash, else the nearest by a pair of variant hashes (``MATCH_PAIRS``)."""
        exact = _exact(self.catalog, self.ids_of_sha256, sha256)
        if exact is not None:
            return exact
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


def _standing_row(catalog: Catalog, row_id: int) -> Any:
    """The row that stands for hashed row ``row_id``: itself while stored (or deleted in
    review), else the stored image it was replaced by (``duplicate_of``); ``None`` when gone."""
    row = catalog.get(row_id)
    # A row replaced by a larger copy is now a duplicate: its hash still counts, and the image
    # that stands for it is the one it points to.
    if row is not None and row["status"] != "stored" and row["duplicate_of"]:
        row = catalog.find_stored_path(row["duplicate_of"])
    if row is not None and (row["status"] == "stored" or row["reason"] == REVIEW_DELETE):
        return row
    return None


class PdqCatalogIndex(_RefreshingIndex):
    """The catalog's stored hashes under the PDQ rule (``DedupeRule``, ``pdq_verdict``,
    ``window_verdict``), kept up to date like ``CatalogHashIndex``: the full-picture PDQ hashes
    and PDQ's ``WINDOWS`` in ``index`` (a 256-bit ``WordsHashIndex`` under ``row_id * 16 +
    kind``), the full-picture ones again in ``full`` (with windows on); imagehash's phash of
    the picture and of its ``VARIANTS`` in ``windows`` (a 64-bit ``WordsHashIndex``, same
    keys), with the colour signatures in ``colours``.

    A picture's 256-bit hashes are one search, each at its own radius: the identity hash at
    the widest distance it needs (``look_distance`` for the second look, ``max_distance``,
    ``variant_distance`` for its window pairs; past ``index``'s tables its look reach is a
    second search, in ``full``), the other 7 dihedral hashes at
    ``max_distance`` (flips and rotations), the PDQ windows at ``variant_distance``
    (``WINDOW_PAIRS``); every hit is then kept at its own (query kind, stored kind) distance,
    in one numpy comparison. Its 9 phash windows are a second search, at ``window_distance`` of
    64 bits (``MATCH_PAIRS``, the colour gate). The looks are read from the catalog when needed
    (``Catalog.look``), at most ``MAX_LOOKS`` per picture, nearest PDQ candidates first, then an
    aligned look at each of the ``WINDOW_LOOKS`` nearest window pairs of a stored picture.
    Thread-safe: ``refresh`` and ``find`` may run in worker threads.
    """

    KINDS: tuple[str, ...] = (FULL, *WINDOWS, UNCAPTIONED)  # a kind's code is its position here
    WINDOW_KINDS: tuple[str, ...] = ("phash", *VARIANTS)  # codes of the 64-bit index

    def __init__(self, catalog: Catalog, rule: DedupeRule) -> None:
        self.catalog = catalog
        self.rule = rule
        stored = catalog.count_stored()
        kinds = len(self.KINDS) if rule.variant_distance else 1
        self.index = WordsHashIndex(
            max(rule.max_distance, rule.variant_distance, rule.look_distance), bits=PDQ_BITS, expected=2 * stored * kinds
        )
        # The full-picture hashes again, alone, for the identity's wide (second look) query
        # once ``index`` has left its tables (filled then): candidates then cost more than
        # calls, and the windows would triple them (100,000 random pictures: 1.6 ms per
        # picture with this index, 2.3 without).
        self.full = WordsHashIndex(max(rule.max_distance, rule.look_distance), bits=PDQ_BITS) if kinds > 1 else None
        self.windows = WordsHashIndex(
            max(1, rule.coarse_distance), bits=HASH_BITS, expected=2 * stored * len(self.WINDOW_KINDS)
        )
        self.colours: dict[int, bytes] = {}
        self._codes = {kind: code for code, kind in enumerate(self.KINDS)}
        self._window_codes = {kind: code for code, kind in enumerate(self.WINDOW_KINDS)}
        pairs = {*WINDOW_PAIRS, *((b, a) for a, b in WINDOW_PAIRS)}
        self._partners = {
            mine: frozenset(self._codes[theirs] for m, theirs in pairs if m == mine) for mine in self.KINDS
        }
        phash_pairs = {*MATCH_PAIRS, *((b, a) for a, b in MATCH_PAIRS)}
        self._window_partners = {
            mine: frozenset(self._window_codes[theirs] for m, theirs in phash_pairs if m == mine)
            for mine in self.WINDOW_KINDS
        }
        self._limits = self._pdq_limits()
        self._row_limits: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._coarse_radii = np.full(len(self.WINDOW_KINDS), rule.coarse_distance, dtype=np.int64)
        self._window_limits = np.full((len(self.WINDOW_KINDS), 16), -1, dtype=np.int64)
        for kind, code in self._window_codes.items():
            self._window_limits[code, list(self._window_partners[kind])] = rule.coarse_distance
        self.ids_of_sha256: dict[str, int] = {}
        self.stored = 0
        self.last_id = 0
        self._version: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def _pdq_limits(self) -> np.ndarray:
        """``(8 + windows, 16)``: the largest distance at which a hit of query row ``q`` on a
        stored hash of kind code ``c`` is a candidate (-1: never). Rows: the 8 dihedral hashes
        (identity first), then the query's ``KINDS[1:]`` windows."""
        rule = self.rule
        limits = np.full((len(DIHEDRAL_KINDS) + len(self.KINDS) - 1, 16), -1, dtype=np.int64)
        limits[: len(DIHEDRAL_KINDS), 0] = rule.max_distance
        if rule.look_distance > rule.max_distance:  # the identity's wide reach, for the second look
            limits[0, 0] = rule.look_distance
        if rule.variant_distance:
            limits[0, list(self._partners[FULL])] = rule.variant_distance  # FULL's window pairs
            for row, kind in enumerate(self.KINDS[1:], start=len(DIHEDRAL_KINDS)):
                limits[row, list(self._partners[kind])] = rule.variant_distance
        return limits

    def _limits_of(self, rows: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``_limits`` of these query rows and each row's search radius (kept: a crawl asks
        the same rows for nearly every picture)."""
        found = self._row_limits.get(rows)
        if found is None:
            limits = self._limits[list(rows)]
            found = self._row_limits[rows] = (limits, limits.max(axis=1))
        return found

    def _reads_hashes(self) -> bool:
        return bool(self.rule.variant_distance or self.rule.coarse_distance)

    def _add(self, rows: list[Any], hash_rows: list[Any]) -> None:
        """Rows' full-picture PDQ and phash, then their windows: one ``add_many`` per index."""
        pdq_values = [row["pdq"] for row in rows if row["pdq"]]
        pdq_keys = [row["id"] * 16 for row in rows if row["pdq"]]
        window_values: list[str] = []
        window_keys: list[int] = []
        if self.rule.coarse_distance:
            window_values = [row["phash"] for row in rows if row["phash"]]
            window_keys = [row["id"] * 16 for row in rows if row["phash"]]
        for row in hash_rows:
            kind = row["kind"]
            code = self._codes.get(kind)
            if code:
                if self.rule.variant_distance:
                    pdq_values.append(row["hash"])
                    pdq_keys.append(row["image_id"] * 16 + code)
                continue
            if not self.rule.coarse_distance:
                continue
            code = self._window_codes.get(kind)
            if code:  # 0 is the picture's phash, in the images table
                window_values.append(row["hash"])
                window_keys.append(row["image_id"] * 16 + code)
            elif kind == COLOUR_KIND:
                self.colours[row["image_id"]] = bytes.fromhex(row["hash"])
        if pdq_values:
            words = self.index.words_of(pdq_values)
            self.index.add_many(words, pdq_keys)
            if self.full is not None and len(self.full):
                fulls = [n for n, key in enumerate(pdq_keys) if key & 15 == 0]
                self.full.add_many(words[fulls], [pdq_keys[n] for n in fulls])
            elif self.full is not None and not self.index.tabled:  # filled when first needed
                every, keys = self.index.stored()
                first = np.flatnonzero(keys & 15 == 0)
                self.full.add_many(every[first], keys[first].tolist())
        if window_values:
            self.windows.add_many(self.windows.words_of(window_values), window_keys)

    def find(self, sha256: str, hashes: Mapping[str, Any]) -> Match | None:
        """The stored image this picture duplicates: the same bytes first, else the nearest
        PDQ candidate ``pdq_verdict`` accepts, else the nearest phash window candidate
        ``window_verdict`` accepts. ``hashes`` is ``hashes_of(image, "pdq")``. The match's
        ``distance`` is in bits of the hash that matched: of 256 for PDQ, of 64 for a phash
        window pair."""
        exact = _exact(self.catalog, self.ids_of_sha256, sha256)
        if exact is not None:
            return exact
        rule = self.rule
        # Query rows: the 8 dihedral hashes, then the query's PDQ windows (rows of _limits).
        rows = list(range(len(DIHEDRAL_KINDS)))
        values = [hashes[kind] for kind in DIHEDRAL_KINDS]
        if rule.variant_distance:
            for row, kind in enumerate(self.KINDS[1:], start=len(DIHEDRAL_KINDS)):
                if kind in hashes:
                    rows.append(row)
                    values.append(hashes[kind])
        limits, radii = self._limits_of(tuple(rows))
        coarse = [kind for kind in self.WINDOW_KINDS if kind in hashes] if rule.coarse_distance else []
        with self._lock:
            if self.full is not None and not self.index.tabled and limits[0, 0] > rule.max_distance:
                # At scale: the identity's wide reach from the full pictures alone.
                radii = radii.copy()
                radii[0] = max(rule.max_distance, rule.variant_distance)
                which, keys, distances = self.index.search(values, radii)
                _, wide_keys, wide_distances = self.full.search(values[:1], limits[0, :1])
                which = np.concatenate([which, np.zeros(len(wide_keys), dtype=np.int64)])
                keys = np.concatenate([keys, wide_keys])
                distances = np.concatenate([distances, wide_distances])
            else:
                which, keys, distances = self.index.search(values, radii)
            if coarse:
                coarse_which, coarse_keys, coarse_distances = self.windows.search(
                    [hashes[kind] for kind in coarse], self._coarse_radii[: len(coarse)]
                )
        # Each hit at its own (query kind, stored kind) distance; most pictures have none.
        kept = np.flatnonzero(distances <= limits[which, keys & 15]) if which.size else which
        # (distance, transform, (query kind, stored kind), row id), nearest first.
        found = set()
        for n, key, distance in zip(which[kept].tolist(), keys[kept].tolist(), distances[kept].tolist(), strict=True):
            stored_kind = self.KINDS[key & 15]
            if n < len(DIHEDRAL_KINDS):
                found.add((distance, n, (FULL, stored_kind), key >> 4))
            else:
                found.add((distance, 0, (self.KINDS[rows[n] - len(DIHEDRAL_KINDS) + 1], stored_kind), key >> 4))
        quality = int(hashes.get("pdq_quality", 0))
        query_look = hashes.get("look") or b""
        looks = 0
        decided: set[int] = set()
        for distance, transform, kinds, row_id in sorted(found, key=lambda c: (c[0], c[1])):
            row = self.catalog.get(row_id)
            if row is None:
                continue
            sure = pdq_verdict(rule, distance, transform, kinds, (quality, row["pdq_quality"] or 0), None)
            if not sure:
                if row_id in decided or looks >= MAX_LOOKS or not rule.look_distance:
                    continue
                looks += 1
                decided.add(row_id)
                pair = (query_look, self.catalog.look(row_id) or b"")
                if not pdq_verdict(rule, distance, transform, kinds, (quality, row["pdq_quality"] or 0), pair):
                    continue
            standing = _standing_row(self.catalog, row_id)
            if standing is not None:
                return Match.of_row(standing, distance, False)
        if not coarse or not coarse_which.size:
            return None
        # phash windows: the WINDOW_LOOKS nearest pairs of each stored picture that agrees on
        # colour, as ``window_candidates`` orders them; pictures by their nearest pair.
        codes = np.array([self._window_codes[kind] for kind in coarse], dtype=np.int64)
        kept = np.flatnonzero(coarse_distances <= self._window_limits[codes[coarse_which], coarse_keys & 15])
        if not kept.size:
            return None
        colour = bytes.fromhex(hashes.get(COLOUR_KIND, ""))
        pairs_of: dict[int, list[tuple[int, tuple[str, str]]]] = {}
        for n, key, distance in zip(
            coarse_which[kept].tolist(), coarse_keys[kept].tolist(), coarse_distances[kept].tolist(), strict=True
        ):
            pairs_of.setdefault(key >> 4, []).append((distance, (coarse[n], self.WINDOW_KINDS[key & 15])))
        nearest = sorted((sorted(pairs)[:WINDOW_LOOKS], row_id) for row_id, pairs in pairs_of.items())
        for pairs, row_id in nearest:
            # A row's colour is written once, before its windows can be found (one refresh).
            if not same_colour(colour, self.colours.get(row_id, b"")):
                continue
            look = None
            for distance, kinds in pairs:
                if looks >= MAX_LOOKS:
                    return None
                looks += 1
                look = (self.catalog.look(row_id) or b"") if look is None else look
                if window_verdict(rule, kinds, (query_look, look)):
                    standing = _standing_row(self.catalog, row_id)
                    if standing is not None:
                        return Match.of_row(standing, distance, False)
                    break
        return None
