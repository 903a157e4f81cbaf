"""Run CPU-bound or blocking work (decoding, hashing, SQLite, fsync) off Scrapy's reactor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.threads import deferToThread

__all__ = ["run_in_thread"]

T = TypeVar("T")


async def run_in_thread(func: Callable[..., T], *args: object) -> T:
    """Await ``func(*args)`` run in a worker thread.

    Uses asyncio's default executor under the asyncio reactor (Scrapy's default) or when an
    asyncio loop is running (unit tests driving ``process_item`` with ``asyncio.run``), and the
    Twisted thread pool under any other reactor. Pillow and hashlib release the GIL while they
    decode and hash, so threads give real parallelism here.
    """
    try:
        asyncio.get_running_loop()
        use_asyncio = True
    except RuntimeError:
        use_asyncio = is_asyncio_available()
    if use_asyncio:
        return await asyncio.to_thread(func, *args)
    return await maybe_deferred_to_future(deferToThread(func, *args))
