"""A frontier shared by crawl processes on any machines, over Redis with scrapy-redis.

Turned on by scrapy-redis's own settings (``SCHEDULER = "scrapy_redis.scheduler.Scheduler"``,
``DUPEFILTER_CLASS = "scrapy_redis.dupefilter.RFPDupeFilter"``, ``REDIS_URL``), for the ``urls``
spider: every process pushes the entries of its ``-a file=`` list (and the URLs pushed to the
Redis list ``<spider>:start_urls``) into scrapy-redis's shared queue through its shared seen-set,
so each URL is queued once, and every process pops from that queue. Each queued request is one
*entry* (an image URL and its label); a downloader middleware answers it at once, without a
download, and the spider turns it into the item the pipelines download once.

What scrapy-redis lacks, added here: a popped request lives only in the popping process's
memory, so a SIGKILL loses it while the seen-set keeps saying "seen". ``LeasedPriorityQueue``
(``crawler.frontier_queue``) therefore pops a request and records it in the process's *lease*
hash in one Redis script; the lease is released once the entry's item has gone through the
pipelines (its catalog row is written). Each process keeps a heartbeat key alive (``FRONTIER_LEASE_TTL`` seconds); any process,
at start and whenever it is idle, takes over the leases of processes whose heartbeat expired and
puts back in the queue each entry whose URL has no catalog row. A process closes only once the
queue, the pushed list and every other process's leases are empty. A process that starts alone
on an empty frontier clears the seen-set: what it holds was finished (or belongs to another
dataset), and the catalog, not the seen-set, says what is done.

Redis keys, besides scrapy-redis's ``<spider>:requests`` and ``<spider>:dupefilter``:
``<spider>:frontier:alive:<worker>`` (heartbeat), ``<spider>:frontier:leases:<worker>``
(serialised request -> queue score) and ``<spider>:frontier:claimed:<worker>`` (leases taken
over, for the moment of their catalog check).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import warnings
from urllib.parse import urlsplit
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import CloseSpider, DontCloseSpider, NotConfigured, ScrapyDeprecationWarning
from scrapy.http import Request, Response
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.misc import load_object
from twisted.internet import task

from crawler.catalog import Catalog
from crawler.errors import UserError
from crawler.setting_values import get_int

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from scrapy_redis.scheduler import Scheduler as RedisScheduler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = [
    "ENTRY",
    "Frontier",
    "FrontierEntryMiddleware",
        "catalogued_urls",
    "enabled",
    "entry_request",
    "install",
]

# request.meta key marking a frontier entry (its value: {"label": ..., "query": ...}).
ENTRY = "frontier_entry"
# request.meta key holding the serialised request as leased (the lease hash's field).
LEASE = "frontier_lease"
# SQL parameters per catalog look-up (SQLite's default limit is 32766; 500 keeps them short).
_CHUNK = 500
# The scheduler queue class of the shared frontier (in a module of its own: it subclasses
# scrapy-redis's queue, which imports redis; this module imports neither until the frontier is on).
_LEASED_QUEUE = "crawler.frontier_queue.LeasedPriorityQueue"

# Move every lease of a dead worker (KEYS[1]) to our claimed hash (KEYS[2]): whoever moves them owns them.
_TAKE_OVER = """
local leases = redis.call('HGETALL', KEYS[1])
for i = 1, #leases, 2 do redis.call('HSET', KEYS[2], leases[i], leases[i + 1]) end
redis.call('DEL', KEYS[1])
return #leases / 2
"""

# Clear the seen-set (KEYS[2]) only on an empty frontier with no other live process: one step,
# so a process starting at the same instant either is seen alive or pushes after the clear.
_CLEAR_IF_ALONE = """
if redis.call('ZCARD', KEYS[1]) > 0 or redis.call('LLEN', KEYS[3]) > 0 then return -1 end
if #redis.call('KEYS', ARGV[1] .. ':leases:*') > 0 or #redis.call('KEYS', ARGV[1] .. ':claimed:*') > 0 then
  return -1
end
local alive = redis.call('KEYS', ARGV[1] .. ':alive:*')
if #alive > 1 or (#alive == 1 and alive[1] ~= ARGV[2]) then return -1 end
return redis.call('DEL', KEYS[2])
"""


def enabled(settings: BaseSettings) -> bool:
    """Whether ``SCHEDULER`` is scrapy-redis's scheduler (or a subclass): the shared frontier."""
    scheduler = settings.get("SCHEDULER")
    if not scheduler:
        return False
    cls = load_object(scheduler) if isinstance(scheduler, str) else scheduler
    # A subclass of scrapy-redis's scheduler imported scrapy_redis.scheduler to be defined; while
    # that module is not loaded, nothing here imports it (and redis: ~60 ms of every crawl's start).
    redis_scheduler = sys.modules.get("scrapy_redis.scheduler")
    return redis_scheduler is not None and isinstance(cls, type) and issubclass(cls, redis_scheduler.Scheduler)


