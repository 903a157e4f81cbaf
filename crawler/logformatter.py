"""Log lines for the crawl's events (Scrapy's ``LOG_FORMATTER`` setting).

Scrapy logs a dropped item as its reason plus the whole item; an image item carries ten window
hashes, provenance and sizes, so one rejected picture fills a screen. Here a drop is one line:
the label, the image URL (a ``data:`` URI cut short) and the reason the pipeline gave
(``DropItem("too_small")``), at the level Scrapy would use (``DEFAULT_DROPITEM_LOG_LEVEL``, or
the exception's ``log_level``). The catalog keeps the whole record of every image.

Scrapy logs every response and every item at DEBUG ("Crawled (200)", "Scraped from"), two log
records per image built even when no handler keeps DEBUG (the project's ``LOG_LEVEL`` is INFO):
here they are built only when some handler would emit them (``_emits``), which is what the
logging module would decide for them (measured: ~0.05 s of the crawl process's CPU per 2000
images in ``benchmarks/pipeline_throughput``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.logformatter import LogFormatter

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.http import Request, Response
    from scrapy.logformatter import LogFormatterResult
    from twisted.python.failure import Failure

__all__ = ["ImageLogFormatter"]

#: Longest URL logged, in characters (``data:`` URIs can be megabytes).
URL_CHARS = 200
# The loggers Scrapy logs ``crawled`` and ``scraped`` entries with.
_CRAWLED_LOGGER = logging.getLogger("scrapy.core.engine")
_SCRAPED_LOGGER = logging.getLogger("scrapy.core.scraper")


def _emits(logger: logging.Logger, level: int) -> bool:
    """Whether a record of ``level`` from ``logger`` would reach a handler that keeps it: the
    walk ``logging.Logger.callHandlers`` makes (handler levels up the hierarchy while
    ``propagate``, ``logging.lastResort`` when there is no handler at all)."""
    if not logger.isEnabledFor(level):
        return False
    found = False
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            found = True
            if level >= handler.level:
                return True
        if not current.propagate:
            break
        current = current.parent
    return not found and logging.lastResort is not None and level >= logging.lastResort.level


class ImageLogFormatter(LogFormatter):
    """Scrapy's formatter with one short line per dropped item: ``Dropped <label> <url>: <reason>``,
    and no ``crawled``/``scraped`` entry (DEBUG) that no handler would emit."""

    def crawled(self, request: Request, response: Response, spider: Spider) -> LogFormatterResult | None:
        if not _emits(_CRAWLED_LOGGER, logging.DEBUG):
            return None
        return super().crawled(request, response, spider)

    def scraped(self, item: Any, response: Response | Failure | None, spider: Spider) -> LogFormatterResult | None:
        if not _emits(_SCRAPED_LOGGER, logging.DEBUG):
            return None
        return super().scraped(item, response, spider)

    def dropped(
        self, item: Any, exception: BaseException, response: Response | Failure | None, spider: Spider
    ) -> dict[str, Any]:
        entry = super().dropped(item, exception, response, spider)
        adapter = ItemAdapter(item)
        url = str(adapter.get("url") or "?")
        if len(url) > URL_CHARS:
            url = url[:URL_CHARS] + "..."
        entry["msg"] = "Dropped %(label)s %(url)s: %(reason)s"
        entry["args"] = {"label": adapter.get("label") or "-", "url": url, "reason": exception}
        return entry
