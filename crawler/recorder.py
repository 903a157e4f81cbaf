"""Catalog recorder: the one place that writes catalog rows for items the pipelines dropped.

Every pipeline that drops an item marks it first (``status`` = ``rejected`` or ``duplicate``,
``reason``, and what it learnt: ``sha256``, ``phash``, ``duplicate_of``...) and raises
``DropItem(reason)``; this extension, on Scrapy's ``item_dropped`` signal, writes that row.
Items dropped without a ``status`` (e.g. past ``max_images``) were never judged and get no row.
At spider close it rewrites ``catalog.csv`` and logs a per-label summary of the dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.exceptions import NotConfigured

from crawler.catalog import Catalog
from crawler.threads import run_in_thread

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["CatalogRecorder"]


class CatalogRecorder:
    """Scrapy extension writing ``rejected``/``duplicate`` rows and the end-of-crawl export.

    Settings: DATASET_DIR (required). Stats: ``catalog/rows_dropped``.

    Raises:
        NotConfigured: without DATASET_DIR.
    """

    def __init__(self, crawler: Crawler, dataset_dir: Path) -> None:
        self.crawler = crawler
        self.dataset_dir = dataset_dir
        self.catalog: Catalog | None = None
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.item_dropped, signal=signals.item_dropped)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        dataset_dir = crawler.settings.get("DATASET_DIR")
        if not dataset_dir:
            raise NotConfigured("DATASET_DIR is not set (the dataset whose catalog to write)")
        return cls(crawler, Path(dataset_dir))

    def spider_opened(self) -> None:
        self.catalog = Catalog(self.dataset_dir, url=self.crawler.settings.get("CATALOG_URL"))

    async def item_dropped(self, item: Any, exception: BaseException) -> None:
        adapter = ItemAdapter(item)
        if adapter.get("status") not in ("rejected", "duplicate") or self.catalog is None:
            return
        adapter.setdefault("reason", str(exception))
        row = {key: adapter.get(key) for key in adapter.field_names()}
        await run_in_thread(self.catalog.insert, row)
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("catalog/rows_dropped")

    async def spider_closed(self, reason: str) -> None:
        if self.catalog is None:
            return
        try:
            path = await run_in_thread(self.catalog.export_csv)
            summary = await run_in_thread(self.catalog.summary)
            conflicts = await run_in_thread(
                self.catalog.rows, "status = 'duplicate' AND reason = 'label_conflict'"
            )
        finally:
            self.catalog.close()
        logger.info("crawl finished (%s); catalog exported to %s", reason, path)
        for label, counts in summary.items():
            duplicates = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("duplicate/")}
            rejected = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("rejected/")}
            logger.info(
                "dataset label %r: stored %d, duplicate %d %s, rejected %d %s",
                label,
                counts.get("stored", 0),
                sum(duplicates.values()),
                duplicates,
                sum(rejected.values()),
                rejected,
            )
        for row in conflicts:
            logger.warning(
                "label conflict: %s (label %r) is the same picture as %s (%d bits); kept the first",
                row["url"],
                row["label"],
                row["duplicate_of"],
                row["hash_distance"] or 0,
            )
