"""Multi-index hashing: finds exactly the hashes within the radius, without a full scan."""

from __future__ import annotations

import random

import numpy as np
import pytest

from crawler.hashindex import MultiIndexHashIndex, hamming


def flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def test_exact_match_has_distance_zero() -> None:
    index = MultiIndexHashIndex(6)
    index.add(0xDEADBEEF12345678, "a")
    assert index.query(0xDEADBEEF12345678) == [(0, "a")]
    assert index.nearest(0xDEADBEEF12345678) == (0, "a")


@pytest.mark.parametrize("distance", [1, 3, 6])
def test_finds_hashes_within_distance_even_when_bits_spread_over_all_substrings(distance: int) -> None:
    index = MultiIndexHashIndex(6)
    base = 0x0123456789ABCDEF
    index.add(base, "a")
    # One flipped bit in each 16-bit substring in turn, so no substring matches exactly.
    query = flip(base, [(i * 16 + i) % 64 for i in range(distance)])
    assert hamming(base, query) == distance
    assert index.query(query) == [(distance, "a")]


def test_ignores_hashes_beyond_distance() -> None:
    index = MultiIndexHashIndex(6)
    base = 0x0123456789ABCDEF
    index.add(base, "a")
    assert index.query(flip(base, list(range(0, 64, 9)))) == []  # 8 bits away
    assert index.nearest(~base & (2**64 - 1)) is None


def test_query_radius_cannot_exceed_the_index_radius() -> None:
    index = MultiIndexHashIndex(4)
    with pytest.raises(ValueError, match="at most 4 bits"):
        index.query(0, 5)


def test_matches_brute_force_on_random_hashes() -> None:
    rng = random.Random(1)
    index = MultiIndexHashIndex(8)
    stored = [rng.getrandbits(64) for _ in range(3000)]
    # Plant near neighbours of some stored hashes so that there is something to find.
    for i in range(0, 300, 3):
        stored.append(flip(stored[i], rng.sample(range(64), rng.randint(0, 10))))
    for key, value in enumerate(stored):
        index.add(value, key)
    for query in stored[::37] + [rng.getrandbits(64) for _ in range(50)]:
        expected = sorted((hamming(query, v), k) for k, v in enumerate(stored) if hamming(query, v) <= 8)
        assert sorted(index.query(query)) == expected


def test_query_does_not_scan_every_hash() -> None:
    rng = random.Random(2)
    index = MultiIndexHashIndex(6)
    stored = [rng.getrandbits(64) for _ in range(20000)]
    for key, value in enumerate(stored):
        index.add(value, key)
    index.flush()  # what is left in the unsorted buffer is scanned in full
    assert index.query(stored[7]) == [(0, 7)]
    # 4 substrings x 17 neighbours x ~0.3 hashes a bucket: tens of candidates, not 20000.
    assert 1 <= index.last_checked < 200


def test_duplicate_hash_keeps_every_key() -> None:
    index = MultiIndexHashIndex(2)
    index.add(5, "a")
    index.add(5, "b")
    assert len(index) == 2
    assert index.query(5) == [(0, "a"), (0, "b")]


@pytest.mark.parametrize(("expected", "substrings"), [(10, 6), (1000, 6), (65536, 4), (1_000_000, 3)])
def test_for_size_picks_substrings_about_log2_n_bits_wide(expected: int, substrings: int) -> None:
    index = MultiIndexHashIndex.for_size(6, expected)
    assert index.substrings == substrings
    index.add(0xFFFF, "a")
    assert index.query(0xFFFF ^ 0b111) == [(3, "a")]


@pytest.mark.parametrize(("max_distance", "substrings"), [(0, 4), (2, 4), (6, 3), (8, 3), (8, 5), (3, 8)])
def test_batch_queries_match_brute_force(max_distance: int, substrings: int) -> None:
    rng = np.random.default_rng(max_distance * 10 + substrings)
    stored = rng.integers(0, 2**64, size=4000, dtype=np.uint64)
    # Near neighbours 0..10 bits away, bits spread over every substring.
    for i in range(0, 400):
        value = stored[i]
        for bit in rng.choice(64, size=rng.integers(0, 11), replace=False):
            value ^= np.uint64(1) << np.uint64(bit)
        stored[4000 - 400 + i] = value
    index = MultiIndexHashIndex(max_distance, substrings=substrings)
    index.add_many(stored)
    queries = np.concatenate([stored[::7], rng.integers(0, 2**64, size=100, dtype=np.uint64)])
    q, pos, dist = index.query_many(queries)
    got = set(zip(q.tolist(), pos.tolist(), dist.tolist(), strict=True))
    expected = set()
    for n, query in enumerate(queries):
        distances = np.bitwise_count(stored ^ query)
        expected |= {(n, int(p), int(distances[p])) for p in np.flatnonzero(distances <= max_distance)}
    assert got == expected
    assert np.all(np.diff(q) >= 0)  # sorted by query


def test_buffered_adds_are_found_before_and_after_a_merge() -> None:
    index = MultiIndexHashIndex(4)
    index.add_many([1 << 40, 2**64 - 1], keys=["a", "b"])
    index.add((1 << 40) | 0b11, "c")  # in the unsorted buffer
    assert index.query(1 << 40) == [(0, "a"), (2, "c")]
    assert index.query(1 << 40, 1) == [(0, "a")]
    index.flush()
    assert index.query(1 << 40) == [(0, "a"), (2, "c")]
    assert len(index) == 3 and (2**64 - 1) in index and 7 not in index
    assert sorted(key for _, key in index) == ["a", "b", "c"]


