"""Crawl progress a person can follow, and an end-of-crawl summary of what this crawl did.

Every ``PROGRESS_INTERVAL`` seconds one log line per label: images stored, duplicates and
rejections so far, and the storing rate. At the close, a table per label: stored, duplicates by
reason (label conflicts listed one by one), rejections by reason. Live counts come from the
items' outcomes (``item_scraped``; ``item_dropped`` with the ``status``/``reason`` the pipelines
set), so several labels in one crawl (the ``urls`` spider's CSV) are told apart. The closing
table is read from the catalog rows this crawl wrote (ids past the last one at spider open, this
spider's name), as they stand at the end: a stored copy that a larger one replaced later in the
crawl is a near duplicate there. The numbers are this crawl's; ``CatalogRecorder`` logs the
dataset's.

A crawl that parsed no page is a failure, never an empty success: when it goes idle this
extension closes it with the reason ``robots_denied`` (robots.txt disallowed its
requests: stat ``robotstxt/forbidden``) or ``nothing_crawled``, and logs an error saying why.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.exceptions import CloseSpider
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.httpobj import urlparse_cached

from crawler.catalog import Catalog

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Request, Response
    from scrapy.robotstxt import RobotParser
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["CrawlProgress", "LabelTally"]

# How many label conflicts and forbidden URLs the summary names before it only counts them.
LIST_AT_MOST = 20


class LabelTally:
    """What one crawl did for one label: images it added, duplicate and rejection reasons."""

    def __init__(self) -> None:
        self.stored = 0
        self.duplicates: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.conflicts: list[tuple[str, str]] = []  # (image URL, stored path it duplicates)
        self.stored_at_last_line = 0

    @property
    def judged(self) -> int:
        return self.stored + self.duplicates.total() + self.rejected.total()


class CrawlProgress:
    """Scrapy extension logging progress lines per label and the end-of-crawl summary.

    Settings: ``PROGRESS_INTERVAL`` (seconds between progress lines; 0 turns them off, the
    summary stays; default :attr:`INTERVAL`). Stats: ``progress/pages`` (page responses that
    reached a callback: 2xx, not image downloads or robots.txt).

    Raises:
        ValueError: on a negative ``PROGRESS_INTERVAL`` (the crawl does not start).
    """

    INTERVAL = 10.0

    def __init__(self, crawler: Crawler, interval: float) -> None:
        self.crawler = crawler
        self.interval = interval
        self.labels: dict[str, LabelTally] = defaultdict(LabelTally)
        self.not_judged = 0  # dropped without a verdict (past max_images)
        self.pages = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.task: Any = None
        self.dataset_dir = crawler.settings.get("DATASET_DIR")
        self.catalog_url = crawler.settings.get("CATALOG_URL")
        self.first_row_id: int | None = None  # catalog rows past this one are this crawl's
        # The first page requests and each site's robots.txt: enough to name, at the end, the
        # start URLs robots.txt refused (RobotsTxtMiddleware only counts them).
        self.first_requests: list[str] = []
        self.robots: dict[str, RobotParser] = {}
        for handler, signal in (
            (self.spider_opened, signals.spider_opened),
            (self.spider_idle, signals.spider_idle),
            (self.spider_closed, signals.spider_closed),
            (self.item_scraped, signals.item_scraped),
            (self.item_dropped, signals.item_dropped),
            (self.response_received, signals.response_received),
            (self.request_scheduled, signals.request_scheduled),
            (self.robots_parsed, signals.robots_parsed),
        ):
            crawler.signals.connect(handler, signal=signal)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        interval = crawler.settings.getfloat("PROGRESS_INTERVAL", cls.INTERVAL)
        if interval < 0:
            raise ValueError(f"PROGRESS_INTERVAL must be >= 0 seconds, got {interval}")
        return cls(crawler, interval)

    # -- signals -------------------------------------------------------------------------------
    def spider_opened(self) -> None:
        self.started = self.last_line = time.monotonic()
        if self.dataset_dir:
            with Catalog(self.dataset_dir, url=self.catalog_url) as catalog:
                last = catalog.rows("id = (SELECT MAX(id) FROM images)")
            self.first_row_id = int(last[0]["id"]) if last else 0
        if self.interval:
            self.task = create_looping_call(self.log_progress)
            self.task.start(self.interval, now=False)

    def item_scraped(self, item: Any) -> None:
        adapter = ItemAdapter(item)
        tally = self.labels[str(adapter.get("label"))]
        # A larger copy that replaces stored ones adds no image: the store stage turns the
        # smaller copies into near duplicates of it (as their catalog rows now say).
        replaced = len(adapter.get("replaces") or [])
        tally.stored += 1 - replaced
        tally.duplicates["near"] += replaced

    def item_dropped(self, item: Any, exception: BaseException) -> None:
        adapter = ItemAdapter(item)
        status = adapter.get("status")
        reason = adapter.get("reason") or str(exception) or "unknown"
        tally = self.labels[str(adapter.get("label"))]
        if status == "duplicate":
            tally.duplicates[reason] += 1
            if reason == "label_conflict":
                tally.conflicts.append((str(adapter.get("url")), str(adapter.get("duplicate_of"))))
        elif status == "rejected":
            tally.rejected[reason] += 1
        else:
            self.not_judged += 1

    def response_received(self, response: Response, request: Request) -> None:
        # Image downloads and robots.txt use NO_CALLBACK; a page goes to a spider callback,
        # and only 2xx pass HttpErrorMiddleware by default.
        if request.callback is not NO_CALLBACK and 200 <= response.status < 300:
            self.pages += 1
            assert self.crawler.stats is not None
            self.crawler.stats.inc_value("progress/pages")

    def request_scheduled(self, request: Request) -> None:
        if len(self.first_requests) < LIST_AT_MOST:
            self.first_requests.append(request.url)

    def robots_parsed(self, robotparser: RobotParser, request: Request) -> None:
        self.robots[urlparse_cached(request).netloc] = robotparser

    def spider_idle(self) -> None:
        if self.pages:
            return
        forbidden = self._stat("robotstxt/forbidden")
        raise CloseSpider("robots_denied" if forbidden else "nothing_crawled")

    def spider_closed(self, reason: str) -> None:
        if self.task is not None and self.task.running:
            self.task.stop()
        if self.first_row_id is not None:
            self.labels = self._tally_catalog()
        logger.info("%s", self.summary(reason))
        forbidden = self._stat("robotstxt/forbidden")
        if self.pages == 0:
            if forbidden:
                logger.error(
                    "robots.txt disallows %s: nothing crawled (%d request(s) refused; the site "
                    "asks crawlers to stay away, ROBOTSTXT_OBEY=False would ignore it)",
                    self._refused_urls_text(), forbidden,
                )
            else:
                logger.error(
                    "no page was crawled (finish reason %s): check the start URLs and the errors above",
                    reason,
                )
        elif forbidden:
            logger.warning("robots.txt disallowed %d request(s): %s", forbidden, self._refused_urls_text())

    # -- output --------------------------------------------------------------------------------
    def log_progress(self) -> None:
        """One line per label: stored / duplicate / rejected so far and the storing rate."""
        now = time.monotonic()
        minutes = max(now - self.last_line, 1e-6) / 60
        self.last_line = now
        if not self.labels:
            logger.info(
                "progress: %d pages, no image judged yet (%.0f s)", self.pages, now - self.started
            )
        for label, tally in sorted(self.labels.items()):
            rate = (tally.stored - tally.stored_at_last_line) / minutes
            tally.stored_at_last_line = tally.stored
            logger.info(
                "progress %s: stored %d, duplicate %d, rejected %d (%.1f images/min; %d pages)",
                label, tally.stored, tally.duplicates.total(), tally.rejected.total(), rate, self.pages,
            )

    def summary(self, reason: str) -> str:
        """The end-of-crawl table (a multi-line string)."""
        elapsed = time.monotonic() - self.started
        lines = [f"crawl summary (finish reason: {reason}; {self.pages} pages in {elapsed:.0f} s)"]
        rows = [("label", "stored", "duplicates", "rejected")]
        for label, tally in sorted(self.labels.items()):
            rows.append((
                label,
                str(tally.stored),
                _with_reasons(tally.duplicates),
                _with_reasons(tally.rejected),
            ))
        if len(rows) == 1:
            rows.append(("(none)", "0", "0", "0"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for n, row in enumerate(rows):
            lines.append("  " + " | ".join(
                cell.rjust(width) if i == 1 else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip())
            if n == 0:
                lines.append("  " + "-+-".join("-" * width for width in widths))
        for label, tally in sorted(self.labels.items()):
            for url, duplicate_of in tally.conflicts[:LIST_AT_MOST]:
                lines.append(f"  label conflict ({label}): {url} is the same picture as {duplicate_of}")
            if len(tally.conflicts) > LIST_AT_MOST:
                lines.append(f"  ... and {len(tally.conflicts) - LIST_AT_MOST} more label conflicts ({label})")
        resized = self._stat("verify/resized")
        if resized:
            lines.append(f"  {resized} image(s) larger than VERIFY_MAX_SIDE resized (catalog: source_width, source_height)")
        not_fetched = self._stat("max_images/not_fetched")  # crawler.middlewares.MaxImagesMiddleware
        if not_fetched:
            lines.append(f"  {not_fetched} image(s) found past max_images were not fetched")
        if self.not_judged:
            lines.append(f"  {self.not_judged} image(s) found past max_images were not fetched or judged")
        forbidden = self._stat("robotstxt/forbidden")
        if forbidden:
            what = "nothing crawled" if self.pages == 0 else f"{forbidden} request(s) refused"
            lines.append(f"  robots.txt disallows {self._refused_urls_text()}: {what}")
        elif self.pages == 0:
            lines.append("  no page was crawled: nothing to collect images from")
        if self.pages and not self.labels and not self.not_judged:
            lines.append(
                f"  no image found on {self.pages} page(s): a page built by JavaScript needs "
                "-a render=1 (gallery spider)"
            )
        return "\n".join(lines)

    # -- helpers -------------------------------------------------------------------------------
    def _tally_catalog(self) -> dict[str, LabelTally]:
        """Per label, the catalog rows this crawl wrote, as they stand now."""
        assert self.crawler.spider is not None
        with Catalog(self.dataset_dir, url=self.catalog_url) as catalog:
            rows = catalog.rows("id > ? AND spider = ?", (self.first_row_id, self.crawler.spider.name))
        labels: dict[str, LabelTally] = defaultdict(LabelTally)
        for row in rows:
            tally = labels[row["label"]]
            if row["status"] == "stored":
                tally.stored += 1
            elif row["status"] == "duplicate":
                tally.duplicates[row["reason"]] += 1
                if row["reason"] == "label_conflict":
                    tally.conflicts.append((row["url"], row["duplicate_of"]))
            else:
                tally.rejected[row["reason"]] += 1
        return labels

    def _stat(self, key: str) -> int:
        assert self.crawler.stats is not None
        return int(self.crawler.stats.get_value(key) or 0)

    def _refused_urls_text(self) -> str:
        settings = self.crawler.settings
        agent = settings.get("ROBOTSTXT_USER_AGENT") or settings.get("USER_AGENT") or ""
        refused = []
        for url in self.first_requests:
            parser = self.robots.get(urlsplit(url).netloc)
            if parser is not None and not parser.allowed(url, agent):
                refused.append(url)
        return ", ".join(refused) if refused else "some requested URLs"


def _with_reasons(counts: Counter[str]) -> str:
    total = counts.total()
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) + ")"
