"""Worker processes for the pipelines' per-image work (``crawler/workers.py``): where tasks run,
what comes back (results, exceptions, crashes), the workers' lifetime, ``prepare_image``, and
whole crawls with and without worker processes giving the same dataset.

The functions sent to the workers are module-level functions of this module (or the standard
library's): the workers import them by name, so the tests that send them put this folder on
the workers' PYTHONPATH (``worker_path``; ``WorkerPool`` passes ``os.environ`` on).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from crawler_testkit import encode, make_item, picture
from crawls import REPO, catalog_rows, gallery_command
from local_sites import LocalSite
from PIL import Image
from scrapy.exceptions import DropItem

from crawler.errors import UserError
from crawler.images.hashing import hashes_of
from crawler.images.decode import Rejected, verify_image
from crawler.images.prepare import prepare_image
from crawler.pipelines.prepare import PreparePipeline
from crawler.threads import default_thread_count
from crawler.workers import WorkerCrashed, WorkerPool, acquire_pool, current_pool, default_process_count, release_pool

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


# -- run in the workers (importable by name: module level) ----------------------------------------


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def echo(*args: Any) -> dict[str, Any]:
    return {"pid": os.getpid(), "args": args}


def reject(reason: str, detail: str) -> None:
    raise Rejected(reason, detail)


class Unpicklable(Exception):
    """Holds a lock: ``pickle.dumps`` of it fails."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable()


class TwoArguments(Exception):
    """Pickles (as ``TwoArguments(message)``) but cannot be unpickled: ``code`` is required."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def raise_two_arguments() -> None:
    raise TwoArguments("half a record", 7)


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def worker_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started in the test can import this module (its folder on their PYTHONPATH)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH")))))


def in_pool(size: int, work: Callable[[WorkerPool], Awaitable[T]], **options: Any) -> T:
    """``work(pool)`` on a fresh ``WorkerPool(size)`` in a new event loop; the pool closed after."""

    async def go() -> T:
        pool = WorkerPool(size, **options)
        try:
            return await asyncio.wait_for(work(pool), 60)
        finally:
            await pool.close()

    return asyncio.run(go())


def gone(pid: int) -> bool:
    """No such process, or a zombie (exited, not reaped by a parent that is not us)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def photo(seed: int, size: tuple[int, int] = (320, 240), quality: int = 85) -> bytes:
    """A photo-like JPEG (coarse and fine random colour fields), as benchmarks/pipeline_throughput."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    fine = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return encode(Image.blend(coarse, fine, 0.35), "JPEG", quality=quality)


# -- the pool --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_tasks_run_in_worker_processes_two_at_once() -> None:
    """Tasks run in processes other than the caller's, and two concurrent tasks on two workers."""

    async def work(pool: WorkerPool) -> tuple[int, list[int], list[int]]:
        single = await pool.run(os.getpid)
        both = await asyncio.gather(pool.run(time.sleep, 0.3), pool.run(os.getpid))  # one busy, one free
        pids = await asyncio.gather(*(pool.run(os.getpid) for _ in range(2)))
        assert both[0] is None
        return single, pids, pool.pids

    single, pids, live = in_pool(2, work, preload=())
    assert single != os.getpid() and single in live
    assert len(set(pids)) == 2 and set(pids) == set(live) and os.getpid() not in pids


@pytest.mark.timeout(60)
def test_bytes_and_records_round_trip(worker_path: None) -> None:
    """Bytes (larger than a pipe's buffer) and nested records go out and come back intact."""
    payload = np.random.default_rng(0).bytes(3_000_000)
    record = {"name": "cats", "sizes": [1, 2.5, None], "nested": {"raw": b"\x00\xff", "ok": True}}

    async def work(pool: WorkerPool) -> list[dict[str, Any]]:
        return await asyncio.gather(pool.run(echo, payload, record), pool.run(echo, b"", {}))

    first, second = in_pool(2, work)
    assert first["args"] == (payload, record) and second["args"] == (b"", {})
    assert first["pid"] != os.getpid() and second["pid"] != first["pid"]


