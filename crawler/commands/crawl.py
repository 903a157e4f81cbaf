"""``scrapy crawl`` whose exit status says whether the crawl did its job.

Scrapy's own ``crawl`` exits 0 whenever the spider ran, even when it closed because the source's
markup changed or robots.txt forbade every page; scripts and schedulers that run one crawl per
category then see an empty success. This command is Scrapy's ``crawl`` (same options, same run)
and exits:

- 2 for an unknown spider name, or when building or starting the crawl raised
  :class:`crawler.errors.UserError` (a missing or misspelt ``-a`` argument, a missing
  ``DATASET_DIR``, a bad setting value; from the spider or any component's
  ``from_crawler``/``open_spider``): one line ``error: <what> (<how to fix>)`` on
  stderr and no traceback, unless ``-s LOG_LEVEL=DEBUG`` asks for it;
- 1 when the spider closed for one of ``FAILED_REASONS`` (the finish reasons the project's
  spiders and extensions use for "nothing useful happened"), printing the reason to stderr, or
  when the crawl could not start for any other reason (Scrapy's own "bootstrap failed");
- 0 otherwise: ``finished``, ``max_images``, ``closespider_*`` and a shutdown by Ctrl-C.
"""

from __future__ import annotations

import asyncio
import difflib
import sys
import traceback
from typing import TYPE_CHECKING, Any

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from crawler.errors import UserError, report

if TYPE_CHECKING:
    import argparse

__all__ = ["FAILED_REASONS", "Command", "user_error_in"]

# Finish reasons that mean the crawl failed (see crawler/spiders/base.py and crawler/progress.py).
FAILED_REASONS = frozenset({"parse_error", "robots_denied", "request_failed", "nothing_crawled"})


def user_error_in(error: BaseException | None) -> UserError | None:
    """The :class:`UserError` that ``error`` is or was raised from (``__cause__``/``__context__``
    chain, as when a component wraps it), else ``None``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class Command(ScrapyCrawlCommand):
    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("scrapy crawl takes exactly one spider name")
        assert self.crawler_process
        self.user_error: UserError | None = None
        try:
            crawler = self._create_crawler(args[0])
        except KeyError:  # Scrapy's spider loader: "Spider not found"
            self.exitcode = report(self._unknown_spider(args[0]))
            return
        self._watch(self.crawler_process.crawl(crawler, **opts.spargs))
        self.crawler_process.start()
        if self.user_error is not None:
            self.exitcode = report(self.user_error)
            return
        if self.crawler_process.bootstrap_failed:
            self.exitcode = 1
            return
        reason = crawler.stats.get_value("finish_reason") if crawler.stats else None
        if reason in FAILED_REASONS:
            print(f"crawl failed: the spider closed with finish reason {reason!r}", file=sys.stderr)  # noqa: T201
            self.exitcode = 1

    def _unknown_spider(self, name: str) -> UserError:
        assert self.crawler_process
        names = sorted(self.crawler_process.spider_loader.list())
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return UserError(f"no spider named {name!r} ({hint}spiders: {', '.join(names)})")

    def _watch(self, started: Any) -> None:
        """Take a :class:`UserError` out of the crawl's task (``AsyncCrawlerProcess``) or
        Deferred (``CrawlerProcess``) before Scrapy or asyncio logs it with a traceback."""
        if isinstance(started, asyncio.Future):
            started.add_done_callback(self._task_done)
        else:
            started.addErrback(self._failed)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved: asyncio no longer logs it, so a bug is printed here
        if error is not None and not self._caught(error):
            traceback.print_exception(error, file=sys.stderr)

    def _failed(self, failure: Any) -> Any:
        return None if self._caught(failure.value) else failure

    def _caught(self, error: BaseException) -> bool:
        """Keep ``error``'s :class:`UserError` for the one-line report; ``False`` if it has none."""
        user_error = user_error_in(error)
        if user_error is None:
            return False
        self.user_error = user_error
        if str(self.settings.get("LOG_LEVEL", "")).upper() == "DEBUG":
            traceback.print_exception(error, file=sys.stderr)
        return True
