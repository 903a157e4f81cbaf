"""Near-duplicate indexes over perceptual hashes (64-bit, and 256-bit PDQ): multi-index hashing (MIH) in numpy.

Why MIH and not a BK-tree or a linear scan:

* A linear scan costs one popcount per stored hash per query: at a million images every new
  image would touch a million hashes, and checking a million new images is 10^12 popcounts.
* A BK-tree prunes well only for small radii; at 8 bits of 64 it still visits a large part of
  the tree, one Python object per node, and cannot be queried in batches.
* MIH (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing",
  CVPR 2012) splits each hash into ``m`` disjoint substrings and keeps one table per
  substring. By the pigeonhole principle, two hashes within ``d`` bits agree on at least one
  substring to within ``floor(d / m)`` bits; the paper's sharper form (its section 4) writes
  ``d = m * r + a`` and needs radius ``r`` only in the first ``a + 1`` substrings and ``r - 1``
  in the others. A query enumerates, per substring, the keys within that radius
  (``sum_{k<=r} C(b, k)`` keys for a ``b``-bit substring), looks each up in O(1), and checks
  only those candidates with a full Hamming distance.

Layout. Each substring table is a compressed bucket array (CSR): ``offsets[key]`` to
``offsets[key + 1]`` delimit the stored hashes whose substring equals ``key`` in a copy of the
hashes sorted by that substring, so a lookup is two array reads and the candidates of one key
are contiguous. Substrings up to 24 bits are directly addressed (an ``offsets`` array of
``2**b + 1`` int32); wider ones fall back to ``searchsorted`` on the sorted substring column.
Everything is numpy, so ``query_many`` checks a million queries in whole-array operations
(key enumeration, bucket gathers, XOR and ``np.bitwise_count``) a few thousand queries at a time.

Incremental adds (the dedupe pipeline adds one hash per stored image) go to a small unsorted
buffer that every query scans with one vectorised popcount; the buffer is merged into the
tables when it reaches ``max(256, n / 32)`` hashes, so a merge (a sort of all ``n``) happens
every ``n / 32`` adds and costs O(1) amortised sorts of 32 entries per add.

Substring count. The paper's rule ``m = bits / log2(n)`` keeps buckets near one hash: at a
million hashes ``m = 3`` (22, 21, 21 bits; 4 M buckets each), so a query at ``d = 8`` looks up
3 x 254 keys and checks about 180 candidates instead of a million. ``for_size`` picks ``m``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np

__all__ = ["MultiIndexHashIndex", "WordsHashIndex", "hamming"]

# Widest substring given a directly addressed bucket array (2**24 + 1 int32 = 64 MiB).
_DIRECT_BITS = 24
# Enumerated keys handled per vectorised block: bounds the temporary arrays to ~100 MB.
_BLOCK_KEYS = 1 << 23


def hamming(a: int, b: int) -> int:
    """Hamming distance in bits between two hashes given as non-negative ints."""
    return (a ^ b).bit_count()


class _Table:
    """One substring table: stored positions sorted by substring value, with bucket offsets."""

    __slots__ = ("counts", "hashes", "offsets", "order", "values")

    def __init__(self, parts: np.ndarray, hashes: np.ndarray, width: int) -> None:
        self.order = np.argsort(parts, kind="stable").astype(np.int64)
        self.hashes = hashes[self.order]  # contiguous candidates per bucket
        if width <= _DIRECT_BITS:
            counts = np.bincount(parts, minlength=1 << width)
            # Bucket sizes in the smallest type that holds them: most lookups find an empty
            # bucket, and a 4 MiB uint8 array stays in cache where int64 offsets would not.
            peak = int(counts.max(initial=0))
            self.counts = counts.astype(np.uint8 if peak < 2**8 else np.uint16 if peak < 2**16 else np.int64)
            self.offsets = np.zeros(1 << width, dtype=np.int32 if len(parts) < 2**31 else np.int64)
            np.cumsum(counts[:-1], out=self.offsets[1:])
            self.values = None
        else:
            self.counts = self.offsets = None
            self.values = parts[self.order]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Bucket sizes of ``keys``, and a function giving the start (in the sorted copy) of
        the buckets at the given indices of ``keys``."""
        if self.counts is not None:
            return self.counts[keys], lambda hit: self.offsets[keys[hit]].astype(np.int64)
        starts = np.searchsorted(self.values, keys, side="left")
        ends = np.searchsorted(self.values, keys, side="right")
        return ends - starts, lambda hit: starts[hit]