@pytest.mark.timeout(60)
def test_exceptions_come_back_to_the_caller(worker_path: None) -> None:
    """A worker's exception reaches the caller (Rejected whole, an unpicklable one as
    RuntimeError), and the worker goes on serving."""

    async def work(pool: WorkerPool) -> None:
        pid = await pool.run(os.getpid)
        with pytest.raises(Rejected) as rejected:
            await pool.run(reject, "truncated", "detail")
        assert (type(rejected.value), rejected.value.reason, rejected.value.detail) == (Rejected, "truncated", "detail")
        with pytest.raises(ValueError, match="invalid literal"):
            await pool.run(int, "not a number")
        with pytest.raises(RuntimeError) as caught:
            await pool.run(raise_unpicklable)
        assert type(caught.value) is RuntimeError and "Unpicklable" in str(caught.value)
        assert "holds a lock" in str(caught.value)
        assert await pool.run(os.getpid) == pid

    in_pool(1, work)


@pytest.mark.timeout(60)
def test_an_exception_that_cannot_be_unpickled_does_not_hang_the_worker(worker_path: None) -> None:
    """An exception that pickles but cannot be rebuilt still fails its task, and the worker serves on."""

    async def work(pool: WorkerPool) -> None:
        pid = await pool.run(nap, 0)  # the worker has imported this module
        with pytest.raises(RuntimeError, match="TwoArguments"):  # (a TimeoutError: it never answered)
            await asyncio.wait_for(pool.run(raise_two_arguments), 2)
        assert await asyncio.wait_for(pool.run(os.getpid), 2) == pid

    in_pool(1, work)


@pytest.mark.timeout(60)
def test_a_crash_fails_only_the_dead_workers_task(worker_path: None) -> None:
    """A task that kills its worker raises WorkerCrashed; the other worker's task succeeds; a
    replacement worker (a new pid) takes later tasks."""

    async def work(pool: WorkerPool) -> tuple[set[int], Any, Any, list[int]]:
        before = set(await asyncio.gather(pool.run(os.getpid), pool.run(os.getpid)))
        crashed, survivor = await asyncio.gather(pool.run(kill_self), pool.run(nap, 0.5), return_exceptions=True)
        after = await asyncio.gather(pool.run(nap, 0.2), pool.run(nap, 0.2))
        return before, crashed, survivor, after

    before, crashed, survivor, after = in_pool(2, work)
    assert isinstance(crashed, WorkerCrashed), crashed
    assert survivor in before
    assert len(before) == 2 and len(set(after)) == 2 and survivor in after
    (new,) = set(after) - before
    assert gone(*(before - {survivor}))


@pytest.mark.timeout(60)
def test_answers_sent_before_a_crash_still_arrive(worker_path: None) -> None:
    """Tasks queued on one worker that dies: the one answered before (a reply larger than a pipe's
    buffer) succeeds, the one that killed it and the one queued behind it raise WorkerCrashed."""
    reply = bytes(range(256)) * 1000

    async def work(pool: WorkerPool) -> list[Any]:
        await pool.run(nap, 0)
        return await asyncio.gather(
            pool.run(echo, reply), pool.run(kill_self), pool.run(os.getpid), return_exceptions=True
        )

    answered, crashed, queued = in_pool(1, work)
    assert answered["args"] == (reply,)
    assert isinstance(crashed, WorkerCrashed) and crashed.exitcode == -signal.SIGKILL
    assert isinstance(queued, WorkerCrashed)


@pytest.mark.timeout(60)
def test_a_crash_reports_the_signal() -> None:
    """WorkerCrashed.exitcode is -9 for a worker killed with SIGKILL, crash after crash."""

    async def work(pool: WorkerPool) -> list[int | None]:
        codes = []
        for _ in range(5):
            pid = await pool.run(os.getpid)
            with pytest.raises(WorkerCrashed) as caught:
                await pool.run(os.kill, pid, signal.SIGKILL)  # a 1-worker pool: its own pid
            codes.append(caught.value.exitcode)
            await asyncio.sleep(0.2)  # (not what this test is about: see the next test)
        return codes

    assert in_pool(1, work, preload=()) == [-signal.SIGKILL] * 5