def test_many_single_adds_merge_and_stay_exact() -> None:
    rng = random.Random(3)
    index = MultiIndexHashIndex.for_size(6, 5000)
    stored = [rng.getrandbits(64) for _ in range(5000)]
    for key, value in enumerate(stored):
        index.add(value, key)
        if key % 997 == 0:  # queries interleaved with adds, as the dedupe pipeline makes them
            assert index.query(value)[0] == (0, key)
    assert len(index) == 5000
    q, pos, _ = index.query_many(stored[:50])
    assert q.tolist() == list(range(50)) and index.keys_at(pos) == list(range(50))


def test_add_many_checks_its_arguments() -> None:
    index = MultiIndexHashIndex(2, bits=16, substrings=2)
    with pytest.raises(ValueError, match="keys"):
        index.add_many([1, 2], keys=["a"])
    with pytest.raises(ValueError, match="16 bits"):
        index.add_many([1 << 20])
    with pytest.raises(ValueError, match="16 bits"):
        index.add(1 << 20, "a")


@pytest.mark.parametrize("small_limit", [1 << 15, 1000, 2500], ids=["16-bit tables", "per-word from add_many", "per-word from add"])
def test_words_index_finds_what_brute_force_finds_at_every_radius(small_limit: int) -> None:
    """256-bit hashes (PDQ's), in the 16-bit tables of a small index and in the per-word
    indexes it moves to past ``SMALL_LIMIT`` (during ``add_many`` or ``add``): the results of
    a query at the index's radius, and at smaller ones (fewer flip masks), equal a linear scan."""
    from crawler.hashindex import WordsHashIndex

    rng = random.Random(5)
    stored = [rng.getrandbits(256) for _ in range(3000)]

    def near(value: int, bits: int) -> int:
        for bit in rng.sample(range(256), bits):
            value ^= 1 << bit
        return value

    index = WordsHashIndex(50)
    index.SMALL_LIMIT = small_limit
    index.add_many(np.array([[(v >> s) & (2**64 - 1) for s in (192, 128, 64, 0)] for v in stored[:2000]], dtype=np.uint64), list(range(2000)))
    for key, value in enumerate(stored[2000:], start=2000):
        index.add(f"{value:064x}", key)  # hex, as the catalog keeps them
        if key == 2100:  # a query between adds leaves an unmerged tail behind
            assert index.query_batch([value], 0) == [[(0, key)]]
    assert (index._word_indexes is not None) == (small_limit < len(stored))
    queries = [near(stored[n], bits) for n, bits in [(1, 0), (2, 12), (2500, 31), (4, 40), (2999, 50), (6, 51)]]
    for radius in (24, 31, 50):
        found = index.query_batch(queries, radius)
        for query, hits in zip(queries, found, strict=True):
            expected = sorted(((query ^ v).bit_count(), k) for k, v in enumerate(stored) if (query ^ v).bit_count() <= radius)
            assert hits == expected
    with pytest.raises(ValueError, match="at most 50 bits"):
        index.query_batch(queries, 51)


@pytest.mark.parametrize("bits", [256, 64])
def test_words_index_search_gives_each_query_its_own_radius(bits: int) -> None:
    """``search`` (the dedupe stage's one pass per picture): each query at its own radius, the
    tables (at the sharper per-table radii) and the unmerged tail together, equal a linear
    scan; near hashes in clusters (buckets of several entries), copies under two keys, and a
    hash at exactly the radius and one bit beyond."""
    from crawler.hashindex import WordsHashIndex

    rng = random.Random(11)

    def near(value: int, count: int) -> int:
        return flip(value, rng.sample(range(bits), count))

    centres = [rng.getrandbits(bits) for _ in range(40)]
    stored = [near(rng.choice(centres), rng.randrange(0, 20)) for _ in range(1500)]
    stored.append(stored[7])  # the same hash under a second key
    limit = 50 if bits == 256 else 8
    index = WordsHashIndex(limit, bits=bits)
    digits = bits // 4
    index.add_many(index.words_of([f"{v:0{digits}x}" for v in stored[:1200]]), list(range(1200)))
    queries = [
        near(stored[3], limit), near(stored[5], limit + 1), stored[7], near(centres[0], 4), rng.getrandbits(bits),
    ]
    radii = [limit, limit, 0, limit // 2, limit]
    index.search(queries[:1], [0])  # merges the first 1200 into the tables
    for key, value in enumerate(stored[1200:], start=1200):
        index.add(value, key)  # the last ones stay in the unmerged tail
    assert index._indexed == 1200 and len(index) == len(stored)
    which, keys, distances = index.search([f"{q:0{digits}x}" for q in queries], radii)
    found = list(zip(which.tolist(), distances.tolist(), keys.tolist(), strict=True))
    expected = sorted(
        (n, (q ^ v).bit_count(), k) for n, (q, r) in enumerate(zip(queries, radii, strict=True))
        for k, v in enumerate(stored) if (q ^ v).bit_count() <= r
    )
    assert found == expected
    assert (0, limit, 3) in found and not any(n == 1 and k == 5 for n, _, k in found)
    assert [(d, k) for n, d, k in found if n == 2] == [(0, 7), (0, len(stored) - 1)]
    with pytest.raises(ValueError, match=f"at most {limit} bits"):
        index.search(queries[:1], [limit + 1])
    with pytest.raises(ValueError, match="radii"):
        index.search(queries[:2], [1])


def test_words_index_reads_hex_of_any_spelling() -> None:
    """Full-length hex strings are read in one go; shorter or ``0x`` ones as ``int`` reads them."""
    from crawler.hashindex import WordsHashIndex

    index = WordsHashIndex(2, bits=64)
    assert index.words_of(["00000000000000ff", "0xff", "FF"]).tolist() == [[255], [255], [255]]
    with pytest.raises(ValueError, match="64 bits"):
        index.words_of(["1" + "0" * 16])
