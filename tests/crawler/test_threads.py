"""The pipeline threads: ``run_in_thread`` and the group-commit ``BatchThread``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from crawler.threads import BatchThread, run_in_thread


def failing(message: str) -> None:
    raise ValueError(message)


def test_run_in_thread_returns_results_and_raises_exceptions() -> None:
    async def work() -> tuple[Any, ...]:
        names = await asyncio.gather(*(run_in_thread(lambda: threading.current_thread().name) for _ in range(20)))
        value_error = await run_in_thread(lambda: ValueError("returned, not raised"))
        with pytest.raises(ValueError, match="raised"):
            await run_in_thread(failing, "raised")
        return names, value_error

    names, value_error = asyncio.run(work())
    assert all(name.startswith("pipeline") for name in names) and threading.current_thread().name not in names
    assert isinstance(value_error, ValueError)  # a returned exception is a result


def test_answers_finishing_together_wake_the_loop_once() -> None:
    """Many calls finishing while the loop is busy reach it with one wake-up, not one each."""

    async def work() -> int:
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        calls = [asyncio.ensure_future(run_in_thread(time.sleep, 0.01)) for _ in range(8)]
        await asyncio.sleep(0)  # submitted
        time.sleep(0.3)  # the loop is busy while they all finish
        await asyncio.gather(*calls)
        return wakeups

    assert asyncio.run(work()) == 1


def test_a_batch_thread_takes_every_task_queued_while_it_was_busy() -> None:
    gate = threading.Event()
    batches: list[list[int]] = []

    def double(tasks: list[int]) -> list[Any]:
        gate.wait(10)
        batches.append(list(tasks))
        return [ValueError(f"task {t}") if t == 3 else 2 * t for t in tasks]

    committer: BatchThread[int] = BatchThread(double, name="test-batches")

    async def work() -> list[Any]:
        first = asyncio.ensure_future(committer.run(0))
        await asyncio.sleep(0.1)  # the thread took task 0 and waits at the gate
        rest = [asyncio.ensure_future(committer.run(n)) for n in range(1, 6)]
        await asyncio.sleep(0.1)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(work())
    committer.close()
    assert batches == [[0], [1, 2, 3, 4, 5]]
    assert results[:3] == [0, 2, 4] and results[4:] == [8, 10]
    assert isinstance(results[3], ValueError) and str(results[3]) == "task 3"
    assert (committer.batches, committer.tasks) == (2, 6)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(committer.run(7))


def test_a_batch_function_that_raises_fails_its_whole_batch() -> None:
    committer: BatchThread[int] = BatchThread(lambda tasks: 1 / 0, name="test-raises")
    with pytest.raises(ZeroDivisionError):
        asyncio.run(committer.run(1))
    committer.close()