def install(settings: BaseSettings) -> None:
    """Add the frontier's extension and downloader middleware to ``settings`` (not frozen yet)
    and lease popped requests, when :func:`enabled`; otherwise leave them alone."""
    if not enabled(settings):
        return
    # scrapy-redis 0.9.1's scheduler still passes spider= to the stats collector; harmless.
    warnings.filterwarnings(
        "ignore", message=".*'spider' argument to StatsCollector", category=ScrapyDeprecationWarning
    )
    from scrapy_redis.dupefilter import RFPDupeFilter

    dupefilter = settings.get("DUPEFILTER_CLASS")
    if not issubclass(load_object(dupefilter) if isinstance(dupefilter, str) else dupefilter, RFPDupeFilter):
        raise UserError(
            f"the shared frontier needs scrapy-redis's seen-set, not DUPEFILTER_CLASS={dupefilter} "
            "(-s DUPEFILTER_CLASS=scrapy_redis.dupefilter.RFPDupeFilter)"
        )
    queue = settings.get("SCHEDULER_QUEUE_CLASS") or "scrapy_redis.queue.PriorityQueue"
    if queue == "scrapy_redis.queue.PriorityQueue":
        _override(settings, "SCHEDULER_QUEUE_CLASS", _LEASED_QUEUE)
    elif queue != _LEASED_QUEUE:
        raise UserError(
            f"the shared frontier needs its leased priority queue, not SCHEDULER_QUEUE_CLASS={queue} "
            "(leave SCHEDULER_QUEUE_CLASS unset)"
        )
    middlewares = dict(settings.getdict("DOWNLOADER_MIDDLEWARES"))
    # Before every other middleware (OffsiteMiddleware is at 50): an entry is never downloaded.
    middlewares.setdefault(f"{__name__}.FrontierEntryMiddleware", 1)
    _override(settings, "DOWNLOADER_MIDDLEWARES", middlewares)
    extensions = dict(settings.getdict("EXTENSIONS"))
    extensions.setdefault(f"{__name__}.Frontier", 600)
    _override(settings, "EXTENSIONS", extensions)


def _override(settings: BaseSettings, name: str, value: Any) -> None:
    """Set ``name`` even over a ``-s`` value (which the new value extends or replaces)."""
    settings.set(name, value, priority=max(settings.getpriority(name) or 0, SETTINGS_PRIORITIES["spider"]))


def entry_request(url: str, label: str | None, query: str, callback: Any) -> Request:
    """The queued request for one image URL: its fingerprint is the image URL's, so the shared
    seen-set holds one fingerprint per image URL. ``dont_filter`` keeps the scheduler's own
    two-step check away: :class:`LeasedPriorityQueue` checks the seen-set and queues at once."""
    return Request(url, callback=callback, meta={ENTRY: {"label": label, "query": query}}, dont_filter=True)


def catalogued_urls(
    dataset_dir: str | os.PathLike[str], urls: Iterable[str] | None = None, catalog_url: str | None = None
) -> set[str]:
    """The URLs among ``urls`` (all, when ``None``) that have a catalog row, whatever its status
    (blocking; one query per 500 URLs, or one for all); ``catalog_url``: CATALOG_URL."""
    catalog = Catalog(dataset_dir, url=catalog_url)
    try:
        if urls is None:
            return {row["url"] for row in catalog.rows() if row["url"]}
        wanted = list(dict.fromkeys(urls))
        found: set[str] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            rows = catalog.rows(f"url IN ({','.join('?' * len(chunk))})", tuple(chunk))
            found.update(row["url"] for row in rows)
        return found
    finally:
        catalog.close()


def _without_password(url: str | None) -> str | None:
    """``url`` with its password (if any) shown as ``***``: error messages end up in logs."""
    password = urlsplit(url).password if url else None
    return url.replace(f":{password}@", ":***@") if url and password else url


def worker_keys(spider_name: str, worker: str) -> tuple[str, str]:
    prefix = f"{spider_name}:frontier"
    return f"{prefix}:alive:{worker}", f"{prefix}:leases:{worker}"


class FrontierEntryMiddleware:
    """Answer an entry request at once with an empty 200 response flagged ``frontier``: the
    image itself is downloaded by the download pipeline, once."""

    def process_request(self, request: Request) -> Response | None:
        if ENTRY in request.meta:
            return Response(request.url, status=200, request=request, flags=["frontier"])
        return None


