"""Run CPU-bound or blocking work (decoding, hashing, SQLite, file writes) off Scrapy's reactor.

The work goes to one thread pool per process, sized by the ``PIPELINE_THREADS`` setting (the
``PipelineThreads`` extension applies it; default: the CPUs this process may run on). Pillow
(decode, convert, resize), hashlib, SQLite and file writes release the GIL, so these threads run
in parallel with each other and with the reactor thread. More threads than cores do not add
speed, they cost it: on the 2-core benchmark machine (``benchmarks/pipeline_throughput``) the
crawl used 26 CPU seconds for 2000 images with asyncio's default pool of 6 threads and 20-22
with 2-4 threads, and went from 98 to 113-125 images/s, because oversubscribed threads thrash
the GIL and the CPU caches. The per-image decode, hashes and file write run in worker processes
by default (``crawler.workers``); these threads then keep the catalog commits, and the
per-image work too when worker processes are off (``PIPELINE_PROCESSES = 0``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.threads import deferToThread

from crawler.cpus import usable_cpus
from crawler.setting_values import get_int

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

__all__ = ["PipelineThreads", "default_thread_count", "run_in_thread", "set_thread_count", "sha256_hex"]

T = TypeVar("T")

# Below this many bytes a SHA-256 (~2 us per KiB) costs less than a trip to a worker thread;
# above it, it would hold up the reactor (a 32 MiB body takes ~60 ms).
INLINE_HASH_BYTES = 256 * 1024


def default_thread_count() -> int:
    """The CPUs this process may run on (``crawler.cpus.usable_cpus``), at least 1."""
    return usable_cpus()


_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_size = default_thread_count()


def set_thread_count(threads: int) -> None:
    """Size the process's pipeline thread pool (``threads`` >= 1). Work already queued on a
    previous pool still runs there.

    Raises:
        ValueError: if ``threads`` < 1.
    """
    global _pool, _size
    if threads < 1:
        raise ValueError(f"PIPELINE_THREADS must be >= 1, got {threads}")
    with _lock:
        if threads != _size and _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None
        _size = threads


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_size, thread_name_prefix="pipeline")
        return _pool


async def run_in_thread(func: Callable[..., T], *args: object) -> T:
    """Await ``func(*args)`` run in the pipeline thread pool (see the module docstring).

    Uses the pool under the asyncio reactor (Scrapy's default) or whenever an asyncio loop is
    running (unit tests driving ``process_item`` with ``asyncio.run``), and the Twisted thread
    pool under any other reactor.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None or is_asyncio_available():
        loop = loop or asyncio.get_event_loop()
        return await loop.run_in_executor(_executor(), functools.partial(func, *args))
    return await maybe_deferred_to_future(deferToThread(func, *args))


async def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as lower-case hex: inline when small, in a worker thread when
    larger than ``INLINE_HASH_BYTES``, so a large image never stalls the reactor."""
    if len(data) <= INLINE_HASH_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await run_in_thread(_sha256_hex, data)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PipelineThreads:
    """Scrapy extension: size the pipeline thread pool from ``PIPELINE_THREADS`` (default
    ``default_thread_count()``, i.e. one thread per usable CPU).

    Raises:
        UserError: if ``PIPELINE_THREADS`` is not a whole number >= 0 (the crawl does not start).
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        set_thread_count(threads)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        threads = get_int(
            crawler.settings, "PIPELINE_THREADS", minimum=0, example=2, note="0: one per usable CPU"
        )
        return cls(default_thread_count() if threads == 0 else threads)
