"""Benchmark: indexing 256-bit PDQ hashes at scale (issue 13 item 5), faiss's binary indexes.

Builds an index over N random 256-bit hashes (1% of them planted copies 1-``radius`` bits from
another, so there is something to find), queries every stored hash at ``radius`` bits, checks a
sample against a brute-force scan and prints build and query seconds.

* ``multihash``: faiss ``IndexBinaryMultiHash`` (multi-index hashing: ``nhash`` tables of ``b``
  bits, ``nflip`` bit flips probed per table). With ``nhash * (nflip + 1) > radius`` the
  pigeonhole principle makes its range search exact (Norouzi et al. 2012).
* ``hnsw``: faiss ``IndexBinaryHNSW`` (approximate k-NN graph; ThreatExchange's choice for
  PDQ), k=4 neighbours then a distance filter; recall measured against brute force.

* ``words``: the project's ``crawler.hashindex.MultiIndexHashIndex`` as it is (it keeps hashes
  in uint64 arrays, ``bits <= 64``, so it cannot take a 256-bit key): one index per 64-bit word
  of the hash, each queried at ``radius // 4`` bits. By the pigeonhole principle two hashes
  within ``radius`` bits agree on at least one word to within ``radius // 4`` bits, so the union
  of the four candidate sets holds every match; each candidate is then checked on all 256 bits.

* ``--per-image``: the crawl's own lookup (``crawler.hashindex.WordsHashIndex``, as
  ``crawler.images.index.PdqCatalogIndex`` asks it for each new picture), on random hashes: 8
  dihedral hashes at ``DEDUPE_MAX_DISTANCE`` (31) against the full-picture index (``--size``
  stored pictures), 2 PDQ window hashes at ``DEDUPE_VARIANT_DISTANCE`` (24) against the index of
  every PDQ kind (``--size`` x 3 hashes; ``--windows 0`` leaves it out), 9 phash windows at
  ``DEDUPE_WINDOW_DISTANCE`` (8 of 64 bits) against the 64-bit ``MultiIndexHashIndex`` of
  ``--size`` x 9 (``--phash-windows 0`` leaves it out) and, with the second look on, the
  identity hash at ``DEDUPE_LOOK_DISTANCE`` (50) against the full-picture index; ms per picture
  with the look on and off, in alternating rounds (the aligned looks of window candidates, and
  catalog reads, are not included).

Reproduce (one core)::

    taskset -c 0 .venv/bin/python -m benchmarks.neardup_index --size 1000000 --radius 31
    taskset -c 0 .venv/bin/python -m benchmarks.neardup_index --per-image --size 100000
    taskset -c 0 .venv/bin/python -m benchmarks.neardup_index --per-image --size 1000000 --windows 0
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def make_hashes(size: int, radius: int, seed: int) -> np.ndarray:
    """``(size, 32)`` uint8: random 256-bit hashes, the last 1% copies of others."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 256, size=(size, 32), dtype=np.uint8)
    planted = size // 100
    targets = rng.integers(0, size - planted, size=planted)
    bits = np.unpackbits(hashes[targets], axis=1)
    for row, flips in enumerate(rng.integers(1, radius + 1, size=planted)):
        where = rng.choice(256, size=flips, replace=False)
        bits[row, where] ^= 1
    hashes[size - planted :] = np.packbits(bits, axis=1)
    return hashes


def brute(hashes: np.ndarray, q: int, radius: int) -> set[int]:
    distance = np.bitwise_count(hashes ^ hashes[q]).sum(axis=1)
    return set(np.flatnonzero(distance <= radius).tolist())