class MultiIndexHashIndex:
    """Map perceptual hashes to keys and find every stored hash within a Hamming radius.

    Args:
        max_distance: the largest radius a query accepts, in bits (>= 0). The enumeration
            radius per substring is derived from it once (see the module docstring).
        bits: hash length in bits, at most 64 (64 for imagehash's ``phash`` with ``hash_size=8``).
        substrings: number of substrings ``m`` (1 <= m <= bits). More substrings mean smaller
            per-substring radii but fuller buckets; ``bits / log2(n)`` is the paper's optimum
            (``for_size``).

    Keys are any hashable values; the same hash may be added under several keys. Memory:
    8 bytes per hash, plus per substring 16 bytes per hash (sorted copy and positions) and
    4 bytes per bucket (``2**b``), plus the keys (an int64 array while every key is an int).

    Raises:
        ValueError: on a negative distance or an impossible ``bits``/``substrings`` pair.
    """

    def __init__(self, max_distance: int, *, bits: int = 64, substrings: int = 4) -> None:
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0 bits, got {max_distance}")
        if not 1 <= bits <= 64:
            raise ValueError(f"bits must be in [1, 64], got {bits}")
        if not 1 <= substrings <= bits:
            raise ValueError(f"substrings must be in [1, {bits}], got {substrings}")
        self.max_distance = max_distance
        self.bits = bits
        self.substrings = substrings
        # Split as evenly as possible: the first (bits % m) substrings get one extra bit.
        base, extra = divmod(bits, substrings)
        self._widths = [base + (1 if i < extra else 0) for i in range(substrings)]
        self._shifts = [sum(self._widths[:i]) for i in range(substrings)]
        # Norouzi et al. sec. 4: d = m*r + a; radius r in the first a+1 substrings, r-1 after.
        self._radii = self._substring_radii(max_distance)
        self._flips = [
            np.array(_flip_masks(width, radius), dtype=np.uint32 if width <= 32 else np.uint64)
            for width, radius in zip(self._widths, self._radii, strict=True)
        ]
        self._hashes = np.empty(0, dtype=np.uint64)  # merged hashes, by insertion position
        self._keys: np.ndarray = np.empty(0, dtype=np.int64)
        self._tables: list[_Table] = []
        # The unmerged buffer: hashes in a preallocated array (scanned with one popcount).
        self._pending = np.empty(256, dtype=np.uint64)
        self._pending_keys: list[Hashable] = []
        #: Stored hashes compared in full by the last ``query`` (table candidates plus the
        #: unmerged buffer; for tests and benchmarks).
        self.last_checked = 0

    @classmethod
    def for_size(cls, max_distance: int, expected: int, *, bits: int = 64) -> MultiIndexHashIndex:
        """An index whose substring count suits about ``expected`` hashes.

        Uses the paper's rule ``m = bits / log2(n)`` (substrings as wide as log2 of the size,
        so buckets hold about one hash), kept within [3, 8] so that every substring is directly
        addressed: 3 substrings at a million hashes, 4 at 65,536, 6 at a thousand.
        """
        size = max(expected, 1024)
        substrings = max(3, min(8, round(bits / math.log2(size))))
        return cls(max_distance, bits=bits, substrings=min(substrings, bits))

    # -- adding ------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of (hash, key) pairs added."""
        return len(self._hashes) + len(self._pending_keys)

    def add(self, hash_value: int, key: Hashable) -> None:
        """Store ``key`` under ``hash_value`` (an int in ``[0, 2**bits)``); amortised O(1).

        Raises:
            ValueError: if the hash does not fit in ``bits``.
        """
        if not 0 <= hash_value < (1 << self.bits):
            raise ValueError(f"hash {hash_value:#x} does not fit in {self.bits} bits")
        count = len(self._pending_keys)
        if count == self._pending.size:
            self._pending = np.concatenate([self._pending, np.empty_like(self._pending)])
        self._pending[count] = hash_value
        self._pending_keys.append(key)
        if count + 1 >= max(256, len(self._hashes) // 32):
            self.flush()

    def add_many(self, hashes: Sequence[int] | np.ndarray, keys: Iterable[Hashable] | None = None) -> None:
        """Store many hashes at once (one merge); ``keys`` default to insertion positions.

        Raises:
            ValueError: if ``keys`` and ``hashes`` differ in length or a hash does not fit.
        """
        values = np.asarray(hashes, dtype=np.uint64).ravel()
        if self.bits < 64 and values.size and int(values.max()) >> self.bits:
            raise ValueError(f"a hash does not fit in {self.bits} bits")
        start = len(self)
        key_list = list(range(start, start + values.size)) if keys is None else list(keys)
        if len(key_list) != values.size:
            raise ValueError(f"{values.size} hashes but {len(key_list)} keys")
        self.flush(values, key_list)

    def flush(self, more: np.ndarray | None = None, more_keys: list[Hashable] | None = None) -> None:
        """Merge the unsorted buffer (and ``more``) into the substring tables now."""
        new_hashes = self._pending[: len(self._pending_keys)].copy()
        new_keys: list[Hashable] = self._pending_keys
        if more is not None:
            new_hashes = np.concatenate([new_hashes, more])
            new_keys = [*new_keys, *(more_keys or [])]
        self._pending_keys = []
        if not new_hashes.size:
            return
        self._hashes = np.concatenate([self._hashes, new_hashes])
        self._keys = _append_keys(self._keys, new_keys)
        self._tables = [
            _Table(self._parts(self._hashes, i), self._hashes, width)
            for i, width in enumerate(self._widths)
        ]

    def _parts(self, hashes: np.ndarray, i: int) -> np.ndarray:
        mask = np.uint64((1 << self._widths[i]) - 1)
        parts = (hashes >> np.uint64(self._shifts[i])) & mask
        return parts.astype(np.uint32) if self._widths[i] <= 32 else parts

    # -- querying ----------------------------------------------------------------------------

    def __contains__(self, hash_value: int) -> bool:
        return bool(self.query(hash_value, 0))

    def query(self, hash_value: int, max_distance: int | None = None) -> list[tuple[int, Hashable]]:
        """Return ``(distance, key)`` for every stored hash within ``max_distance`` bits.

        Sorted by distance, then insertion order. ``max_distance`` defaults to the index's and
        may not exceed it (the enumeration radius was fixed at construction).

        Raises:
            ValueError: if ``max_distance`` is larger than the index's ``max_distance``.
        """
        return self.query_batch([hash_value], max_distance)[0]

    def query_batch(
        self, hash_values: Sequence[int], max_distance: int | None = None
    ) -> list[list[tuple[int, Hashable]]]:
        """``[query(h, max_distance) for h in hash_values]`` in one vectorised search.

        For a handful of queries against a growing index (the dedupe stage asks each index
        for several hashes of one image): unlike ``query_many`` it leaves the unmerged buffer
        as it is, and it returns keys. ``last_checked`` counts the candidates of all queries.

        Raises:
            ValueError: if ``max_distance`` is larger than the index's ``max_distance``.
        """
        radius = self._radius(max_distance)
        queries = np.array(hash_values, dtype=np.uint64).ravel()
        found, positions, distances, checked = self._search(queries, radius)
        entries: list[list[tuple[int, int, Hashable]]] = [[] for _ in range(queries.size)]
        for n, distance, position in zip(found.tolist(), distances.tolist(), positions.tolist(), strict=True):
            entries[n].append((distance, position, self._key(position)))
        # The unmerged buffer: a short linear scan, all queries at once.
        count = len(self._pending_keys)
        if count and queries.size:
            offset = len(self._hashes)
            pending = np.bitwise_count(self._pending[None, :count] ^ queries[:, None])
            for n, m in zip(*(axis.tolist() for axis in np.nonzero(pending <= radius)), strict=True):
                entries[n].append((int(pending[n, m]), offset + m, self._pending_keys[m]))
        self.last_checked = checked + count * queries.size
        result = []
        for found_of_query in entries:
            found_of_query.sort(key=lambda entry: (entry[0], entry[1]))
            result.append([(distance, key) for distance, _, key in found_of_query])
        return result

    def query_many(
        self, hashes: Sequence[int] | np.ndarray, max_distance: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query, stored) pair within ``max_distance`` bits, for many queries at once.

        Args:
            hashes: ``(Q,)`` query hashes (uint64 or ints).
            max_distance: radius in bits, at most the index's (default: the index's).

        Returns:
            ``(query_index, position, distance)``: three int64 arrays of equal length, sorted by
            query then distance; ``position`` is the insertion position of the stored hash
            (``keys_at`` maps positions to keys). The unmerged buffer is merged first.

        Raises:
            ValueError: if ``max_distance`` is larger than the index's ``max_distance``.
        """
        radius = self._radius(max_distance)
        self.flush()
        queries = np.asarray(hashes, dtype=np.uint64).ravel()
        q, pos, dist, _ = self._search(queries, radius)
        order = np.lexsort((pos, dist, q))
        return q[order], pos[order], dist[order]

    def keys_at(self, positions: np.ndarray | Sequence[int]) -> list[Hashable]:
        """The keys stored at these insertion positions (from ``query_many``)."""
        self.flush()
        return self._keys[np.asarray(positions, dtype=np.int64)].tolist()

    def nearest(self, hash_value: int) -> tuple[int, Hashable] | None:
        """The closest stored ``(distance, key)`` within ``max_distance`` bits, or ``None``."""
        matches = self.query(hash_value)
        return matches[0] if matches else None

    def __iter__(self) -> Iterator[tuple[int, Hashable]]:
        for position in range(len(self._hashes)):
            yield int(self._hashes[position]), self._key(position)
        yield from zip(self._pending[: len(self._pending_keys)].tolist(), self._pending_keys, strict=True)

    def nbytes(self) -> int:
        """Bytes held by the numpy arrays of the index (hashes, tables, integer keys)."""
        total = self._hashes.nbytes + self._keys.nbytes
        for table in self._tables:
            total += table.order.nbytes + table.hashes.nbytes
            if table.offsets is not None:
                total += table.offsets.nbytes + table.counts.nbytes
            else:
                total += table.values.nbytes
        return total

    # -- internals ---------------------------------------------------------------------------

    def _radius(self, max_distance: int | None) -> int:
        radius = self.max_distance if max_distance is None else max_distance
        if radius > self.max_distance:
            raise ValueError(f"index built for at most {self.max_distance} bits, asked for {radius}")
        return radius

    def _substring_radii(self, distance: int) -> list[int]:
        """Norouzi et al. sec. 4: ``d = m*r + a``; radius ``r`` in the first ``a + 1``
        substrings, ``r - 1`` in the others."""
        r, a = divmod(distance, self.substrings)
        return [r if i <= a else r - 1 for i in range(self.substrings)]

    def _key(self, position: int) -> Hashable:
        key = self._keys[position]
        return key.item() if isinstance(key, np.generic) else key

    def _search(
        self, queries: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Matches of queries in the merged tables: (query, position, distance, candidates
        checked), each (query, position) pair once."""
        empty = np.empty(0, dtype=np.int64)
        if not self._tables or not queries.size:
            return empty, empty, empty, 0
        found_q, found_p, found_d = [], [], []
        checked = 0
        # A query at a smaller radius than the index's enumerates only the masks it needs:
        # the masks are sorted by bit count, so those within a radius are a prefix.
        masks = [
            sum(math.comb(width, k) for k in range(radius_i + 1))
            for width, radius_i in zip(self._widths, self._substring_radii(radius), strict=True)
        ]
        for i in range(len(self._tables)):
            if not masks[i]:
                continue  # radius -1: this substring need not be searched (d < m)
            parts = self._parts(queries, i)
            # Sorted queries make the bucket reads of one flip mask walk memory in order; a
            # handful (one image's hashes) gain nothing from it but the call.
            by_part = np.argsort(parts, kind="stable") if queries.size > 64 else np.arange(queries.size)
            block = max(1, _BLOCK_KEYS // masks[i])
            for start in range(0, queries.size, block):
                chosen = by_part[start : start + block]
                q, p, d, n = self._search_table(i, queries[chosen], parts[chosen], radius, masks[i])
                found_q.append(chosen[q])
                found_p.append(p)
                found_d.append(d)
                checked += n
        if not found_q:
            return empty, empty, empty, checked
        q = np.concatenate(found_q)
        p = np.concatenate(found_p)
        d = np.concatenate(found_d)
        # A pair close in several substrings was found once per substring: keep one.
        if len(found_q) > 1 and q.size:
            _, first = np.unique(q * max(len(self._hashes), 1) + p, return_index=True)
            q, p, d = q[first], p[first], d[first]
        return q, p, d, checked

    def _search_table(
        self, i: int, queries: np.ndarray, parts: np.ndarray, radius: int, masks: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Candidates of ``queries`` in substring table ``i`` (its first ``masks`` flip masks),
        checked in full."""
        table, flips = self._tables[i], self._flips[i][:masks]
        # Flip-major layout: for one mask, consecutive keys follow the sorted query parts.
        keys = (flips[:, None] ^ parts[None, :].astype(flips.dtype)).ravel()
        counts, starts = table.lookup(keys)
        hit = np.flatnonzero(counts)
        counts = counts[hit].astype(np.int64)
        starts = starts(hit)
        query_of = hit % queries.size
        total = int(counts.sum())
        # Expand every [start, start + count) into positions of the table's sorted copy.
        sorted_pos = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)
        query_idx = np.repeat(query_of, counts)
        distance = np.bitwise_count(table.hashes[sorted_pos] ^ queries[query_idx]).astype(np.int64)
        close = np.flatnonzero(distance <= radius)
        return query_idx[close], table.order[sorted_pos[close]], distance[close], total


def _append_keys(keys: np.ndarray, new: list[Hashable]) -> np.ndarray:
    """Append ``new`` to ``keys``: int64 while every key is an int, object dtype otherwise."""
    if keys.dtype != object and all(type(k) is int and -(2**63) <= k < 2**63 for k in new):
        return np.concatenate([keys, np.array(new, dtype=np.int64)])
    extra = np.empty(len(new), dtype=object)
    extra[:] = new
    return np.concatenate([keys.astype(object), extra])


def _flip_masks(width: int, radius: int) -> list[int]:
    """Every ``width``-bit XOR mask with at most ``radius`` bits set, fewest bits first
    (none for a negative radius)."""
    if radius < 0:
        return []
    masks = [0]
    for count in range(1, min(radius, width) + 1):
        for positions in itertools.combinations(range(width), count):
            mask = 0
            for position in positions:
                mask |= 1 << position
            masks.append(mask)
    return masks


def _bit_distances(xored: np.ndarray) -> np.ndarray:
    """Set bits of ``(..., words)`` uint64 XORs, summed over the last axis (int16): one
    addition per word, several times faster than ``sum(axis=-1)`` over so short an axis."""
    counts = np.bitwise_count(xored)
    total = counts[..., 0].astype(np.int16)
    for w in range(1, counts.shape[-1]):
        total += counts[..., w]
    return total


class WordsHashIndex:
    """Find every stored hash within a Hamming radius, for hashes of 64 bits or more (PDQ's
    256, and the 64-bit phash windows of the pdq recipe): multi-index hashing (Norouzi et al.
    2012, as above) on 16-bit substrings, every table in one directly addressed bucket array,
    so a batch of queries, each at its own radius, is one pass of whole-array numpy operations
    whatever its size.

    Two hashes within ``d = m * r + a`` bits (``m = bits / 16`` substrings, ``0 <= a < m``)
    agree to within ``r`` bits on one of their first ``a + 1`` substrings or to within ``r - 1``
    on one of the others (the paper's section 4; the module docstring): 31 bits of 256 leave
    one substring within 1 bit, 17 keys to look up in each of the 16 tables; 50 bits, 3 bits
    in 3 tables and 2 in the other 13 (697 and 137 keys); 8 bits of 64, 2 bits in 1 table and
    1 in the other 3. The candidates of all queries and tables are gathered at once, each
    checked on all bits. Why one array and not an index per 64-bit word: a crawl asks about 20
    hashes per new picture (8 flips and rotations, windows) against an index that is small for
    most of the crawl, so the fixed cost of a query (numpy calls, not candidates) decides the
    crawl's CPU (``benchmarks/neardup_index --per-image``: 0.4 ms per picture at 2,000 stored
    against 1.6 ms for per-word indexes; ``benchmarks/dedupe_decide`` for the whole decision).

    Past ``SMALL_LIMIT`` hashes a 16-bit bucket holds more than half a hash on average and the
    candidates, not the calls, cost: the index then moves to one ``MultiIndexHashIndex`` per
    64-bit word (substrings sized for the index by ``for_size``), queried at ``d // words`` bits
    each. At a million hashes and ``d = 31`` that build took 2.5 s and a million queries 52 s of
    one core; faiss's ``IndexBinaryMultiHash`` was slower there and ``IndexBinaryHNSW`` missed
    copies (``benchmarks/neardup_index``).

    Args:
        max_distance: the largest radius a query accepts, in bits.
        bits: hash length, a multiple of 64.
        expected: about how many hashes will be stored (sizes the first arrays).

    Keys are ints in int64 (e.g. ``row_id * 16 + kind``). Hashes are given as ints or hex
    strings (``bits / 4`` hex digits; shorter or ``0x``-prefixed strings are read one by one).

    Memory: 8 bytes per 64 bits of each stored hash and per key, 4 bytes per substring entry
    (``bits / 16`` per hash) and a fixed ``bits / 16 * 65,536 + 1`` int32 offsets (4 MiB at
    256 bits).

    Raises:
        ValueError: on a negative distance or ``bits`` not a multiple of 64.
    """

    SUBSTRING_BITS = 16
    SMALL_LIMIT = 1 << 15  # hashes; the crossover measured with ``neardup_index --per-image``
    TAIL = 256  # hashes scanned by every query before they are merged into the tables

    def __init__(self, max_distance: int, *, bits: int = 256, expected: int = 0) -> None:
        if bits % 64 or bits <= 0:
            raise ValueError(f"bits must be a positive multiple of 64, got {bits}")
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0 bits, got {max_distance}")
        self.max_distance = max_distance
        self.bits = bits
        self.words = bits // 64
        self.tables = bits // self.SUBSTRING_BITS
        buckets = 1 << self.SUBSTRING_BITS
        # Table t's keys live at t * 65536 + key: one offsets array for every table.
        self._base = np.arange(self.tables, dtype=np.int64) * buckets
        self._offsets = np.zeros(self.tables * buckets + 1, dtype=np.int32)
        self._entries = np.empty(0, dtype=np.int32)  # positions sorted by (table, key), then position
        self._filled = np.zeros(self.tables * buckets, dtype=bool)  # buckets holding an entry
        self._values = np.empty((max(256, expected), self.words), dtype=np.uint64)  # by position
        self._key_array = np.empty(max(256, expected), dtype=np.int64)  # by position
        self._count = 0
        self._indexed = 0  # positions below this are in the tables
        self._probes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._plans: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._word_indexes: list[MultiIndexHashIndex] | None = None  # past SMALL_LIMIT
        self.last_checked = 0
        if expected > self.SMALL_LIMIT:
            self._to_word_indexes(expected)

    def __len__(self) -> int:
        return self._count

    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored hash, as ``(N, bits / 64)`` uint64 words, and its int64 key, in
        insertion order (views: copy before adding more)."""
        return self._values[: self._count], self._key_array[: self._count]

    @property
    def tabled(self) -> bool:
        """True while the 16-bit tables serve the queries (up to ``SMALL_LIMIT`` hashes):
        a query's cost is then its numpy calls more than its candidates."""
        return self._word_indexes is None

    def _split(self, value: int | str) -> list[int]:
        number = int(value, 16) if isinstance(value, str) else value
        if not 0 <= number < (1 << self.bits):
            raise ValueError(f"hash does not fit in {self.bits} bits")
        return [(number >> (64 * (self.words - 1 - w))) & 0xFFFF_FFFF_FFFF_FFFF for w in range(self.words)]

    def words_of(self, values: Sequence[int | str]) -> np.ndarray:
        """``(N, bits / 64)`` uint64 words (most significant first) of hashes given as ints or
        hex strings; full-length hex strings are read in one ``bytes.fromhex``.

        Raises:
            ValueError: if a hash does not fit in ``bits``.
        """
        digits = self.bits // 4
        if all(type(v) is str and len(v) == digits for v in values):
            try:
                raw = bytes.fromhex("".join(values))  # type: ignore[arg-type]
            except ValueError:
                pass  # not plain hex digits: one by one, as int() reads them
            else:
                return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(values), self.words)
        return np.array([self._split(v) for v in values], dtype=np.uint64).reshape(len(values), self.words)

    def _substrings(self, words: np.ndarray) -> np.ndarray:
        """``(N, tables)`` int64 bucket numbers (table base added) of ``(N, words)`` uint64."""
        return self._raw_substrings(words) + self._base

    def _raw_substrings(self, words: np.ndarray) -> np.ndarray:
        """``(N, tables)`` int64 substring values (no table base) of ``(N, words)`` uint64."""
        return words.astype(">u8").view(">u2").astype(np.int64)

    def _grow(self, need: int) -> None:
        if need > len(self._values):
            size = max(need, 2 * len(self._values))
            grown = np.empty((size, self.words), dtype=np.uint64)
            grown[: self._count] = self._values[: self._count]
            self._values = grown
            keys = np.empty(size, dtype=np.int64)
            keys[: self._count] = self._key_array[: self._count]
            self._key_array = keys

    def add(self, value: int | str, key: int) -> None:
        """Store ``key`` under the hash ``value``; amortised O(1) (merged into the tables in
        batches, scanned until then).

        Raises:
            ValueError: if the hash does not fit in ``bits``.
        """
        self.add_many(np.array([self._split(value)], dtype=np.uint64), [key])

    def add_many(self, words: np.ndarray, keys: Sequence[int]) -> None:
        """Store many hashes at once: ``words`` is ``(N, bits / 64)`` uint64, most significant
        word first (``words_of``, or ``np.frombuffer(raw, ">u8")`` of the hashes' bytes, as
        uint64). Like ``add``, they are merged into the tables in batches.

        Raises:
            ValueError: if ``words`` and ``keys`` differ in length or shape.
        """
        words = np.asarray(words, dtype=np.uint64).reshape(-1, self.words)
        if len(words) != len(keys):
            raise ValueError(f"{len(words)} hashes but {len(keys)} keys")
        start = self._count
        stop = start + len(words)
        self._grow(stop)
        self._values[start:stop] = words
        self._key_array[start:stop] = keys
        self._count = stop
        if self._word_indexes is not None:
            positions = list(range(start, stop))
            for w, index in enumerate(self._word_indexes):
                index.add_many(words[:, w], positions)
            self._indexed = stop
        elif stop > self.SMALL_LIMIT:
            self._to_word_indexes(stop)

    def _to_word_indexes(self, expected: int) -> None:
        """Leave the 16-bit tables for one ``MultiIndexHashIndex`` per word (class docstring)."""
        count = self._count
        self._word_indexes = [MultiIndexHashIndex.for_size(self.max_distance // self.words, 2 * expected) for _ in range(self.words)]
        if count:
            for w, index in enumerate(self._word_indexes):
                index.add_many(self._values[:count, w], list(range(count)))
        self._indexed = count
        self._entries = np.empty(0, dtype=np.int32)
        self._offsets = np.zeros(1, dtype=np.int32)
        self._filled = np.zeros(0, dtype=bool)

    def _merge(self) -> None:
        """Move the scanned tail into the tables: each new position goes at the end of its
        buckets, one ``np.insert`` for all, and the offsets shift by a cumulative count."""
        start, stop = self._indexed, self._count
        buckets = self._substrings(self._values[start:stop]).ravel()
        positions = np.repeat(np.arange(start, stop, dtype=np.int32), self.tables)
        order = np.argsort(buckets, kind="stable")
        buckets, positions = buckets[order], positions[order]
        self._entries = np.insert(self._entries, self._offsets[buckets + 1], positions)
        self._filled[buckets] = True
        # Bucket k starts later by the number of new entries in buckets below k: a step
        # function of k, written by one repeat (a cumulative count over the 1 M buckets costs
        # several times more).
        edges = np.concatenate([[0], buckets + 1, [len(self._offsets)]])
        self._offsets += np.repeat(np.arange(len(buckets) + 1, dtype=np.int32), np.diff(edges))
        self._indexed = stop

    def _probe_template(self, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """The (table, flip mask with the table's base) of every bucket a query at ``radius``
        bits looks up: masks of up to ``r`` bits in the first ``a + 1`` tables and ``r - 1``
        in the others, for ``radius = tables * r + a`` (the class docstring)."""
        if radius not in self._probes:
            r, a = divmod(radius, self.tables)
            tables: list[int] = []
            masks: list[int] = []
            for t in range(self.tables):
                flips = _flip_masks(self.SUBSTRING_BITS, r if t <= a else r - 1)
                tables.extend([t] * len(flips))
                masks.extend(flips)
            table_of = np.array(tables, dtype=np.int64)
            # A table's base sits above its 16 key bits: XOR with base | mask adds the base.
            self._probes[radius] = (table_of, np.array(masks, dtype=np.int64) | self._base[table_of])
        return self._probes[radius]

    def _probe_plan(self, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For queries at ``radii``: the index into their flattened ``(N, tables)``
        substrings, the mask and the query number of every bucket to look up. A crawl asks
        the same radii for every picture: small plans are kept."""
        key = radii.tobytes()
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        flat, masks, which = [], [], []
        for radius in np.unique(radii).tolist():
            chosen = np.flatnonzero(radii == radius)
            tables, radius_masks = self._probe_template(radius)
            flat.append((chosen[:, None] * self.tables + tables[None, :]).ravel())
            masks.append(np.tile(radius_masks, chosen.size))
            which.append(np.repeat(chosen, tables.size))
        plan = (np.concatenate(flat), np.concatenate(masks), np.concatenate(which))
        if radii.size <= 64 and len(self._plans) < 64:
            self._plans[key] = plan
        return plan

    def _candidates(self, queries: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query number, position) of every merged hash sharing a bucket within the substring
        radius with a query, repeats included: every key within that radius, in every table,
        for every query, gathered in one indexing."""
        flat, masks, which = self._probe_plan(radii)
        probes = self._raw_substrings(queries).ravel()[flat] ^ masks
        # Most probes find an empty bucket: a byte per bucket (1 MiB at 256 bits) tells which,
        # where reading the offsets (4 MiB) of every probe missed the cache.
        hit = np.flatnonzero(self._filled[probes])
        if not hit.size:
            return hit, hit
        probes = probes[hit]
        starts = self._offsets[probes]
        lengths = self._offsets[probes + 1] - starts
        ends = np.cumsum(lengths)
        if int(ends[-1]) == len(hit):  # one entry per bucket (a small index): no expansion
            return which[hit], self._entries[starts]
        gather = np.repeat(starts - ends + lengths, lengths) + np.arange(int(ends[-1]))
        return np.repeat(which[hit], lengths), self._entries[gather]

    def _word_candidates(self, queries: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As ``_candidates``, from the per-word indexes, every query at the largest radius's
        ``radius // words`` bits (each word index's calls cost more than the few extra
        candidates of the nearer queries, which the full check drops)."""
        radius = int(radii.max()) // self.words
        which: list[int] = []
        where: list[int] = []
        for w, index in enumerate(self._word_indexes or ()):
            for n, hits in enumerate(index.query_batch(queries[:, w].tolist(), radius)):
                which.extend([n] * len(hits))
                where.extend(position for _, position in hits)
        return np.array(which, dtype=np.int64), np.array(where, dtype=np.int64)

    def search(
        self, values: Sequence[int | str] | np.ndarray, radii: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored hash within ``radii[n]`` bits of ``values[n]``, for all queries in one
        pass: ``(query number, key, distance)`` int64 arrays, sorted by query, then distance,
        then insertion. ``values``: ints, hex strings, or ``(N, bits / 64)`` uint64 words.

        Raises:
            ValueError: if a radius is larger than the index's or negative.
        """
        radii = np.asarray(radii, dtype=np.int64).ravel()
        if radii.tobytes() not in self._plans:  # a kept plan's radii were checked
            if radii.size and int(radii.max()) > self.max_distance:
                raise ValueError(f"index built for at most {self.max_distance} bits, asked for {int(radii.max())}")
            if radii.size and int(radii.min()) < 0:
                raise ValueError(f"a radius must be >= 0 bits, got {int(radii.min())}")
        queries = values if isinstance(values, np.ndarray) else self.words_of(values)
        queries = queries.reshape(-1, self.words)
        if len(queries) != radii.size:
            raise ValueError(f"{len(queries)} hashes but {radii.size} radii")
        empty = np.empty(0, dtype=np.int64)
        if not radii.size:
            return empty, empty, empty
        # Every query scans the unmerged tail (a crawl asks ~20 hashes per picture and adds
        # ~11); a merge costs a pass over the offsets (1 M int32 at 256 bits).
        if self._word_indexes is None and self._count - self._indexed > self.TAIL:
            self._merge()
        total, indexed = self._count, self._indexed
        which = where = distance = empty
        self.last_checked = (total - indexed) * len(queries)
        if indexed:
            tables = self._candidates if self._word_indexes is None else self._word_candidates
            found, candidates = tables(queries, radii)
            self.last_checked += len(candidates)
            # Check every candidate, then drop the repeats (a match is found in several
            # tables): cheaper than deduplicating the many candidates that fail.
            checked = _bit_distances(self._values[candidates] ^ queries[found])
            close = np.flatnonzero(checked <= radii[found])
            if close.size:
                which, where, distance = found[close], candidates[close], checked[close]
        repeats = len(which) > 1
        if indexed < total:  # the unmerged tail, every query against every hash in one broadcast
            tail = _bit_distances(self._values[indexed:total][None, :, :] ^ queries[:, None, :])
            near_q, near_p = np.nonzero(tail <= radii[:, None])
            if near_q.size:
                which = np.concatenate([which, near_q])
                where = np.concatenate([where, near_p + indexed])
                distance = np.concatenate([distance, tail[near_q, near_p]])
        if not which.size:
            return empty, empty, empty
        if repeats:
            span = max(total, 1)
            _, first = np.unique(which * span + where, return_index=True)
            which, where, distance = which[first], where[first], distance[first]
        order = np.lexsort((where, distance, which))
        return which[order], self._key_array[where[order]], distance[order].astype(np.int64)

    def query_batch(self, values: Sequence[int | str], max_distance: int | None = None) -> list[list[tuple[int, int]]]:
        """``(distance, key)`` of every stored hash within ``max_distance`` bits (default and
        at most the index's) of each of ``values``, nearest first, then by insertion.

        Raises:
            ValueError: if ``max_distance`` is larger than the index's.
        """
        radius = self.max_distance if max_distance is None else max_distance
        if radius > self.max_distance:
            raise ValueError(f"index built for at most {self.max_distance} bits, asked for {radius}")
        if not len(values):
            return []
        which, keys, distance = self.search(values, np.full(len(values), radius, dtype=np.int64))
        bounds = np.searchsorted(which, np.arange(len(values) + 1)).tolist()
        found = list(zip(distance.tolist(), keys.tolist(), strict=True))
        return [found[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
