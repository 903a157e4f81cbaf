"""Downloader middlewares of the crawler project."""

from __future__ import annotations

import logging
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.http import Request, Response
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

from crawler.items import ImageItem

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

__all__ = ["BackoffRetryMiddleware", "ImageFallbackMiddleware", "MaxImagesMiddleware", "retry_after_seconds"]


def retry_after_seconds(value: bytes | str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (RFC 9110 section 10.2.3), or ``None``.

    Accepts delay-seconds (``"120"``) and an HTTP-date; a date in the past gives 0. Anything
    else (missing, malformed) gives ``None``.
    """
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class BackoffRetryMiddleware(RetryMiddleware):
    """Scrapy's ``RetryMiddleware`` that also slows down a site that says it is overloaded.

    Scrapy retries 429 and 5xx responses (``RETRY_HTTP_CODES``, ``RETRY_TIMES``) but sends the
    retry as soon as a slot is free, and AutoThrottle only refuses to *lower* its delay on such
    responses. Here, a response whose status is in ``RETRY_BACKOFF_HTTP_CODES`` (default 429,
    503) also raises the delay of its download slot (one per site) before the retry is queued:
    so that even the shortest randomised wait (``DOWNLOAD_DELAY`` jitter) lasts the
    ``Retry-After`` the site sent, else to twice the current delay, at least
    ``RETRY_BACKOFF_BASE`` seconds (default 1) and at most ``RETRY_BACKOFF_MAX`` seconds
    (default 60). With AutoThrottle on, its latency-based adjustment brings the delay back down
    as the site recovers; without it, each successful response halves the extra delay.

    Stats: ``retry/backoff`` (responses that raised a delay).
    """

    def __init__(self, settings: BaseSettings):
        super().__init__(settings)
        self.backoff_codes = {int(x) for x in settings.getlist("RETRY_BACKOFF_HTTP_CODES", [429, 503])}
        self.backoff_base = settings.getfloat("RETRY_BACKOFF_BASE", 1.0)
        self.backoff_max = settings.getfloat("RETRY_BACKOFF_MAX", 60.0)
        self.autothrottle = settings.getbool("AUTOTHROTTLE_ENABLED")
        self.base_delay = settings.getfloat("DOWNLOAD_DELAY")

    def process_response(self, request: Request, response: Response) -> Request | Response:
        if response.status in self.backoff_codes and not request.meta.get("dont_retry", False):
            self._back_off(request, response)
        elif response.status < 400 and not self.autothrottle:
            self._recover(request)
        return super().process_response(request, response)

    def _slot(self, request: Request):
        downloader = self.crawler.engine.downloader
        return downloader.slots.get(downloader.get_slot_key(request))

    def _back_off(self, request: Request, response: Response) -> None:
        slot = self._slot(request)
        if slot is None:
            return
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        if asked is not None:
            # Scrapy waits delay * (1 +- jitter); the shortest wait must still honour the site.
            delay = asked / max(0.1, 1.0 - getattr(slot, "jitter", 0.0))
        else:
            delay = max(self.backoff_base, 2 * slot.delay)
        delay = min(self.backoff_max, max(slot.delay, delay))
        if delay > slot.delay:
            logger.info(
                "%s answered %d: waiting %.1f s between its requests (was %.1f s)",
                request.url[:100], response.status, delay, slot.delay,
            )  # fmt: skip
            slot.delay = delay
        self.crawler.stats.inc_value("retry/backoff")

    def _recover(self, request: Request) -> None:
        slot = self._slot(request)
        if slot is not None and slot.delay > self.base_delay:
            extra = (slot.delay - self.base_delay) / 2
            slot.delay = self.base_delay + (extra if extra > 0.05 else 0.0)


class ImageFallbackMiddleware:
    """Try an image's next candidate URL when the chosen one answers 404 or 410.

    A detail page names its main image several ways (JSON-LD, ``og:image``, a linked original,
    ``srcset``), and the most trusted one is not always served: a mirror or a CDN may drop
    one rendition. The gallery spider records, per image URL it yields, the candidates left
    (``spider.fallback_urls``); this middleware re-sends a failed image request to the next
    one, so the pipelines see the first candidate that answers. The item keeps the URL it was
    yielded with (as for a redirect). Stats: ``gallery/fallback_used``.
    """

    GONE = (404, 410)

    def __init__(self, crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def process_response(self, request: Request, response: Response) -> Request | Response:
        if response.status not in self.GONE:
            return response
        spider = self.crawler.spider
        fallbacks = getattr(spider, "fallback_urls", {})
        original = request.meta.get("image_fallback_of", request.url)
        remaining = fallbacks.get(original)
        if not remaining:
            return response
        tried = request.meta.get("image_fallback_index", -1) + 1
        if tried >= len(remaining):
            return response
        logger.info("%s answered %d: trying %s", request.url[:100], response.status, remaining[tried][:100])
        self.crawler.stats.inc_value(f"{spider.name}/fallback_used")
        meta = {**request.meta, "image_fallback_of": original, "image_fallback_index": tried}
        return request.replace(url=remaining[tried], meta=meta, dont_filter=True)


class MaxImagesMiddleware:
    """Spider middleware that hands the pipelines no more images than ``max_images`` can store.

    With ``max_images=N``, at most ``N - stored`` items are in the pipelines at once; a spider's
    further items wait (their images are not downloaded) until one of those is stored, dropped
    as a duplicate or rejected. Once N are stored, the items still waiting are dropped before
    any download, so every downloaded image gets its catalog row and nothing is fetched past N.
    Requests and other output pass unchanged. Stats: ``max_images/not_fetched`` (items dropped
    unfetched because N images were stored), ``max_images/waits``.
    """

    def __init__(self, crawler) -> None:
        self.crawler = crawler
        self.in_flight: set[int] = set()
        self._waiters: list[Deferred] = []
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(self._item_done, signal=signal)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def _item_done(self, item, **kwargs) -> None:
        self.in_flight.discard(id(item))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _stored(self) -> int:
        return self.crawler.stats.get_value("store/stored") or 0

    def _closing(self) -> bool:
        slot = getattr(self.crawler.engine, "_slot", None)
        return slot is None or getattr(slot, "closing", None) is not None

    async def process_spider_output(self, response, result):
        limit = getattr(self.crawler.spider, "max_images", None)
        async for entry in result:
            if limit is None or not isinstance(entry, ImageItem):
                yield entry
                continue
            while self._stored() + len(self.in_flight) >= limit and self._stored() < limit and not self._closing():
                self.crawler.stats.inc_value("max_images/waits")
                waiter: Deferred = Deferred()
                self._waiters.append(waiter)
                await maybe_deferred_to_future(waiter)
            if self._stored() >= limit or self._closing():
                self.crawler.stats.inc_value("max_images/not_fetched")
                continue
            self.in_flight.add(id(entry))
            yield entry
