"""Log lines for the crawl's events (Scrapy's ``LOG_FORMATTER`` setting).

Scrapy logs a dropped item as its reason plus the whole item; an image item carries ten window
hashes, provenance and sizes, so one rejected picture fills a screen. Here a drop is one line:
the label, the image URL (a ``data:`` URI cut short) and the reason the pipeline gave
(``DropItem("too_small")``), at the level Scrapy would use (``DEFAULT_DROPITEM_LOG_LEVEL``, or
the exception's ``log_level``). The catalog keeps the whole record of every image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.logformatter import LogFormatter

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.http import Response
    from twisted.python.failure import Failure

__all__ = ["ImageLogFormatter"]

#: Longest URL logged, in characters (``data:`` URIs can be megabytes).
URL_CHARS = 200


class ImageLogFormatter(LogFormatter):
    """Scrapy's formatter with one short line per dropped item: ``Dropped <label> <url>: <reason>``."""

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
