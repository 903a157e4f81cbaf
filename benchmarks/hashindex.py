"""Benchmark: the near-duplicate hash index at scale (issue 4: 1,000,000 hashes, distance 8).

Builds a ``MultiIndexHashIndex`` over N random 64-bit hashes (1% of them planted near copies,
1-8 bits from another hash, so there is something to find), queries every stored hash at
distance 8 with ``query_many``, checks a sample against a brute-force scan, times single
``add``/``query`` calls as the dedupe pipeline makes them, and prints a table.

Random hashes spread evenly over the buckets; real phashes are less even, so treat the figures
as the best case for the bucket sizes (buckets hold about n / 2**21 hashes at m = 3).

Reproduce (one core, so other work does not inflate the figures)::

    taskset -c 0 .venv/bin/python -m benchmarks.hashindex            # 1,000,000 hashes
    .venv/bin/python -m benchmarks.hashindex --size 100000 --distance 6
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from crawler.hashindex import MultiIndexHashIndex


def rss_mib() -> float:
    """Resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_hashes(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=size, dtype=np.uint64)
    planted = size // 100
    targets = rng.integers(0, size - planted, size=planted)
    copies = hashes[targets].copy()
    for row, flips in enumerate(rng.integers(1, 9, size=planted)):
        for bit in rng.choice(64, size=flips, replace=False):
            copies[row] ^= np.uint64(1) << np.uint64(bit)
    hashes[size - planted :] = copies
    return hashes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hashindex", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="hashes indexed (default 1,000,000)")
    parser.add_argument("--distance", type=int, default=8, help="query radius, bits (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    hashes = make_hashes(args.size, args.seed)
    rss_before = rss_mib()
    tracemalloc.start()
    started = time.perf_counter()
    index = MultiIndexHashIndex.for_size(args.distance, args.size)
    index.add_many(hashes)
    build_s = time.perf_counter() - started
    traced_mib = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    rss_after = rss_mib()

    started = time.perf_counter()
    query_idx, positions, distances = index.query_many(hashes)
    query_s = time.perf_counter() - started
    pairs = int((query_idx != positions).sum())  # every hash finds itself at distance 0

    # Exactness: a sample of queries against a brute-force scan.
    rng = np.random.default_rng(args.seed + 1)
    sample = rng.choice(args.size, size=200, replace=False)
    for q in sample:
        expected = set(np.flatnonzero(np.bitwise_count(hashes ^ hashes[q]) <= args.distance).tolist())
        assert set(positions[query_idx == q].tolist()) == expected, f"query {q} differs from brute force"

    # The dedupe pipeline's calls: one query, then one add, per image.
    singles = 2000
    extra = make_hashes(singles, args.seed + 2)
    started = time.perf_counter()
    for n, value in enumerate(extra.tolist()):
        index.query(value)
        index.add(value, args.size + n)
    single_us = (time.perf_counter() - started) / singles * 1e6

    rows = [
        ("hashes indexed", f"{args.size:,}"),
        ("substrings m (bits)", f"{index.substrings} ({'/'.join(map(str, index._widths))})"),
        ("build (add_many)", f"{build_s:.2f} s"),
        (f"query all at d={args.distance} (query_many)", f"{query_s:.2f} s"),
        ("queries/s (batch)", f"{args.size / query_s:,.0f}"),
        ("pairs found (excl. self)", f"{pairs:,}"),
        ("brute-force check (200 queries)", "identical"),
        ("single query+add (pipeline)", f"{single_us:.0f} us"),
        ("index arrays (nbytes)", f"{index.nbytes() / 2**20:.0f} MiB"),
        ("tracemalloc after build", f"{traced_mib:.0f} MiB"),
        ("RSS growth from build", f"{rss_after - rss_before:.0f} MiB"),
        ("load average (1 min)", f"{os.getloadavg()[0]:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(f"reproduce: taskset -c 0 .venv/bin/python -m benchmarks.hashindex --size {args.size} --distance {args.distance}")
    print("\n".join(lines))  # noqa: T201 (a benchmark's output is its table)


if __name__ == "__main__":
    main()
