"""Multi-index hashing: finds exactly the hashes within the radius, without a full scan."""

from __future__ import annotations

import random

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
