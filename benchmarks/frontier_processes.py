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

Reproduce::

    .venv/bin/python -m benchmarks.frontier_processes [--count 600] [--latency 0.05] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline_throughput import REPO, SCRAPY, make_images, ours_settings, serve

sys.path.append(str(REPO / "tests" / "crawler"))
from redis_server import RedisServer, find_redis_server  # noqa: E402


def run(processes: int, url_list: Path, dataset: Path, redis_url: str, concurrency: int) -> tuple[float, int]:
    """Seconds from the first start to the last exit, and stored rows (``processes`` 0: one
    process without the shared frontier)."""
    settings: dict[str, object] = {**ours_settings(concurrency, 64), "LOG_LEVEL": "WARNING", "DATASET_DIR": dataset}
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
    conn = sqlite3.connect(dataset / "catalog.sqlite")
    try:
        stored = conn.execute("SELECT COUNT(*) FROM images WHERE status = 'stored'").fetchone()[0]
    finally:
        conn.close()
    return seconds, stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=600, help="distinct images in the list")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per response, s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="CONCURRENT_REQUESTS(_PER_DOMAIN) per process")
    args = parser.parse_args(argv)
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("error: redis-server is not installed (apt-get install redis-server)")
    server = serve(make_images(args.count), args.latency)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rates: dict[int, list[float]] = {0: [], 1: [], 2: [], 3: []}
    try:
        with RedisServer(binary) as redis_server, tempfile.TemporaryDirectory() as tmp:
            url_list = Path(tmp) / "urls.txt"
            url_list.write_text("".join(f"{base}/img/{i}.jpg\n" for i in range(args.count)))
            for round_ in range(args.rounds):
                order = (0, 1, 2, 3) if round_ % 2 == 0 else (3, 2, 1, 0)
                for processes in order:
                    redis_server.client().flushall()
                    dataset = Path(tmp) / f"data-{round_}-{processes}"
                    seconds, stored = run(processes, url_list, dataset, redis_server.url, args.concurrency)
                    rates[processes].append(stored / seconds)
                    print(f"round {round_ + 1}, {processes} process(es): {stored} stored in {seconds:.1f} s "  # noqa: T201
                          f"= {stored / seconds:.0f} images/s (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        server.shutdown()
    print(f"\n{args.count} images, {args.latency * 1000:.0f} ms latency, {args.concurrency} concurrent "  # noqa: T201
          f"requests per process, median of {args.rounds} alternating rounds:")
    for processes, values in rates.items():
        what = f"{processes} process(es)" if processes else "1 process, no Redis"
        print(f"  {what}: {statistics.median(values):.0f} images/s "  # noqa: T201
              f"(runs: {', '.join(f'{v:.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
