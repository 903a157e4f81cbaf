"""``scrapy crawl`` whose exit status says whether the crawl did its job.

Scrapy's own ``crawl`` exits 0 whenever the spider ran, even when it closed because the source's
markup changed or robots.txt forbade every page; scripts and schedulers that run one crawl per
category then see an empty success. This command is Scrapy's ``crawl`` (same options, same run)
and exits 1 when the spider closed for one of ``FAILED_REASONS`` (the finish reasons the
project's spiders and extensions use for "nothing useful happened"), printing the reason to
stderr. ``finished``, ``max_images``, ``closespider_*`` and a shutdown by Ctrl-C stay 0.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

if TYPE_CHECKING:
    import argparse

__all__ = ["FAILED_REASONS", "Command"]

# Finish reasons that mean the crawl failed (see crawler/spiders/base.py and crawler/progress.py).
FAILED_REASONS = frozenset({"parse_error", "robots_denied", "request_failed", "nothing_crawled"})


class Command(ScrapyCrawlCommand):
    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("scrapy crawl takes exactly one spider name")
        assert self.crawler_process
        crawler = self._create_crawler(args[0])
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        if self.crawler_process.bootstrap_failed:
            self.exitcode = 1
            return
        reason = crawler.stats.get_value("finish_reason") if crawler.stats else None
        if reason in FAILED_REASONS:
            print(f"crawl failed: the spider closed with finish reason {reason!r}", file=sys.stderr)  # noqa: T201
            self.exitcode = 1
