"""The crawl process moves its start-up objects out of the garbage collector's reach and
collects its youngest generation less often."""

from __future__ import annotations

import gc

from scrapy import signals
from scrapy.utils.test import get_crawler

from crawler import settings as project
from crawler.gctuning import GEN0_THRESHOLD, GarbageCollection


def test_the_start_up_objects_are_frozen_when_the_spider_opens() -> None:
    assert "crawler.gctuning.GarbageCollection" in project.EXTENSIONS
    crawler = get_crawler(settings_dict={"EXTENSIONS_BASE": {}})  # no extension but this one
    extension = GarbageCollection.from_crawler(crawler)  # signals hold handlers weakly
    thresholds = gc.get_threshold()
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        crawler.signals.send_catch_log(signals.spider_opened, spider=None)
        assert extension is not None
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (max(GEN0_THRESHOLD, thresholds[0]), *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
