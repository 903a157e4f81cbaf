"""The shared frontier (crawler/frontier.py): ``urls`` crawls on one Redis with scrapy-redis.

Real processes (``scrapy crawl urls`` as a user types it), a real ``redis-server`` on 127.0.0.1
(tests skip when Debian's package is not installed: ``make test`` installs it), a local image
server that logs every hit, one dataset folder shared by the processes, its catalog the SQLite
file in it or (``catalog_url``) one PostgreSQL database on a throwaway local cluster.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from crawls import REPO, SCRAPY, catalog_rows, run_crawl
from fixture_server import finish, start_crawl
from image_site import ImageSite, generated_images, real_photos_with_copies
from redis_server import RedisServer, find_redis_server
from scrapy_redis import picklecompat

FRONTIER = [
    "-s", "SCHEDULER=scrapy_redis.scheduler.Scheduler",
    "-s", "DUPEFILTER_CLASS=scrapy_redis.dupefilter.RFPDupeFilter",
]


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (make test installs it: apt-get install redis-server)")
    try:
        with RedisServer(binary) as server:
            yield server
    except RuntimeError as exc:
        pytest.skip(f"redis-server could not be started: {exc}")


@pytest.fixture
def redis_server(redis_session: RedisServer) -> RedisServer:
    """The session's Redis, emptied for this test."""
    redis_session.client().flushall()
    return redis_session


def frontier_args(redis_url: str, url_list: Path | None, *extra: str, catalog_url: str | None = None) -> list[str]:
    args = [*FRONTIER, "-s", f"REDIS_URL={redis_url}", "-s", "FRONTIER_LEASE_TTL=5", *extra]
    if catalog_url:
        args += ["-s", f"CATALOG_URL={catalog_url}"]
    return ["-a", f"file={url_list}", *args] if url_list else args


def dequeued(output: str) -> int:
    """Entries this process took from the shared queue (its ``scheduler/dequeued/redis`` stat)."""
    found = re.search(r"'scheduler/dequeued/redis': (\d+)", output)
    return int(found.group(1)) if found else 0


def check_dataset(dataset: Path, catalog_url: str | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crawler.dataset", "check", str(dataset),
         *(["--catalog-url", catalog_url] if catalog_url else [])],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def assert_one_row_per_url_one_file_per_stored_row(dataset: Path, urls: list[str], catalog_url: str | None = None) -> list:
    rows = catalog_rows(dataset, catalog_url)
    by_url = Counter(row["url"] for row in rows)
    assert sorted(by_url) == sorted(urls), set(urls) ^ set(by_url)
    assert max(by_url.values()) == 1, [url for url, n in by_url.items() if n > 1]
    stored = [row["path"] for row in rows if row["status"] == "stored"]
    assert len(set(stored)) == len(stored)
    on_disk = {str(path.relative_to(dataset)) for path in dataset.glob("*/*") if path.is_file()
               and not path.parts[-2].startswith(".")}
    assert on_disk == set(stored)
    assert (dataset / "catalog.sqlite").exists() == (not catalog_url)
    check_dataset(dataset, catalog_url)
    return rows


def test_three_processes_split_one_list_and_fetch_each_url_once(
    tmp_path: Path, redis_server: RedisServer, catalog_url: str | None
) -> None:
    images = generated_images(45)
    with ImageSite(images) as site:
        urls = [site.url(name) for name in images] + [site.url("missing.jpg")]
        url_list = tmp_path / "urls.txt"
        # One URL listed twice: still one request, one row.
        url_list.write_text("\n".join([*urls, urls[0]]) + "\n")
        dataset = tmp_path / "data"
        procs = [start_crawl("urls", dataset, "-a", "label=things",
                             *frontier_args(redis_server.url, url_list, catalog_url=catalog_url))
                 for _ in range(3)]
        results = [finish(proc) for proc in procs]
        for result in results:
            assert result.returncode == 0, result.stdout[-3000:]
        assert Counter(site.hits) == Counter(f"/img/{url.rsplit('/', 1)[1]}" for url in urls)
    # Every entry was taken from the one queue exactly once, whichever process took it.
    assert sum(dequeued(result.stdout) for result in results) == len(urls)
    rows = assert_one_row_per_url_one_file_per_stored_row(dataset, urls, catalog_url)
    assert Counter(row["status"] for row in rows) == {"stored": 45, "rejected": 1}
    assert not redis_server.client().keys("urls:frontier:*")  # no lease, no heartbeat left