@pytest.mark.timeout(60)
def test_the_task_right_after_a_crash_runs_in_a_new_worker() -> None:
    """The first task submitted after a crash is answered, by a new worker."""

    async def work(pool: WorkerPool) -> list[Any]:
        outcomes = []
        for _ in range(5):
            pid = await pool.run(os.getpid)
            with pytest.raises(WorkerCrashed):
                await pool.run(os.kill, pid, signal.SIGKILL)
            try:
                new = await pool.run(os.getpid)
            except WorkerCrashed as exc:
                outcomes.append(exc)
            else:
                outcomes.append(new != pid)
        return outcomes

    assert in_pool(1, work, preload=()) == [True] * 5


@pytest.mark.timeout(60)
def test_close_ends_the_workers_and_later_runs_fail() -> None:
    """After close() the worker processes are gone and run() raises RuntimeError; close() again is a no-op."""

    async def work() -> tuple[list[int], list[bool], list[int]]:
        pool = WorkerPool(2, preload=())
        await asyncio.gather(pool.run(os.getpid), pool.run(os.getpid))
        pids = pool.pids
        assert len(pids) == 2 and not any(gone(pid) for pid in pids)
        await pool.close()
        ended = [gone(pid) for pid in pids]
        with pytest.raises(RuntimeError, match="closed"):
            await pool.run(os.getpid)
        await pool.close()
        return pids, ended, pool.pids

    pids, ended, left = asyncio.run(work())
    assert ended == [True, True] and left == []


@pytest.mark.timeout(60)
def test_workers_ignore_sigint_and_sigterm() -> None:
    """Ctrl-C (SIGINT) or SIGTERM sent to a worker leaves it answering: the crawl closes it."""

    async def work(pool: WorkerPool) -> tuple[int, int]:
        pid = await pool.run(os.getpid)  # answered: its signal handlers are set
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert not gone(pid)
        return pid, await pool.run(os.getpid)

    before, after = in_pool(1, work, preload=())
    assert after == before


@pytest.mark.timeout(60)
def test_crawls_of_a_process_share_one_pool_closed_by_the_last() -> None:
    """acquire_pool: none for 0 processes or without an event loop; one shared pool per process,
    closed (its workers gone) by the last release_pool."""
    assert acquire_pool(2) is None and current_pool() is None  # no running loop: threads

    async def work() -> None:
        assert acquire_pool(0) is None and current_pool() is None
        first, second = acquire_pool(1), acquire_pool(3)
        try:
            assert first is second is current_pool() and first.size == 1
            pid = await first.run(os.getpid)
            await release_pool()
            assert current_pool() is first and await first.run(os.getpid) == pid  # the other crawl's
        finally:
            await release_pool()
        assert current_pool() is None and gone(pid)
        with pytest.raises(RuntimeError, match="closed"):
            await first.run(os.getpid)
        third = acquire_pool(1)
        try:
            assert third is not first and third is current_pool()
        finally:
            await release_pool()
        assert current_pool() is None

    asyncio.run(work())


@pytest.mark.parametrize(
    ("value", "expected"), [(None, max(1, default_thread_count() - 1)), ("", max(1, default_thread_count() - 1)), ("0", 0), (3, 3)]
)
def test_pipeline_processes_setting(value: object, expected: int) -> None:
    """PIPELINE_PROCESSES: unset means one worker per CPU this process may use, else the number."""
    assert default_process_count(value) == expected


def test_a_negative_pipeline_processes_stops_the_crawl(make_crawler, build) -> None:
    """PIPELINE_PROCESSES=-1 is refused when the prepare pipeline is built."""
    with pytest.raises(UserError, match="PIPELINE_PROCESSES"):
        build(PreparePipeline, make_crawler(PIPELINE_PROCESSES=-1))


