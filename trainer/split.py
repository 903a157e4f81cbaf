"""Deterministic, content-based train/val/test split with near-duplicate groups kept together.

An image's split depends only on its content id (and a seed), never on which other images exist,
so an image never changes split when the dataset grows. Images whose perceptual hashes are equal,
or within a small Hamming distance, form a near-duplicate group that is split as one unit (on the
group's representative), so validation never holds a twin of a training image.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable, Sequence

TRAIN, VAL, TEST = "train", "val", "test"

#: Bits of the perceptual hash (imagehash ``phash`` with hash_size 8, docs/dataset.md).
PHASH_BITS = 64


def split_unit(content_id: str, seed: int) -> float:
    """Map ``content_id`` to a number in [0, 1), uniformly, salted by ``seed``.

    The first 8 bytes of SHA-256(``"<seed>:<content_id>"``) as a fraction of 2**64.
    """
    digest = hashlib.sha256(f"{seed}:{content_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(content_id: str, *, seed: int, val_fraction: float, test_fraction: float = 0.0) -> str:
    """Return ``"val"``, ``"test"`` or ``"train"`` for one content id.

    ``[0, val_fraction)`` is validation, ``[val_fraction, val_fraction + test_fraction)`` test, the
    rest training; so raising ``test_fraction`` only moves training images into test.
    """
    u = split_unit(content_id, seed)
    if u < val_fraction:
        return VAL
    if u < val_fraction + test_fraction:
        return TEST
    return TRAIN


def near_duplicate_groups(phashes: Sequence[str | None], max_distance: int = 0) -> list[int]:
    """Group indices whose perceptual hashes are within ``max_distance`` bits (Hamming distance).

    Grouping is transitive (union-find): if a~b and b~c then a, b, c share a group. Candidate
    pairs come from multi-index hashing: the 64 bits are cut into ``max_distance + 1`` bands and,
    by the pigeonhole principle, two hashes within ``max_distance`` bits agree exactly on at
    least one band; so only images sharing a band value are compared, not all pairs.

    Args:
        phashes: hex perceptual hash per image (16 hex chars), or ``None`` when unknown; an image
            without a hash is a group of its own.
        max_distance: largest Hamming distance (bits) still counted as a near-duplicate;
            0 groups equal hashes only.

    Returns:
        For each index, the index of its group's root (any stable member; callers pick their own
        representative).
    """
    parent = list(range(len(phashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    values = {i: int(h, 16) for i, h in enumerate(phashes) if h}
    bands = _bands(max_distance)
    for shift, mask in bands:
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, v in values.items():
            buckets[(v >> shift) & mask].append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            if max_distance == 0:
                for j in members[1:]:
                    union(members[0], j)
                continue
            for a, i in enumerate(members):
                for j in members[a + 1 :]:
                    if (values[i] ^ values[j]).bit_count() <= max_distance:
                        union(i, j)
    return [find(i) for i in range(len(phashes))]


def _bands(max_distance: int) -> list[tuple[int, int]]:
    count = min(max_distance + 1, PHASH_BITS)
    edges = [round(k * PHASH_BITS / count) for k in range(count + 1)]
    return [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]


def split_items(
    content_ids: Sequence[str],
    phashes: Iterable[str | None] | None = None,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float = 0.0,
    max_distance: int = 0,
) -> list[str]:
    """Assign each image a split, keeping near-duplicate groups in one split.

    A group is split on its representative: the member with the smallest content id, so a group
    only moves if a new twin with a smaller id joins it; unrelated additions move nothing.

    Args:
        content_ids: one stable id per image (the SHA-256 of its bytes).
        phashes: perceptual hash per image (hex) or ``None``; omitted: no grouping.
        seed: salt of the split hash (``data.seed``).
        val_fraction, test_fraction: expected share of images in validation and test.
        max_distance: Hamming distance (bits) up to which hashes are near-duplicates.

    Returns:
        ``"train"``, ``"val"`` or ``"test"`` per image, in input order.
    """
    if not 0 <= val_fraction + test_fraction < 1:
        raise ValueError(f"val_fraction + test_fraction must be in [0, 1), got {val_fraction} + {test_fraction}")
    if phashes is None:
        representatives = list(content_ids)
    else:
        roots = near_duplicate_groups(list(phashes), max_distance)
        smallest: dict[int, str] = {}
        for root, cid in zip(roots, content_ids):
            if root not in smallest or cid < smallest[root]:
                smallest[root] = cid
        representatives = [smallest[root] for root in roots]
    return [
        assign_split(rep, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
        for rep in representatives
    ]