def test_seen_set_never_hides_an_image_the_catalog_lacks(tmp_path: Path, redis_server: RedisServer) -> None:
    """scrapy-redis keeps its seen-set (SCHEDULER_PERSIST); the catalog decides what is done."""
    images = generated_images(6)
    with ImageSite(images) as site:
        urls = [site.url(name) for name in images]
        url_list = tmp_path / "urls.txt"
        url_list.write_text("\n".join(urls) + "\n")
        args = ["-a", "label=things", *frontier_args(redis_server.url, url_list)]
        first, second = tmp_path / "first", tmp_path / "second"
        for dataset in (first, second, first):
            result = run_crawl([*SCRAPY, "crawl", "urls", *args, "-s", f"DATASET_DIR={dataset}"])
            assert result.returncode == 0, result.stdout[-3000:]
            if dataset == first and len(site.hits) == len(urls):
                assert redis_server.client().scard("urls:dupefilter") == len(urls)  # all "seen"
        # The second dataset got every image though the seen-set held them all; the third crawl
        # (the first dataset again) fetched nothing: its catalog has them.
        assert Counter(site.hits) == Counter(f"/img/{name}" for name in images for _ in range(2))
    assert "6 already in the catalog" in result.stdout
    for dataset in (first, second):
        assert_one_row_per_url_one_file_per_stored_row(dataset, urls)


def test_urls_pushed_to_redis_are_crawled_by_a_process_without_a_list(tmp_path: Path, redis_server: RedisServer) -> None:
    images = generated_images(4)
    with ImageSite(images) as site:
        urls = [site.url(name) for name in images]
        client = redis_server.client()
        client.rpush("urls:start_urls", *(f"{url}\tpushed cats" for url in urls[:3]), urls[3])
        dataset = tmp_path / "data"
        # No -a file: a process that only takes from the frontier; -a label for the bare URL.
        result = run_crawl([*SCRAPY, "crawl", "urls", "-a", "label=bare", *frontier_args(redis_server.url, None),
                            "-s", f"DATASET_DIR={dataset}"])
        assert result.returncode == 0, result.stdout[-3000:]
        assert sorted(site.hits) == sorted(f"/img/{name}" for name in images)
    rows = assert_one_row_per_url_one_file_per_stored_row(dataset, urls)
    assert Counter(row["label"] for row in rows) == {"pushed cats": 3, "bare": 1}
    assert client.llen("urls:start_urls") == 0


def test_only_the_urls_spider_runs_on_the_shared_frontier(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SCRAPY, "crawl", "gallery", "-a", "label=x", "-a", "start_urls=http://127.0.0.1:9/",
         *FRONTIER, "-s", f"DATASET_DIR={tmp_path / 'data'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "only the urls spider" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_three_processes_crawl_500_real_photos_and_copies_each_once(
    tmp_path: Path, redis_server: RedisServer, hymenoptera: Path, catalog_url: str | None
) -> None:
    """Every hymenoptera photo plus 50 exact and 50 near copies, split among three processes:
    each URL downloaded once, one row per URL, each picture stored once."""
    images = real_photos_with_copies(hymenoptera, 400, copies=50)
    with ImageSite(images) as site:
        urls = [site.url(name) for name in images]
        url_list = tmp_path / "urls.txt"
        url_list.write_text("\n".join(urls) + "\n")
        dataset = tmp_path / "data"
        args = ["-a", "label=insects", *frontier_args(redis_server.url, url_list, catalog_url=catalog_url)]
        results = [finish(proc, timeout=600) for proc in [start_crawl("urls", dataset, *args) for _ in range(3)]]
        for result in results:
            assert result.returncode == 0, result.stdout[-3000:]
        assert Counter(site.hits) == Counter(f"/img/{name}" for name in images)  # each URL once
    assert len(urls) >= 490
    assert sum(dequeued(result.stdout) for result in results) == len(urls)
    assert all(dequeued(result.stdout) for result in results)  # every process took a share
    rows = assert_one_row_per_url_one_file_per_stored_row(dataset, urls, catalog_url)
    statuses = Counter(row["status"] for row in rows)
    assert statuses["stored"] + statuses["duplicate"] == len(urls)
    by_url = {row["url"].rsplit("/", 1)[1]: row for row in rows}
    # Each exact copy and its photo: one stored, one duplicate, whichever process came first.
    for i in range(50):
        sha = by_url[f"exact{i}.jpg"]["sha256"]
        assert sorted(row["status"] for row in rows if row["sha256"] == sha) == ["duplicate", "stored"]
    sha_stored = Counter(row["sha256"] for row in rows if row["status"] == "stored")
    assert max(sha_stored.values()) == 1
    assert statuses["duplicate"] >= 50


