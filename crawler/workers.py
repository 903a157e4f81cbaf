"""Worker processes for the pipelines' per-image CPU work (decode, hash, write), on Scrapy's loop.

Why processes: Scrapy's download path runs Python on the reactor thread, and every thread of a
process shares one GIL. With decoding and hashing in threads, a 2-core machine stored 125-155
images/s while its CPUs were only ~60% busy (``benchmarks/pipeline_throughput``); with the same
work in a worker process, each image's bytes sent out and only its hashes, sizes and staged
file's name sent back, the crawl process and the worker keep both cores fed (312-344 images/s).

Why not ``concurrent.futures.ProcessPoolExecutor``: it moves every task through two helper
threads in the crawl process (a feeder that pickles into a queue, a manager that reads results
and wakes the loop), and their GIL hand-offs with the busy reactor thread cost more than the
work they move: measured on the benchmark, 177-188 images/s with the executor against 204-230
with this pool, which reads and writes the workers' pipes on the reactor's own asyncio loop
(``loop.subprocess_exec``). It also survives a crashed worker: the executor marks the whole
pool broken; here only the tasks of the dead worker fail (``WorkerCrashed``) and a new worker
takes its place.

Protocol: each worker is ``python -m crawler.workers``; a frame is a 13-byte header (payload
length, task id, ok flag; big-endian) and a pickle (protocol 5): ``(function, args)`` to the
worker on its stdin, the result or the exception back on its stdout. The task id sits outside
the pickle, so a payload that fails to unpickle still fails only its own task. Functions
travel by reference (module and name), so they must be importable top-level functions. Only
this package's processes are unpickled, never data from the network.

Lifetime: the prepare pipeline, which sends the work, acquires the pool when the spider opens
(``acquire_pool``: one pool per process, shared by its crawls, ``PIPELINE_PROCESSES`` workers)
and releases it when the spider closes; the last release closes it. There is no pool with
``PIPELINE_PROCESSES = 0``, under a reactor other than Scrapy's default asyncio one, or for a
pipeline driven outside a crawl: the work then runs in the pipeline threads. Workers
ignore SIGINT and SIGTERM (the crawl shuts down gracefully and closes them) and exit when their
stdin closes, so a crawl killed with SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from crawler.cpus import usable_cpus

logger = logging.getLogger(__name__)

__all__ = ["WorkerCrashed", "WorkerPool", "acquire_pool", "current_pool", "default_process_count", "release_pool"]

T = TypeVar("T")

_HEADER = struct.Struct("!IQ?")  # payload bytes, task id, ok
_PROTOCOL = pickle.HIGHEST_PROTOCOL
# Modules the workers import before their first task, so it does not pay for them.
PRELOAD = ("crawler.images.prepare",)
# Seconds a closing pool waits for its workers to exit before killing them.
CLOSE_TIMEOUT = 10.0


class WorkerCrashed(RuntimeError):
    """The worker process running a task died before answering (a crash in a native decoder,
    the kernel's OOM killer, a signal). ``exitcode`` is its exit status (negative: the signal),
    ``None`` when unknown."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"pipeline worker process died (exit status {exitcode})")
        self.exitcode = exitcode


def worker_main(preload: Iterable[str] = ()) -> None:
    """The loop of one worker process: read a task frame from stdin, run it, answer on stdout,
    until stdin closes. Exceptions are sent back; one that cannot be pickled becomes a
    ``RuntimeError`` with its ``repr``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print() must not corrupt the protocol
    for module in preload:
        importlib.import_module(module)
    gc.freeze()  # the imported modules are for life: no full collection walks them (crawler.gctuning)
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the crawl closed the pool (or died)
        size, task_id, _ = _HEADER.unpack(header)
        payload = requests.read(size)
        ok = True
        try:
            func, args = pickle.loads(payload)
            reply = pickle.dumps(func(*args), _PROTOCOL)
        except BaseException as exc:  # noqa: BLE001 (every failure goes back to the caller)
            ok = False
            try:
                reply = pickle.dumps(exc, _PROTOCOL)
            except Exception:  # noqa: BLE001
                reply = pickle.dumps(RuntimeError(repr(exc)), _PROTOCOL)
        replies.write(_HEADER.pack(len(reply), task_id, ok) + reply)
        replies.flush()


class _Worker(asyncio.SubprocessProtocol):
    """The crawl's end of one worker process: frames its tasks, resolves their futures."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.transport: asyncio.SubprocessTransport | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.exited = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._stdout_closed = False

    @property
    def alive(self) -> bool:
        return not (self._stdout_closed or self.exited.done())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        self.stdin = stdin

    def submit(self, task_id: int, data: bytes, future: asyncio.Future[Any]) -> None:
        assert self.stdin is not None
        self.pending[task_id] = future
        self.stdin.write(_HEADER.pack(len(data), task_id, True) + data)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _HEADER.size:
            size, task_id, ok = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[start + _HEADER.size : end])
            start = end
            future = self.pending.pop(task_id, None)
            if future is None or future.done():  # cancelled meanwhile
                continue
            try:
                value = pickle.loads(payload)
            except Exception as exc:  # noqa: BLE001 (e.g. an exception class with a custom __init__)
                ok, value = False, RuntimeError(f"could not unpickle the worker's answer: {exc!r}")
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        del buffer[:start]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._stdout_closed = True
            self._fail_pending()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        self._fail_pending()

    def _fail_pending(self) -> None:
        # Only once both happened: every answer sent before the end has been read (stdout at
        # EOF), and the exit status is known (the process was reaped).
        if not (self.pending and self._stdout_closed and self.exited.done()):
            return
        exitcode = self.transport.get_returncode() if self.transport is not None else None
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(WorkerCrashed(exitcode))