def words_index(hashes: np.ndarray, queries: np.ndarray, radius: int) -> None:
    """The ``words`` scheme (module docstring): build, query all, check against brute force."""
    from crawler.hashindex import MultiIndexHashIndex

    words = hashes.view(">u8").astype(np.uint64)  # (N, 4) big-endian 64-bit words
    query_words = queries.view(">u8").astype(np.uint64)
    per_word = radius // 4
    cpu = time.process_time()
    started = time.perf_counter()
    indexes = []
    for w in range(4):
        index = MultiIndexHashIndex.for_size(per_word, len(hashes))
        index.add_many(words[:, w])
        indexes.append(index)
    build_s = time.perf_counter() - started
    build_cpu = time.process_time() - cpu
    cpu = time.process_time()
    started = time.perf_counter()
    found_q, found_p = [], []
    candidates = 0
    block = 100_000
    for start in range(0, len(queries), block):
        chunk = query_words[start : start + block]
        qs, ps = [], []
        for w, index in enumerate(indexes):
            q, p, _ = index.query_many(chunk[:, w], per_word)
            qs.append(q)
            ps.append(p)
        q = np.concatenate(qs)
        p = np.concatenate(ps)
        candidates += len(q)
        pair = np.unique(q.astype(np.int64) * len(hashes) + p)
        q, p = pair // len(hashes), pair % len(hashes)
        distance = np.bitwise_count(query_words[start + q] ^ words[p]).sum(axis=1)
        keep = distance <= radius
        found_q.append(start + q[keep])
        found_p.append(p[keep])
    query_s = time.perf_counter() - started
    query_cpu = time.process_time() - cpu
    fq, fp = np.concatenate(found_q), np.concatenate(found_p)
    rng = np.random.default_rng(1)
    sample = np.concatenate([rng.choice(len(queries), 100, replace=False), np.arange(len(queries) - len(queries) // 100, len(queries))[:100]])
    exact = sum(set(fp[fq == q].tolist()) == brute(hashes, int(q), radius) for q in sample)
    print(
        f"words (4 x crawler.hashindex MIH at {per_word} bits) n={len(hashes):,} radius={radius} "
        f"build {build_s:.1f} s (CPU {build_cpu:.1f} s), {len(queries):,} queries {query_s:.1f} s "
        f"(CPU {query_cpu:.1f} s), candidates {candidates:,}, pairs found {len(fq) - len(queries):,}, equal to brute force: "
        f"{exact}/{len(sample)} (100 random + 100 planted); load {os.getloadavg()[0]:.2f}"
    )


def per_image(size: int, windows: int, pictures: int, rounds: int, seed: int, phash_windows: int = 9) -> None:
    """The crawl's per-picture lookup cost with ``size`` stored pictures (module docstring):
    ``size`` full-picture hashes in one index, ``size * (windows + 1)`` in the other, ``size *
    phash_windows`` 64-bit hashes in a third."""
    import statistics

    from crawler.hashindex import MultiIndexHashIndex, WordsHashIndex

    full = make_hashes(size, 31, seed)
    kinds = make_hashes(size * (windows + 1), 24, seed + 2) if windows else full[:0]
    rng = np.random.default_rng(seed + 1)
    # Each picture: 8 dihedral hashes and its windows; one in ten is a copy of a stored picture.
    queries = rng.integers(0, 256, size=(pictures, 8 + windows, 32), dtype=np.uint8)
    queries[::10, 0] = full[rng.integers(0, size, size=len(queries[::10]))]
    as_hex = [[q.tobytes().hex() for q in picture] for picture in queries]
    started = time.perf_counter()
    window_index = WordsHashIndex(24, expected=len(kinds))
    if windows:
        window_index.add_many(kinds.view(">u8").astype(np.uint64), list(range(len(kinds))))
    coarse_index = MultiIndexHashIndex.for_size(8, size * phash_windows)
    if phash_windows:
        coarse_index.add_many(rng.integers(0, 2**63, size=size * phash_windows, dtype=np.int64).astype(np.uint64))
    coarse_queries = [[int(v) for v in rng.integers(0, 2**63, size=phash_windows, dtype=np.int64)] for _ in as_hex]
    window_build = time.perf_counter() - started
    results = {}
    for look in (50, 0):
        started = time.perf_counter()
        index = WordsHashIndex(max(31, look), expected=size)
        index.add_many(full.view(">u8").astype(np.uint64), list(range(size)))
        results[look] = {"build_s": time.perf_counter() - started, "index": index, "ms": []}
    for _ in range(rounds):
        for look in (50, 0):
            index = results[look]["index"]
            samples = []
            for picture, coarse in zip(as_hex, coarse_queries, strict=True):
                started = time.perf_counter()
                index.query_batch(picture[:8], 31)
                if windows:
                    window_index.query_batch(picture[8:], 24)
                if phash_windows:
                    coarse_index.query_batch(coarse, 8)
                if look:
                    index.query_batch(picture[:1], look)
                samples.append((time.perf_counter() - started) * 1000)
            results[look]["ms"].append(statistics.median(samples))
    for look in (50, 0):
        r = results[look]
        print(
            f"per picture, {size:,} stored pictures ({size:,} full hashes, {len(kinds):,} in the windows index, "
            f"{size * phash_windows:,} phash windows), "
            f"look {'on (identity at 50 bits)' if look else 'off'}: median {statistics.median(r['ms']):.2f} ms "
            f"(round medians {' '.join(f'{v:.2f}' for v in r['ms'])}), build {r['build_s']:.1f} s "
            f"(+ windows {window_build:.1f} s); load {os.getloadavg()[0]:.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.neardup_index", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--radius", type=int, default=31)
    parser.add_argument("--index", choices=["words", "multihash", "hnsw"], default="words")
    parser.add_argument("--nhash", type=int, default=16)
    parser.add_argument("--b", type=int, default=16)
    parser.add_argument("--nflip", type=int, default=1)
    parser.add_argument("--queries", type=int, default=0, help="query this many (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-image", action="store_true", help="the crawl's lookup per picture, look on and off")
    parser.add_argument("--pictures", type=int, default=200, help="with --per-image: pictures per round")
    parser.add_argument("--windows", type=int, default=2, help="with --per-image: PDQ window hashes per picture (0: none)")
    parser.add_argument("--phash-windows", type=int, default=9, help="with --per-image: 64-bit phash windows per picture (0: none)")
    parser.add_argument("--rounds", type=int, default=3, help="with --per-image: alternating rounds")
    args = parser.parse_args(argv)
    if args.per_image:
        per_image(args.size, args.windows, args.pictures, args.rounds, args.seed, args.phash_windows)
        return
    import faiss

    faiss.omp_set_num_threads(1)
    hashes = make_hashes(args.size, args.radius, args.seed)
    queries = hashes if not args.queries else hashes[: args.queries]
    if args.index == "words":
        words_index(hashes, queries, args.radius)
        return
    started = time.perf_counter()
    if args.index == "multihash":
        index = faiss.IndexBinaryMultiHash(256, args.nhash, args.b)
        index.nflip = args.nflip
    else:
        index = faiss.IndexBinaryHNSW(256, 16)
    index.add(hashes)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    found = 0
    results: dict[int, set[int]] = {}
    block = 20_000
    for start in range(0, len(queries), block):
        chunk = queries[start : start + block]
        if args.index == "multihash":
            lims, distances, labels = index.range_search(chunk, args.radius + 1)  # strict <
            found += len(labels)
            for n in range(min(len(chunk), 50) if start == 0 else 0):
                results[n] = set(labels[lims[n] : lims[n + 1]].tolist())
        else:
            distances, labels = index.search(chunk, 4)
            keep = distances <= args.radius
            found += int(keep.sum())
            for n in range(min(len(chunk), 50) if start == 0 else 0):
                results[n] = set(labels[n][keep[n]].tolist())
    query_s = time.perf_counter() - started
    # Exactness on planted copies and on the first queries.
    sample = list(results)
    exact = sum(results[q] == brute(hashes, q, args.radius) for q in sample)
    planted_rows = np.arange(args.size - args.size // 100, args.size)[:200]
    if args.index == "multihash":
        lims, _, labels = index.range_search(hashes[planted_rows], args.radius + 1)
        got = [set(labels[lims[n] : lims[n + 1]].tolist()) for n in range(len(planted_rows))]
    else:
        distances, labels = index.search(hashes[planted_rows], 4)
        got = [set(labels[n][distances[n] <= args.radius].tolist()) for n in range(len(planted_rows))]
    planted_exact = sum(g == brute(hashes, int(q), args.radius) for g, q in zip(got, planted_rows, strict=True))
    print(
        f"{args.index} n={args.size:,} radius={args.radius} "
        + (f"nhash={args.nhash} b={args.b} nflip={args.nflip} " if args.index == "multihash" else "M=16 k=4 ")
        + f"build {build_s:.1f} s, {len(queries):,} queries {query_s:.1f} s ({len(queries) / query_s:,.0f}/s), "
        f"pairs found {found - len(queries):,}, equal to brute force: {exact}/{len(sample)} first queries, "
        f"{planted_exact}/{len(planted_rows)} planted copies; load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
