"""Downloader middlewares of the crawler project."""

from __future__ import annotations

import logging
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from scrapy.downloadermiddlewares.retry import RetryMiddleware

if TYPE_CHECKING:
    from scrapy.http import Request, Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

__all__ = ["BackoffRetryMiddleware", "retry_after_seconds"]


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