class WorkerPool:
    """``size`` worker processes (``python -m crawler.workers``) fed from the running asyncio loop.

    ``await pool.run(func, *args)`` runs ``func(*args)`` in the worker with the fewest tasks
    queued and returns its result or raises its exception. Arguments and results are pickled:
    send bytes and small records, not decoded images. A dead worker's tasks raise
    ``WorkerCrashed`` and the next task starts a replacement.

    Raises:
        ValueError: if ``size`` < 1.
    """

    def __init__(self, size: int, *, preload: Iterable[str] = PRELOAD) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least 1 process, got {size}")
        self.size = size
        self.preload = tuple(preload)
        self._workers: list[_Worker] = []
        self._starting: asyncio.Task[None] | None = None
        self._next_id = 0
        self._closed = False

    async def start(self) -> None:
        """Start the missing workers (idempotent; concurrent callers wait for one start).

        Raises:
            RuntimeError: if the pool is closed.
        """
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        self._workers = [w for w in self._workers if w.alive]
        if len(self._workers) >= self.size:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn(self.size - len(self._workers)))
        await asyncio.shield(self._starting)

    async def _spawn(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        # The workers import this package by name: make sure they find the copy we run.
        root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root if not path else os.pathsep.join((root, path))}
        for _ in range(count):
            _, worker = await loop.subprocess_exec(
                _Worker,
                sys.executable, "-m", "crawler.workers", *self.preload,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None, env=env,
            )
            self._workers.append(worker)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Await ``func(*args)`` run in a worker process.

        Raises:
            WorkerCrashed: the worker died while the task was queued or running.
            RuntimeError: the pool is closed.
            Exception: whatever ``func`` raised (its pickled copy).
        """
        if len(self._workers) < self.size or not all(w.alive for w in self._workers):
            await self.start()
        worker = min(self._workers, key=lambda w: len(w.pending))
        self._next_id += 1
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        worker.submit(self._next_id, pickle.dumps((func, args), _PROTOCOL), future)
        return await future

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.transport.get_pid() for w in self._workers if w.alive and w.transport is not None]

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the workers' stdin and wait until they exit (killing any still running after
        ``timeout`` seconds). Idempotent."""
        self._closed = True
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        workers, self._workers = self._workers, []
        for worker in workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in workers:
            try:
                await asyncio.wait_for(asyncio.shield(worker.exited), timeout)
            except asyncio.TimeoutError:
                logger.warning("pipeline worker %s did not exit in %.0f s: killed", worker.transport.get_pid(), timeout)
                with contextlib.suppress(ProcessLookupError):
                    worker.transport.kill()
                await worker.exited
            worker.transport.close()


_current: WorkerPool | None = None
_users = 0


def default_process_count(value: object = None) -> int:
    """Worker processes for a ``PIPELINE_PROCESSES`` setting value: ``None`` or ``""`` gives
    one per CPU this process may use (``crawler.cpus.usable_cpus``) but one, at least 1, else
    ``int(value)``. The crawl process itself keeps about one core busy with Scrapy, the dedupe
    decisions and the catalog: on the 2-core benchmark machine one worker stored 2000 images in
    6.3-7.0 s and two took 7.6-7.7 s (three alternating pairs; more processes than cores only
    contend for them).

    Raises:
        ValueError: for a value below 0 or not an integer.
    """
    processes = max(1, usable_cpus() - 1) if value in (None, "") else int(value)  # type: ignore[call-overload]
    if processes < 0:
        raise ValueError(f"PIPELINE_PROCESSES must be >= 0 (0: no worker processes), got {processes}")
    return processes


def acquire_pool(size: int) -> WorkerPool | None:
    """The process's shared pool, created with ``size`` workers by its first user and started
    in the background (the workers import their modules while the first pages download).
    Every crawl of the process that acquires it shares it; pair each call with
    ``release_pool``. Returns ``None`` (work in threads instead) when ``size`` is 0 or no
    asyncio loop runs (a reactor other than Scrapy's default asyncio one)."""
    global _current, _users
    if size == 0:
        return None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        logger.info("no asyncio reactor: the pipelines work in threads, not worker processes")
        return None
    if _current is None:
        _current = WorkerPool(size)
        asyncio.ensure_future(_current.start()).add_done_callback(_log_start_failure)
    _users += 1
    return _current


def _log_start_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("could not start the pipeline worker processes: %r", task.exception())


async def release_pool() -> None:
    """Give back an ``acquire_pool``; the last user closes the pool (its workers exit)."""
    global _current, _users
    _users = max(0, _users - 1)
    if _users == 0 and _current is not None:
        pool, _current = _current, None
        await pool.close()


def current_pool() -> WorkerPool | None:
    """The shared pool while some crawl of this process holds it, else ``None``."""
    return _current


if __name__ == "__main__":
    worker_main(sys.argv[1:])
