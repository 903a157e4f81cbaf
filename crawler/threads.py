"""Run CPU-bound or blocking work (decoding, hashing, SQLite, file writes) off Scrapy's reactor.

The work goes to one thread pool per process, sized by the ``PIPELINE_THREADS`` setting (the
``PipelineThreads`` extension applies it; default: the CPUs this process may run on). Pillow
(decode, convert, resize), hashlib, SQLite and file writes release the GIL, so these threads run
in parallel with each other and with the reactor thread. More threads than cores do not add
speed, they cost it: on the 2-core benchmark machine (``benchmarks/pipeline_throughput``) the
crawl used 26 CPU seconds for 2000 images with asyncio's default pool of 6 threads and 20-22
with 2-4 threads, and went from 98 to 113-125 images/s, because oversubscribed threads thrash
the GIL and the CPU caches. The per-image decode, hashes and file write run in worker processes
by default (``crawler.workers``); these threads then keep the dedupe decisions, and the
per-image work too when worker processes are off (``PIPELINE_PROCESSES = 0``). The store's
catalog commits have a thread of their own (``BatchThread``: group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.threads import deferToThread

from crawler.cpus import usable_cpus
from crawler.setting_values import get_int

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

__all__ = ["BatchThread", "PipelineThreads", "default_thread_count", "run_in_thread", "set_thread_count", "sha256_hex"]

T = TypeVar("T")
Task = TypeVar("Task")

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
    pool under any other reactor. The answers of several calls finishing while the loop is busy
    reach it with one wake-up (``_Wakeups``), not one each as ``loop.run_in_executor``'s do.
    """
    loop = _running_loop()
    if loop is None and is_asyncio_available():
        loop = asyncio.get_event_loop()
        return await loop.run_in_executor(_executor(), functools.partial(func, *args))
    if loop is None:
        return await maybe_deferred_to_future(deferToThread(func, *args))
    future = loop.create_future()
    _executor().submit(_run_and_answer, _wakeups(loop), future, func, args)
    return await future


def _run_and_answer(wakeups: _Wakeups, future: asyncio.Future[Any], func: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        answer = (future, True, func(*args))
    except BaseException as exc:  # noqa: BLE001 (the caller's exception, raised where it awaits)
        answer = (future, False, exc)
    wakeups.answer([answer])


class _Wakeups:
    """Answers from threads for the futures of one event loop: the first answer since the loop
    last ran schedules one ``call_soon_threadsafe`` (a write to the loop's wake-up pipe), and
    the ones that arrive before it runs ride along."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._answers: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._lock = threading.Lock()

    def answer(self, answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
        """Hand ``(future, ok, value)`` answers to the loop (from any thread): the value is the
        result, or (not ``ok``) the exception raised to the awaiting coroutine."""
        with self._lock:
            wake = not self._answers
            self._answers.extend(answers)
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop closed: nobody waits for these any more
                with self._lock:
                    self._answers.clear()

    def _deliver(self) -> None:
        with self._lock:
            answers, self._answers = self._answers, []
        _resolve(answers)


_loop_wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wakeups] = weakref.WeakKeyDictionary()


def _wakeups(loop: asyncio.AbstractEventLoop) -> _Wakeups:
    found = _loop_wakeups.get(loop)
    if found is None:
        with _lock:
            found = _loop_wakeups.setdefault(loop, _Wakeups(loop))
    return found


async def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as lower-case hex: inline when small, in a worker thread when
    larger than ``INLINE_HASH_BYTES``, so a large image never stalls the reactor."""
    if len(data) <= INLINE_HASH_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await run_in_thread(_sha256_hex, data)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in answers:
        if future.done():  # cancelled meanwhile
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class BatchThread(Generic[Task]):
    """One thread that runs ``func`` over every task queued while it was busy: group commit.

    ``await batches.run(task)`` queues ``task``; the thread takes all queued tasks at once,
    calls ``func(tasks)`` (which returns one outcome per task, in order) and wakes the waiting
    coroutines with one call onto their event loop per batch. The thread is woken once the
    loop has run what was ready when the first task arrived (``call_soon``), so tasks queued by
    the callbacks of one loop pass (items whose previous stage finished together) make one
    batch rather than the first alone and the rest after it; no task waits for a timer. A catalog commit per batch instead
    of per image cuts both the database's work (one transaction, one re-check query) and the
    reactor's (one wake-up instead of a thread-pool round trip per image). An outcome that is an
    exception instance is raised by that task's ``run``; an exception from ``func`` itself is
    raised by every task of the batch.

    Without a running asyncio loop (a reactor other than Scrapy's asyncio one) each task runs
    alone in the pipeline threads (``run_in_thread``). Counters: ``batches``, ``tasks``, and
    ``cpu_seconds`` (the thread's CPU time spent in ``func``).
    """

    def __init__(self, func: Callable[[list[Task]], Sequence[Any]], *, name: str) -> None:
        self.func = func
        self.name = name
        self.batches = 0
        self.tasks = 0
        self.cpu_seconds = 0.0
        self._queue: list[tuple[Task, asyncio.Future[Any]]] = []  # for the thread
        self._arriving: list[tuple[Task, asyncio.Future[Any]]] = []  # until the loop's pass ends
        self._kick_scheduled = False
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def run(self, task: Task) -> Any:
        """Await ``task``'s outcome (see the class docstring).

        Raises:
            RuntimeError: the thread was closed.
            BaseException: the task's exception outcome, or the one ``func`` raised.
        """
        loop = _running_loop()
        if loop is None:
            return self._outcome((await run_in_thread(self._run_batch, [task]))[0])
        future = loop.create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._arriving.append((task, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
            if not self._kick_scheduled:
                self._kick_scheduled = True
                loop.call_soon(self._kick)
        return await future

    def _kick(self) -> None:
        """Hand the tasks that arrived to the thread."""
        with self._ready:
            self._kick_scheduled = False
            self._queue.extend(self._arriving)
            self._arriving.clear()
            self._ready.notify()

    @staticmethod
    def _outcome(outcome: Any) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _run_batch(self, tasks: list[Task]) -> list[Any]:
        started = time.thread_time()
        try:
            outcomes = list(self.func(tasks))
        except BaseException as exc:  # noqa: BLE001 (every waiting task gets it; the thread lives on)
            outcomes = [exc] * len(tasks)
        self.batches += 1
        self.tasks += len(tasks)
        self.cpu_seconds += time.thread_time() - started
        if len(outcomes) != len(tasks):
            error = RuntimeError(f"{self.name}: {len(outcomes)} outcomes for {len(tasks)} tasks")
            outcomes = [error] * len(tasks)
        return outcomes

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                batch, self._queue = self._queue, []
            if not batch:
                return  # closed, nothing left
            outcomes = self._run_batch([task for task, _ in batch])
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                answer = (future, not isinstance(outcome, BaseException), outcome)
                by_loop.setdefault(future.get_loop(), []).append(answer)
            for loop, answers in by_loop.items():
                _wakeups(loop).answer(answers)

    def close(self) -> None:
        """Finish the queued tasks and stop the thread (blocking; idempotent). Later ``run``
        calls raise ``RuntimeError``."""
        with self._ready:
            self._closed = True
            self._queue.extend(self._arriving)
            self._arriving.clear()
            self._ready.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


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