class Frontier:
    """The shared frontier's per-process part: heartbeat, lease release, take-over, idle wait.

    Settings: ``FRONTIER_LEASE_TTL`` (seconds a silent process keeps its leases; longer than
    any stall of a live crawl), ``FRONTIER_START_URLS_BATCH`` (URLs taken from the pushed list
    per idle round; default ``CONCURRENT_REQUESTS``), scrapy-redis's ``REDIS_START_URLS_KEY``.
    Stats: ``frontier/pushed_urls``, ``frontier/taken_over`` (leases of dead processes taken),
    ``frontier/requeued`` (of those, entries put back: no catalog row),
    ``frontier/released_on_close`` (own unfinished entries put back at close).
    """

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        self.crawler = crawler
        import redis
        from scrapy_redis.connection import get_redis_from_settings

        self.server = get_redis_from_settings(settings)
        try:
            self.server.ping()
        except redis.RedisError as exc:
            where = _without_password(settings.get("REDIS_URL")) or (
                f"{settings.get('REDIS_HOST', 'localhost')}:{settings.get('REDIS_PORT', 6379)}"
            )
            raise UserError(
                f"the shared frontier cannot reach Redis at {where}: {exc} "
                "(start redis-server there, or fix -s REDIS_URL=redis://<host>:<port>/<db>)"
            ) from None
        self.ttl = get_int(settings, "FRONTIER_LEASE_TTL", unit="seconds", minimum=1, example=30)
        self.batch = get_int(settings, "FRONTIER_START_URLS_BATCH", minimum=0, example=100) or settings.getint(
            "CONCURRENT_REQUESTS"
        )
        self.start_urls_key = settings.get("REDIS_START_URLS_KEY") or "%(name)s:start_urls"
        self.dataset_dir = settings.get("DATASET_DIR")
        self.catalog_url = settings.get("CATALOG_URL")
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self._take_over = self.server.register_script(_TAKE_OVER)
        self._leases: dict[str, bytes] = {}  # url -> serialised request, for entries in flight
        self._dropped: list[bytes] = []  # released one heartbeat later (see item_dropped)
        self.taken = 0  # entries this process took from the queue
        self._beat: task.LoopingCall | None = None
        for handler, signal in (
            (self.spider_opened, signals.spider_opened),
            (self.spider_idle, signals.spider_idle),
            (self.spider_closed, signals.spider_closed),
            (self.entry_popped, signals.response_received),
            (self.item_scraped, signals.item_scraped),
            (self.item_dropped, signals.item_dropped),
            (self.item_dropped, signals.item_error),
        ):
            crawler.signals.connect(handler, signal=signal)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not enabled(crawler.settings):
            raise NotConfigured("SCHEDULER is not scrapy-redis's")
        return cls(crawler)

    # -- keys and queue ------------------------------------------------------------------
    @property
    def spider(self) -> Any:
        return self.crawler.spider

    def _scheduler(self) -> RedisScheduler:
        return self.crawler.engine.scheduler  # type: ignore[union-attr,return-value]

    def _queue(self) -> Any:  # crawler.frontier_queue.LeasedPriorityQueue
        return self._scheduler().queue

    def _prefix(self) -> str:
        return f"{self.spider.name}:frontier"

    # -- life cycle ----------------------------------------------------------------------
    def spider_opened(self) -> None:
        spider = self.spider
        spider.frontier_worker = self.worker
        alive, _ = worker_keys(spider.name, self.worker)
        self.server.set(alive, "1", ex=self.ttl)
        start_urls = self.start_urls_key % {"name": spider.name}
        keys = [self._queue().key, self._scheduler().df.key, start_urls]
        if self.server.eval(_CLEAR_IF_ALONE, len(keys), *keys, self._prefix(), alive) == 1:
            logger.info("frontier: alone on an empty frontier, the old seen-set is cleared")
        self.take_over()
        self._beat = task.LoopingCall(self.heartbeat)
        self._beat.start(self.ttl / 3, now=False)
        logger.info("frontier: worker %s on %s", self.worker, self.server.connection_pool.connection_kwargs.get("host"))

    def heartbeat(self) -> None:
        alive, leases = worker_keys(self.spider.name, self.worker)
        self.server.set(alive, "1", ex=self.ttl)
        dropped, self._dropped = self._dropped, []
        if dropped:
            self.server.hdel(leases, *dropped)

    def spider_idle(self) -> None:
        self.pull_start_urls()
        self.take_over()
        if self._pending():
            raise DontCloseSpider
        if not self.taken:
            # Not a failed crawl ("nothing_crawled", crawler.progress): the other processes took
            # every entry. This CloseSpider is the one the engine keeps: spider_idle handlers run
            # in EXTENSIONS order, and this extension comes after CrawlProgress.
            logger.info("frontier: the shared queue is empty; other processes took every entry")
            raise CloseSpider("finished")

    def spider_closed(self) -> None:
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        alive, leases = worker_keys(self.spider.name, self.worker)
        self.heartbeat()  # release the dropped items' leases
        requeued = self._requeue(leases)
        self.server.delete(alive)
        if requeued:
            self._inc("released_on_close", requeued)
            logger.info("frontier: %d unfinished entries put back in the shared queue", requeued)

    # -- leases --------------------------------------------------------------------------
    def entry_popped(self, request: Request, **kwargs: Any) -> None:
        """Remember the lease of an entry answered by :class:`FrontierEntryMiddleware`."""
        raw = request.meta.get(LEASE)
        if raw is not None:
            self.taken += 1
            self._leases[request.url] = raw

    def item_scraped(self, item: Any) -> None:
        # The store pipeline committed the item's row before the item counts as scraped.
        raw = self._leases.pop(item.get("url"), None)
        if raw is not None:
            self.server.hdel(worker_keys(self.spider.name, self.worker)[1], raw)

    def item_dropped(self, item: Any, **kwargs: Any) -> None:
        # CatalogRecorder writes the drop's row in its own handler of this same signal: the
        # lease goes at the next heartbeat, once that row is committed.
        raw = self._leases.pop(item.get("url"), None)
        if raw is not None:
            self._dropped.append(raw)

    def take_over(self) -> int:
        """Take the leases of every process whose heartbeat expired and put back in the queue
        each entry without a catalog row; returns how many were put back."""
        requeued = 0
        prefix = self._prefix()
        # Taken leases wait under claimed:<this worker> until queued again; a taker that dies
        # meanwhile leaves them there for the next taker.
        claimed = f"{prefix}:claimed:{self.worker}"
        keys = [*self.server.scan_iter(f"{prefix}:leases:*"), *self.server.scan_iter(f"{prefix}:claimed:*")]
        for key in keys:
            worker = key.decode().rsplit(":", 1)[1]
            if worker == self.worker or self.server.exists(f"{prefix}:alive:{worker}"):
                continue
            taken = self._take_over(keys=[key, claimed])
            if not taken:
                continue
            self._inc("taken_over", int(taken))
            done_urls = self._requeue(claimed)
            requeued += done_urls
            logger.warning(
                "frontier: worker %s stopped without finishing; %d of its %d entries had no catalog "
                "row and are queued again", worker, done_urls, taken,
            )
        return requeued

    def _requeue(self, leases_key: str) -> int:
        """Put the entries of ``leases_key`` without a catalog row back in the queue and drop
        their leases; returns how many went back."""
        leased = self.server.hgetall(leases_key)
        if not leased:
            return 0
        queue = self._queue()
        requests = {raw: queue._decode_request(raw) for raw in leased}
        done = catalogued_urls(
            self.dataset_dir, (request.url for request in requests.values()), catalog_url=self.catalog_url
        )
        back = [raw for raw, request in requests.items() if request.url not in done]
        pipe = self.server.pipeline(transaction=True)
        for raw in back:
            pipe.execute_command("ZADD", queue.key, leased[raw], raw)
        pipe.hdel(leases_key, *leased)
        pipe.execute()
        if back:
            self._inc("requeued", len(back))
        return len(back)

    # -- the pushed list and the idle wait -----------------------------------------------
    def pull_start_urls(self) -> int:
        """Queue up to a batch of the URLs pushed to ``<spider>:start_urls`` (a URL, or
        ``url<TAB>label``), through the seen-set; they leave the list only once queued."""
        key = self.start_urls_key % {"name": self.spider.name}
        pushed = self.server.lrange(key, 0, self.batch - 1)
        if not pushed:
            return 0
        engine = self.crawler.engine
        assert engine is not None
        for raw in pushed:
            url, _, label = raw.decode("utf-8").strip().partition("\t")
            request = self.spider.pushed_entry(url.strip(), label.strip() or None)
            if request is not None:
                engine.crawl(request)
        pipe = self.server.pipeline(transaction=True)
        for raw in pushed:
            pipe.lrem(key, 1, raw)
        pipe.execute()
        self._inc("pushed_urls", len(pushed))
        return len(pushed)

    def _pending(self) -> bool:
        """Whether the frontier still has work: queued requests, pushed URLs, or leases held
        by another process (its entries are in flight, or will be taken over)."""
        name = self.spider.name
        if self.server.zcard(self._queue().key) or self.server.llen(self.start_urls_key % {"name": name}):
            return True
        own = worker_keys(name, self.worker)[1].encode()
        held = [*self.server.scan_iter(f"{self._prefix()}:leases:*"), *self.server.scan_iter(f"{self._prefix()}:claimed:*")]
        return any(key != own for key in held)

    def _inc(self, key: str, count: int = 1) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"frontier/{key}", count)