KILLED_PARENT = """
import asyncio, os, time
from crawler.workers import WorkerPool

async def main():
    pool = WorkerPool(2)
    await asyncio.gather(pool.run(os.getpid), pool.run(os.getpid))
    busy = asyncio.ensure_future(pool.run(time.sleep, 1.5))  # one worker in a task when we die
    await asyncio.sleep(0.1)
    print(" ".join(map(str, pool.pids)), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.timeout(60)
def test_a_killed_crawl_leaves_no_worker(tmp_path: Path) -> None:
    """SIGKILL of the process that owns a pool ends its workers too (idle or busy) within 10 s."""
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(KILLED_PARENT))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = subprocess.Popen(
        [sys.executable, str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(pid) for pid in pids)
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if not gone(pid)] == []


# -- prepare_image ---------------------------------------------------------------------------------


def test_prepare_image_stages_the_original_bytes_with_the_hashes_of_verify(tmp_path: Path) -> None:
    """A plain JPEG: dedupe's hashes of verify's canonical image, the original bytes staged, their SHA-256."""
    body = photo(1)
    result = prepare_image(body, {}, tmp_dir=str(tmp_path))
    assert result.hashes == hashes_of(verify_image(body).image)
    assert "phash" in result.hashes and len(result.hashes) > 2  # the variants too
    staged = Path(result.staged)
    assert staged.parent == tmp_path and staged.read_bytes() == body
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert (result.width, result.height, result.source_width, result.source_height) == (320, 240, 320, 240)
    assert (result.format, result.source_format, result.reencoded, result.resized, result.body) == (
        "JPEG", "JPEG", False, False, None
    )
    assert list(tmp_path.iterdir()) == [staged]


def test_prepare_image_without_variants_or_folder(tmp_path: Path) -> None:
    """variants=False gives hashes_of(..., variants=False); no folder and no re-encode: nothing staged, body None."""
    body = photo(2)
    result = prepare_image(body, {}, variants=False)
    assert result.hashes == hashes_of(verify_image(body).image, variants=False)
    assert (result.staged, result.sha256, result.body) == (None, None, None)


def test_prepare_image_stages_the_resized_jpeg(tmp_path: Path) -> None:
    """With max_side the staged bytes are verify's re-encoded JPEG (longest side 100), hashed from them."""
    body = photo(3)
    limits = {"min_side": 32, "max_side": 100, "jpeg_quality": 90}
    expected = verify_image(body, **limits)
    result = prepare_image(body, limits, tmp_dir=str(tmp_path))
    stored = Path(result.staged).read_bytes()
    assert stored == expected.body != body
    with Image.open(io.BytesIO(stored)) as image:
        assert (image.format, image.size) == ("JPEG", (100, 75))
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert result.hashes == hashes_of(expected.image)
    assert (result.width, result.height, result.source_width, result.source_height) == (100, 75, 320, 240)
    assert (result.reencoded, result.resized, result.body) == (True, True, None)


