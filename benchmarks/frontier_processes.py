"""Benchmark: images/s of 1, 2 and 3 ``urls`` crawl processes sharing one frontier (issue 16).

One local aiohttp server (``benchmarks.pipeline_throughput``: N distinct 320x240 JPEGs, fixed
latency per response) and one throwaway ``redis-server`` on 127.0.0.1 (Debian's package; see
tests/crawler/redis_server.py). Each run gives every process the same URL list (``-a file=``),
scrapy-redis's scheduler and dupefilter (``crawler/frontier.py``), and one fresh dataset folder
(SQLite catalog) for all of them; Redis is emptied between runs. Images/s = stored rows / wall
time from the first process's start to the last one's exit (start-up included). The process
counts alternate in each round (1, 2, 3, then 3, 2, 1, ...) and the median of the rounds is
printed, because the machine is shared and its load varies. "0" is the baseline: one process on
Scrapy's own scheduler, no Redis.

``--catalog-url URL`` puts every run's catalog in that PostgreSQL database instead
(``CATALOG_URL``; its catalog tables are dropped before each run, so give a database of its own);
``--catalog-url local`` starts a throwaway cluster on 127.0.0.1 for it (Debian's postgresql,
tests/postgres_server.py).

Reproduce::

    .venv/bin/python -m benchmarks.frontier_processes [--count 600] [--latency 0.05] [--rounds 3] [--catalog-url local]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.pipeline_throughput import REPO, SCRAPY, make_images, ours_settings, serve

sys.path += [str(REPO / "tests"), str(REPO / "tests" / "crawler")]
from postgres_server import PostgresServer, find_postgres_bin  # noqa: E402
from redis_server import RedisServer, find_redis_server  # noqa: E402

# The catalog's tables (crawler/catalog.py), dropped between runs on a PostgreSQL catalog.
CATALOG_TABLES = ("review", "image_looks", "image_hashes", "images", "meta")


@contextlib.contextmanager
def catalog_database(url: str | None) -> Iterator[str | None]:
    """``url`` itself, ``None`` (SQLite), or for ``local`` a database of a throwaway cluster."""
    if url != "local":
        yield url
        return
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise SystemExit("error: PostgreSQL is not installed (apt-get install postgresql)")
    with PostgresServer(bin_dir) as server:
        yield server.new_database()


def empty_catalog(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {', '.join(CATALOG_TABLES)} CASCADE")


def stored_rows(dataset: Path, catalog_url: str | None) -> int:
    query = "SELECT COUNT(*) FROM images WHERE status = 'stored'"
    if catalog_url:
        import psycopg

        with psycopg.connect(catalog_url) as conn:
            return int(conn.execute(query).fetchone()[0])
    conn = sqlite3.connect(dataset / "catalog.sqlite")
    try:
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


def run(
    processes: int, url_list: Path, dataset: Path, redis_url: str, concurrency: int, catalog_url: str | None = None
) -> tuple[float, int]:
    """Seconds from the first start to the last exit, and stored rows (``processes`` 0: one
    process without the shared frontier)."""
    settings: dict[str, object] = {**ours_settings(concurrency, 64), "LOG_LEVEL": "WARNING", "DATASET_DIR": dataset}
    if catalog_url:
        settings["CATALOG_URL"] = catalog_url
    if processes:
        settings |= {
            "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
            "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
            "REDIS_URL": redis_url,
        }
    command = [*SCRAPY, "crawl", "urls", "-a", f"file={url_list}", "-a", "label=bench",
               *(arg for key, value in settings.items() for arg in ("-s", f"{key}={value}"))]
    started = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(max(processes, 1))]
    codes = [proc.wait(timeout=1800) for proc in procs]
    seconds = time.perf_counter() - started
    if any(codes):
        raise SystemExit(f"a crawl failed (exit codes {codes})")
    return seconds, stored_rows(dataset, catalog_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=600, help="distinct images in the list")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per response, s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="CONCURRENT_REQUESTS(_PER_DOMAIN) per process")
    parser.add_argument("--catalog-url", default=None, metavar="URL",
                        help="PostgreSQL catalog (emptied before each run), or 'local' for a throwaway cluster; "
                        "default: SQLite in each run's dataset folder")
    args = parser.parse_args(argv)
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("error: redis-server is not installed (apt-get install redis-server)")
    server = serve(make_images(args.count), args.latency)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rates: dict[int, list[float]] = {0: [], 1: [], 2: [], 3: []}
    try:
        with (RedisServer(binary) as redis_server, tempfile.TemporaryDirectory() as tmp,
              catalog_database(args.catalog_url) as catalog_url):
            url_list = Path(tmp) / "urls.txt"
            url_list.write_text("".join(f"{base}/img/{i}.jpg\n" for i in range(args.count)))
            for round_ in range(args.rounds):
                order = (0, 1, 2, 3) if round_ % 2 == 0 else (3, 2, 1, 0)
                for processes in order:
                    redis_server.client().flushall()
                    if catalog_url:
                        empty_catalog(catalog_url)
                    dataset = Path(tmp) / f"data-{round_}-{processes}"
                    seconds, stored = run(processes, url_list, dataset, redis_server.url, args.concurrency, catalog_url)
                    rates[processes].append(stored / seconds)
                    print(f"round {round_ + 1}, {processes} process(es): {stored} stored in {seconds:.1f} s "  # noqa: T201
                          f"= {stored / seconds:.0f} images/s (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        server.shutdown()
    catalog = "PostgreSQL catalog" if args.catalog_url else "SQLite catalog"
    print(f"\n{args.count} images, {args.latency * 1000:.0f} ms latency, {args.concurrency} concurrent "  # noqa: T201
          f"requests per process, {catalog}, median of {args.rounds} alternating rounds:")
    for processes, values in rates.items():
        what = f"{processes} process(es)" if processes else "1 process, no Redis"
        print(f"  {what}: {statistics.median(values):.0f} images/s "  # noqa: T201
              f"(runs: {', '.join(f'{v:.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
