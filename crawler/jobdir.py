"""Keep a ``JOBDIR`` job resumable after a SIGKILL: discard the request queue a killed run left.

Scrapy writes its disk request queue (``JOBDIR/requests.queue``) while the crawl runs and makes
it consistent only when the crawl stops gracefully (``Scheduler.close`` writes ``active.json``).
A SIGKILL can leave a queue file created but without its header, and the next start then fails
reading it (``struct.error`` from queuelib's ``LifoDiskQueue``) with a traceback. This extension
marks the job as running while a crawl runs (``JOBDIR/crawl-running``, removed on
``spider_closed``, which Scrapy sends after the scheduler has written its queue). A start that
finds the mark knows the previous run was killed and removes ``requests.queue``: what that run
had done is in the catalog, which the resumed crawl reads instead (``crawler.resume``); its
start pages are requested again and every image URL with a row is skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from scrapy import signals
from scrapy.exceptions import NotConfigured

logger = logging.getLogger(__name__)

__all__ = ["MARK_NAME", "JobQueueGuard"]

MARK_NAME = "crawl-running"
QUEUE_DIR = "requests.queue"  # Scrapy's Scheduler._dqdir


class JobQueueGuard:
    """Scrapy extension (``EXTENSIONS``); off without ``JOBDIR`` (``NotConfigured``).

    Raises:
        OSError: when ``JOBDIR`` cannot be created or written.
    """

    def __init__(self, jobdir: str | os.PathLike[str]) -> None:
        self.jobdir = Path(jobdir)
        self.mark = self.jobdir / MARK_NAME
        queue = self.jobdir / QUEUE_DIR
        if self.mark.exists() and queue.exists():
            shutil.rmtree(queue)
            logger.warning(
                "the previous run of this job (JOBDIR=%s) was killed: its request queue is discarded; "
                "its start pages are requested again and every image it catalogued is skipped",
                self.jobdir,
            )
        self.jobdir.mkdir(parents=True, exist_ok=True)
        self.mark.write_text(f"{os.getpid()}\n")

    @classmethod
    def from_crawler(cls, crawler: Any) -> JobQueueGuard:
        jobdir = crawler.settings.get("JOBDIR")
        if not jobdir:
            raise NotConfigured  # no JOBDIR: nothing to guard (no message, so Scrapy logs no warning)
        guard = cls(jobdir)
        crawler.signals.connect(guard.spider_closed, signal=signals.spider_closed)
        return guard

    def spider_closed(self) -> None:
        """The scheduler has written its queue: the job can be resumed from it."""
        self.mark.unlink(missing_ok=True)