def leased_urls(client: object, pid: int) -> set[str]:
    """URLs of the entries the crawl process ``pid`` held (popped, not finished) in Redis."""
    urls: set[str] = set()
    for key in client.keys("urls:frontier:leases:*"):  # type: ignore[attr-defined]
        if f"-{pid}-" in key.decode():
            urls |= {picklecompat.loads(raw)["url"] for raw in client.hkeys(key)}  # type: ignore[attr-defined]
    return urls


@pytest.mark.slow
def test_a_killed_process_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, redis_server: RedisServer, hymenoptera: Path, catalog_url: str | None
) -> None:
    """Three processes crawl about 500 real photos and near copies (every hymenoptera photo,
    50 exact and 50 near copies); one is SIGKILLed mid-crawl and started again."""
    images = real_photos_with_copies(hymenoptera, 400, copies=50)
    with ImageSite(images, latency=0.03) as site:
        urls = [site.url(name) for name in images]
        url_list = tmp_path / "urls.txt"
        url_list.write_text("\n".join(urls) + "\n")
        dataset = tmp_path / "data"
        args = ["-a", "label=insects", *frontier_args(redis_server.url, url_list, catalog_url=catalog_url)]
        procs = [start_crawl("urls", dataset, *args) for _ in range(3)]
        deadline = time.monotonic() + 300
        while len(site.hits) < len(urls) // 3:
            ended = [proc for proc in procs if proc.poll() is not None]
            assert not ended, finish(ended[0]).stdout[-3000:]
            assert time.monotonic() < deadline, site.hits[-5:]
            time.sleep(0.05)
        victim = procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
        in_flight = leased_urls(redis_server.client(), victim.pid)
        assert in_flight, "the killed process held no entry: the kill came too late to test anything"
        procs[0] = start_crawl("urls", dataset, *args)
        results = [finish(proc, timeout=600) for proc in procs]
        for result in results:
            assert result.returncode == 0, result.stdout[-3000:]
        hits = Counter(site.hits)
    assert set(hits) == {f"/img/{name}" for name in images}  # nothing lost
    twice = {path for path, n in hits.items() if n > 1}
    assert max(hits.values()) <= 2
    # Only entries the killed process held (popped, no catalog row yet) were fetched again.
    assert twice <= {url.removeprefix(site.base) for url in in_flight}
    rows = assert_one_row_per_url_one_file_per_stored_row(dataset, urls, catalog_url)  # nothing stored twice
    statuses = Counter(row["status"] for row in rows)
    assert statuses["stored"] + statuses["duplicate"] == len(urls)
    # Exact copies are judged against the catalog of all processes: each at most once stored.
    sha_stored = Counter(row["sha256"] for row in rows if row["status"] == "stored")
    assert max(sha_stored.values()) == 1
    assert sum("taken over" in r.stdout or "queued again" in r.stdout for r in results) >= 1


def test_an_unreachable_redis_is_one_line_error(tmp_path: Path) -> None:
    url_list = tmp_path / "urls.txt"
    url_list.write_text("http://127.0.0.1:9/a.jpg\n")
    result = subprocess.run(
        [*SCRAPY, "crawl", "urls", "-a", "label=x", *frontier_args("redis://:hunter2@127.0.0.1:1/0", url_list),
         "-s", f"DATASET_DIR={tmp_path / 'data'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot reach Redis at redis://:***@127.0.0.1:1/0" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
