"""Near-duplicate index over 64-bit perceptual hashes: multi-index hashing (MIH).

Why MIH and not a BK-tree or a linear scan:

* A linear scan costs one popcount per stored hash per query: at a million images every new
  image would touch a million hashes.
* A BK-tree prunes well only for small radii; at a radius of 6-8 bits of 64 it still visits a
  large part of the tree, and no maintained BK-tree package is a dependency of this project.
* MIH (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing",
  CVPR 2012) splits each hash into ``m`` disjoint substrings and keeps one dict per substring.
  By the pigeonhole principle, two hashes within ``d`` bits agree on at least one substring to
  within ``floor(d / m)`` bits, so a query enumerates, for each substring, the few keys within
  that radius (``sum_{k<=r} C(b, k)`` keys for a ``b``-bit substring) and looks them up in O(1).
  Only those candidates are checked with a full Hamming distance. The cost of a query depends on
  ``m``, ``d`` and how full each bucket is, not on scanning every hash.

With ``m = 4`` substrings of 16 bits a query at ``d = 6`` costs 4 x 17 dict lookups and at
``d = 8`` 4 x 137; buckets hold about ``N / 65536`` hashes each when hashes are spread evenly.
``MultiIndexHashIndex.for_size`` picks ``m`` from the expected number of hashes (the paper's
``m = 64 / log2 N``) so that buckets stay near one hash as the dataset grows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterator

__all__ = ["MultiIndexHashIndex", "hamming"]


def hamming(a: int, b: int) -> int:
    """Hamming distance in bits between two hashes given as non-negative ints."""
    return (a ^ b).bit_count()


class MultiIndexHashIndex:
    """Map perceptual hashes to keys and find every stored hash within a Hamming radius.

    Args:
        max_distance: the largest radius ``query`` accepts, in bits (>= 0). The enumeration
            radius per substring is derived from it once: ``floor(max_distance / substrings)``.
        bits: hash length in bits (64 for imagehash's ``phash`` with ``hash_size=8``).
        substrings: number of substrings ``m`` (1 <= m <= bits). More substrings mean smaller
            per-substring radii but fuller buckets; ``bits / log2(N)`` is the paper's optimum,
            4 (16-bit substrings) suits 10^4 to 10^6 hashes.

    Raises:
        ValueError: on a negative distance or an impossible ``bits``/``substrings`` pair.
    """

    def __init__(self, max_distance: int, *, bits: int = 64, substrings: int = 4) -> None:
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0 bits, got {max_distance}")
        if not 1 <= substrings <= bits:
            raise ValueError(f"substrings must be in [1, {bits}], got {substrings}")
        self.max_distance = max_distance
        self.bits = bits
        self.substrings = substrings
        # Split as evenly as possible: the first (bits % m) substrings get one extra bit.
        base, extra = divmod(bits, substrings)
        widths = [base + (1 if i < extra else 0) for i in range(substrings)]
        self._slices: list[tuple[int, int]] = []  # (shift, mask) per substring
        shift = 0
        for width in widths:
            self._slices.append((shift, (1 << width) - 1))
            shift += width
        self._radius = max_distance // substrings
        # XOR masks of every pattern within the per-substring radius, computed once.
        self._flips: list[list[int]] = [
            _flip_masks(width, self._radius) for width in widths
        ]
        self._tables: list[dict[int, list[int]]] = [{} for _ in range(substrings)]
        self._keys: dict[int, list[Hashable]] = {}
        #: Distinct stored hashes compared in full by the last ``query`` (for tests/benchmarks).
        self.last_checked = 0

    @classmethod
    def for_size(cls, max_distance: int, expected: int, *, bits: int = 64) -> MultiIndexHashIndex:
        """An index whose substring count suits about ``expected`` hashes.

        Uses the paper's rule ``m = bits / log2(N)`` (substrings as wide as log2 of the size,
        so buckets hold about one hash), kept within [2, 8]: 3 substrings at a million
        hashes, 4 at 65,536, 6 at a thousand.
        """
        size = max(expected, 1024)
        substrings = max(2, min(8, round(bits / math.log2(size))))
        return cls(max_distance, bits=bits, substrings=substrings)

    def __len__(self) -> int:
        """Number of (hash, key) pairs added."""
        return sum(len(keys) for keys in self._keys.values())

    def __contains__(self, hash_value: int) -> bool:
        return hash_value in self._keys

    def add(self, hash_value: int, key: Hashable) -> None:
        """Store ``key`` under ``hash_value`` (an int in ``[0, 2**bits)``)."""
        if not 0 <= hash_value < (1 << self.bits):
            raise ValueError(f"hash {hash_value:#x} does not fit in {self.bits} bits")
        keys = self._keys.get(hash_value)
        if keys is None:
            self._keys[hash_value] = [key]
            for table, (shift, mask) in zip(self._tables, self._slices, strict=True):
                table.setdefault((hash_value >> shift) & mask, []).append(hash_value)
        else:
            keys.append(key)

    def query(self, hash_value: int, max_distance: int | None = None) -> list[tuple[int, Hashable]]:
        """Return ``(distance, key)`` for every stored hash within ``max_distance`` bits.

        Sorted by distance, then insertion order. ``max_distance`` defaults to the index's and
        may not exceed it (the enumeration radius was fixed at construction).

        Raises:
            ValueError: if ``max_distance`` is larger than the index's ``max_distance``.
        """
        radius = self.max_distance if max_distance is None else max_distance
        if radius > self.max_distance:
            raise ValueError(
                f"index built for at most {self.max_distance} bits, asked for {radius}"
            )
        seen: set[int] = set()
        found: list[tuple[int, int]] = []
        for table, (shift, mask), flips in zip(
            self._tables, self._slices, self._flips, strict=True
        ):
            part = (hash_value >> shift) & mask
            for flip in flips:
                for candidate in table.get(part ^ flip, ()):
                    if candidate in seen:
                        continue
                    seen.add(candidate)
                    distance = (candidate ^ hash_value).bit_count()
                    if distance <= radius:
                        found.append((distance, candidate))
        self.last_checked = len(seen)
        found.sort(key=lambda pair: pair[0])
        return [(distance, key) for distance, candidate in found for key in self._keys[candidate]]

    def nearest(self, hash_value: int) -> tuple[int, Hashable] | None:
        """The closest stored ``(distance, key)`` within ``max_distance`` bits, or ``None``."""
        matches = self.query(hash_value)
        return matches[0] if matches else None

    def __iter__(self) -> Iterator[tuple[int, Hashable]]:
        for hash_value, keys in self._keys.items():
            for key in keys:
                yield hash_value, key


def _flip_masks(width: int, radius: int) -> list[int]:
    """Every ``width``-bit XOR mask with at most ``radius`` bits set, fewest bits first."""
    masks = [0]
    for count in range(1, min(radius, width) + 1):
        for positions in itertools.combinations(range(width), count):
            mask = 0
            for position in positions:
                mask |= 1 << position
            masks.append(mask)
    return masks