def test_prepare_image_without_folder_returns_reencoded_bytes() -> None:
    """No folder: a re-encode (resize, or alpha to PNG) comes back as ``body``."""
    body = photo(4)
    resized = prepare_image(body, {"max_side": 100})
    assert resized.body == verify_image(body, max_side=100).body and resized.staged is None
    with Image.open(io.BytesIO(resized.body)) as image:
        assert max(image.size) == 100
    rgba = encode(picture(5, (120, 90), mode="RGBA"), "PNG")
    normalised = prepare_image(rgba, {})
    assert (normalised.format, normalised.reencoded) == ("PNG", True)
    assert normalised.body == verify_image(rgba).body and normalised.body[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_image_rejects_a_truncated_jpeg_and_stages_nothing(tmp_path: Path) -> None:
    """A truncated JPEG raises Rejected('truncated') and leaves no file behind."""
    body = photo(6)
    with pytest.raises(Rejected) as caught:
        prepare_image(body[: len(body) // 2], {}, tmp_dir=str(tmp_path))
    assert caught.value.reason == "truncated"
    assert list(tmp_path.iterdir()) == []


# -- whole crawls ----------------------------------------------------------------------------------

LATE = 1.0  # seconds the copies wait, so the originals are always judged first


class SlowCopiesSite(LocalSite):
    """A LocalSite whose ``/late/`` paths answer ``LATE`` seconds late."""

    def on_get(self, request: Any) -> None:
        if request.path.startswith("/late/"):
            time.sleep(LATE)
        super().on_get(request)


def mixed_site() -> SlowCopiesSite:
    """``/gallery``: 6 distinct photos, a PNG kept as is, an RGBA PNG (stored re-encoded), an
    exact and a near copy, a truncated JPEG, HTML served as a JPEG, a tiny PNG and a 404."""
    images = {f"/img/p{n}.jpg": ("image/jpeg", photo(100 + n)) for n in range(6)}
    images["/img/plain.png"] = ("image/png", encode(picture(60, (300, 200)), "PNG"))
    images["/img/alpha.png"] = ("image/png", encode(picture(61, (200, 150), mode="RGBA"), "PNG"))
    images["/img/smooth.jpg"] = ("image/jpeg", encode(picture(62, (400, 300)), "JPEG", quality=90))
    images["/late/copy-p0.jpg"] = images["/img/p0.jpg"]
    images["/late/small-smooth.jpg"] = (
        "image/jpeg", encode(picture(62, (200, 150)), "JPEG", quality=70)
    )
    images["/img/cut.jpg"] = ("image/jpeg", photo(120)[:5000])
    images["/img/page.jpg"] = ("image/jpeg", b"<!doctype html><html><body>not a picture</body></html>")
    images["/img/tiny.png"] = ("image/png", encode(picture(63, (16, 16)), "PNG"))
    tags = "".join(f'<img src="{path}">' for path in [*images, "/img/missing.jpg"])
    return SlowCopiesSite({
        "/robots.txt": ("text/plain", b"User-agent: *\nAllow: /\n"),
        "/gallery": ("text/html; charset=utf-8", f"<html><body>{tags}</body></html>".encode()),
        **images,
    })


def watch_workers(procs: list[subprocess.Popen[bytes]]) -> dict[int, set[int]]:
    """Until every process ends: the pids of each one's ``python -m crawler.workers`` children."""
    seen: dict[int, set[int]] = {proc.pid: set() for proc in procs}
    while any(proc.poll() is None for proc in procs):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid in seen and b"crawler.workers" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    seen[ppid].add(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
        time.sleep(0.03)
    return seen


COLUMNS = (
    "url", "label", "status", "reason", "path", "phash", "width", "height", "source_width", "source_height",
    "format", "sha256", "bytes", "duplicate_of", "hash_distance",
)


def catalog_of(dataset: Path) -> tuple[list[tuple[Any, ...]], list[tuple[str, str, str]]]:
    """The catalog's rows (``COLUMNS``) and its ``image_hashes`` as (url, kind, hash), sorted."""
    rows = sorted(tuple(row[c] for c in COLUMNS) for row in catalog_rows(dataset))
    conn = sqlite3.connect(dataset / "catalog.sqlite")
    try:
        hashes = conn.execute(
            "SELECT i.url, h.kind, h.hash FROM image_hashes h JOIN images i ON i.id = h.image_id"
        ).fetchall()
    finally:
        conn.close()
    return rows, sorted(hashes)


@pytest.mark.timeout(240)
def test_crawls_with_and_without_workers_make_the_same_dataset(tmp_path: Path) -> None:
    """The same site crawled with worker processes (default) and without (PIPELINE_PROCESSES=0):
    the same catalog rows and hashes, the same files, and no staged file left in .tmp/."""
    datasets = {"workers": tmp_path / "with", "threads": tmp_path / "without"}
    extra = {"workers": (), "threads": ("-s", "PIPELINE_PROCESSES=0")}
    with mixed_site() as site:
        logs = {name: (tmp_path / f"{name}.log").open("w") for name in datasets}
        procs = {
            name: subprocess.Popen(
                gallery_command(f"{site.url}/gallery", "pics", datasets[name], *extra[name]),
                cwd=REPO, stdout=logs[name], stderr=subprocess.STDOUT,
            )
            for name in datasets
        }
        try:
            seen = watch_workers(list(procs.values()))
        finally:
            for name, proc in procs.items():
                proc.wait(timeout=180)
                logs[name].close()
    for name, proc in procs.items():
        log = (tmp_path / f"{name}.log").read_text()
        assert proc.returncode == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    # The default crawl really used worker processes (one per CPU but one), the other none; all ended.
    assert len(seen[procs["workers"].pid]) == max(1, default_thread_count() - 1)
    assert seen[procs["threads"].pid] == set()
    assert all(gone(pid) for pid in seen[procs["workers"].pid])

    with_workers, without = catalog_of(datasets["workers"]), catalog_of(datasets["threads"])
    rows = with_workers[0]
    outcomes = Counter((row[2], row[3]) for row in rows)
    assert outcomes == Counter({
        ("stored", None): 9,
        ("duplicate", "exact"): 1,
        ("duplicate", "near"): 1,
        ("rejected", "truncated"): 1,
        ("rejected", "not_an_image"): 1,
        ("rejected", "too_small"): 1,
        ("rejected", "http_404"): 1,
    }), rows
    assert rows == without[0]
    assert with_workers[1] == without[1] and len(with_workers[1]) >= 9
    for dataset in datasets.values():
        files = sorted(str(p.relative_to(dataset)) for p in (dataset / "pics").iterdir())
        assert files == sorted(row[4] for row in rows if row[2] == "stored")
        for row in rows:
            if row[2] == "stored":
                assert hashlib.sha256((dataset / row[4]).read_bytes()).hexdigest() in row[4]
        assert (dataset / ".tmp").is_dir() and list((dataset / ".tmp").iterdir()) == []


# -- the verify pipeline and a dying worker --------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_worker_dying_on_an_image_rejects_it_as_worker_crashed(make_crawler, build, dataset_dir: Path) -> None:
    """A worker killed while verifying an item: the item is dropped as rejected/worker_crashed, with its stat."""
    verify = build(PreparePipeline, make_crawler(PIPELINE_PROCESSES=1))
    # Slow to decode (about 36 million pixels to inflate, convert and reduce), small to send.
    big = Image.new("RGB", (6000, 6000), (120, 80, 40))
    big.paste((20, 160, 220), (1000, 1000, 4000, 3000))
    body = encode(big, "PNG")
    item = make_item(url="http://127.0.0.1/huge.png", body=body, bytes=len(body))

    async def work() -> tuple[float, BaseException | None]:
        verify.open_spider()  # acquires the process's pool, as in a crawl
        pool = verify.pool
        try:
            assert pool is not None and current_pool() is pool and pool.size == 1
            await pool.run(os.getpid)  # started, preloaded
            started = time.monotonic()
            await pool.run(prepare_image, body, verify.limits, verify.hash_name, verify.variants, None, False)
            seconds = time.monotonic() - started
            task = asyncio.ensure_future(verify.process_item(item))
            await asyncio.sleep(0.1)
            while not task.done():  # kill whichever worker holds it until it gives up
                for pid in pool.pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                await asyncio.sleep(0.05)
            return seconds, task.exception()
        finally:
            closing = verify.close_spider()
            if closing is not None:
                await closing
            assert current_pool() is None

    seconds, error = asyncio.run(work())
    assert seconds > 0.3, f"the image takes only {seconds:.2f} s: the kill may come too late"
    assert isinstance(error, DropItem) and str(error) == "worker_crashed", repr(error)
    assert isinstance(error.__cause__, WorkerCrashed)
    assert (item["status"], item["reason"]) == ("rejected", "worker_crashed")
    assert "body" not in item and "staged" not in item
    assert verify.crawler.stats.get_value("verify/rejected/worker_crashed") == 1
    assert verify.crawler.stats.get_value("verify/ok") is None
    assert list((dataset_dir / ".tmp").iterdir()) == []


@pytest.mark.timeout(60)
def test_workers_freeze_their_start_up_objects() -> None:
    """A worker has moved the modules it preloaded out of the garbage collector's reach."""

    async def work(pool: WorkerPool) -> int:
        return await pool.run(gc.get_freeze_count)

    assert in_pool(1, work, preload=("json",)) > 1000
