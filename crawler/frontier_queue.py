"""The shared frontier's scheduler queue (``crawler.frontier``): scrapy-redis's priority queue
whose pop also leases the request, in one Redis script.

A module of its own because it subclasses scrapy-redis's queue, which imports redis: the
frontier's settings name it (``SCHEDULER_QUEUE_CLASS``) only when the frontier is on, so a crawl
without it never imports either.
"""

from __future__ import annotations

from typing import Any

from scrapy.http import Request
from scrapy_redis.queue import PriorityQueue

from crawler.frontier import ENTRY, LEASE, worker_keys

__all__ = ["LeasedPriorityQueue"]

# Pop the best request (scrapy-redis's priority order) and lease it in one atomic step.
_POP_AND_LEASE = """
local popped = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #popped == 0 then return false end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, 0)
redis.call('HSET', KEYS[2], popped[1], popped[2])
return popped[1]
"""
# Mark an entry seen (KEYS[1], the seen-set) and queue it (KEYS[2]) in one step, or neither:
# scrapy-redis's scheduler does the two in two commands, and a kill between them left a URL
# "seen" that no queue or lease held.
_SEEN_THEN_QUEUE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


class LeasedPriorityQueue(PriorityQueue):
    """scrapy-redis's priority queue whose ``pop`` also leases the request to this process.

    The request is removed from the queue and written to the process's lease hash by one Lua
    script, so no instant exists where a kill loses it; an entry is pushed only if the seen-set
    did not hold it, in one script too. The worker is the spider's
    :class:`Frontier`'s (``spider.frontier_worker``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pop = self.server.register_script(_POP_AND_LEASE)
        self._seen_then_queue = self.server.register_script(_SEEN_THEN_QUEUE)

    def push(self, request: Request) -> None:
        if ENTRY not in request.meta:
            super().push(request)
            return
        seen = self.spider.crawler.engine.scheduler.df
        self._seen_then_queue(
            keys=[seen.key, self.key],
            args=[seen.request_fingerprint(request), -request.priority, self._encode_request(request)],
        )

    def pop(self, timeout: int = 0) -> Request | None:
        worker = getattr(self.spider, "frontier_worker", None)
        if worker is None:  # pragma: no cover - Frontier sets it before the engine starts
            raise RuntimeError("LeasedPriorityQueue needs crawler.frontier.Frontier enabled")
        raw = self._pop(keys=[self.key, worker_keys(self.spider.name, worker)[1]])
        if not raw:
            return None
        request = self._decode_request(raw)
        request.meta[LEASE] = raw
        return request
