"""The ``bing`` spider: image URLs from Bing image search result pages.

Usage::

    scrapy crawl bing -a label=<category> [-a query=...] [-a max_images=N] [-a max_pages=N] \\
        [-a filters=+filterui:license-L2_L3_L4] -s DATASET_DIR=<folder>

It reads the HTML fragments Bing's own results page loads while scrolling,
``<BING_BASE_URL>/images/async?q=<query>&first=<offset>&count=35&mmasync=1``. Each result is an
``<a class="iusc">`` whose ``m`` attribute holds JSON: ``murl`` (the full-size image), ``purl``
(the page it was found on), ``turl`` (Bing's thumbnail), ``t`` (title). This is what the common
Bing scrapers read (bing-image-downloader, Bulk-Bing-Image-downloader, the Hover Zoom plugin).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

from scrapy.http import Response, TextResponse

from crawler.setting_values import get_int
from crawler.spiders.base import SearchSpider

logger = logging.getLogger(__name__)

__all__ = ["BingSpider"]

# How Bing says a query has no result: its results pages' "no results" block and wording.
NO_RESULTS_CSS = "li.b_no, #b_results .b_no, .dg_nores"
NO_RESULTS_TEXT = ("There are no results for", "We didn't find any results")


class BingSpider(SearchSpider):
    """Page through Bing image results, yielding the full-size image of each (``murl``).

    Arguments (``-a``), besides ``label``/``query``/``max_images``/``max_pages`` (default 20):
        filters: Bing's ``qft`` filter string as its results page URL shows it, e.g.
            ``+filterui:imagesize-large`` or ``+filterui:license-L2_L3_L4`` (free to share).

    Settings: ``BING_BASE_URL`` (default ``https://www.bing.com``), ``BING_PAGE_SIZE``
    (results asked per page, default in ``crawler/settings.py``).

    Pages are requested until ``max_images`` are stored, ``max_pages`` pages were read, a page
    is empty, or a page brings nothing new (past the end Bing repeats itself). A page with
    markup but no ``a.iusc`` result at all, or whose results' ``m`` JSON cannot be read, is a
    changed page format: ERROR, stat ``bing/parse_error``, the crawl closes as ``parse_error``.
    """

    name = "bing"
    base_url_setting = "BING_BASE_URL"
    default_base_url = "https://www.bing.com"
    arguments = ("filters",)

    def __init__(self, *args: Any, filters: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filters = filters or ""
        self.page_size = 0  # set from the settings in from_crawler

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> BingSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.page_size = get_int(crawler.settings, "BING_PAGE_SIZE", unit="results", minimum=1, example=35)
        return spider

    def results_url(self, page: int) -> str:
        """The async results URL of page ``page`` (1-based): ``first`` is the 1-based offset."""
        params = {"q": self.query, "first": 1 + (page - 1) * self.page_size, "count": self.page_size, "mmasync": 1}
        if self.filters:
            params["qft"] = self.filters
        return f"{self.base_url}/images/async?{urlencode(params)}"

    async def start(self) -> AsyncIterator[Any]:
        yield self.page_request(self.results_url(1), self.parse, 1)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """Yield an ``ImageItem`` per new result, then the next page's request."""
        page = response.meta.get("page_number", 1)
        if not isinstance(response, TextResponse):
            raise self.fail("parse_error", response.url, "not an HTML results page")
        links = response.css("a.iusc")
        if not links:
            body = response.text.strip()
            if not body or response.css(NO_RESULTS_CSS) or any(text in body for text in NO_RESULTS_TEXT):
                if page == 1:
                    self.no_results(response)
                else:
                    logger.info("bing: results end after page %d", page - 1)
                self.page_done(response, 0, 0)
                return
            raise self.fail("parse_error", response.url, "no a.iusc result links in %d bytes of HTML", len(body))
        found = new = bad = 0
        for link in links:
            result = _result_metadata(link.attrib.get("m"))
            if result is None:
                bad += 1
                continue
            found += 1
            item = self.image_result(result.get("murl"), result.get("purl"))
            if item is not None:
                new += 1
                yield item
        if bad:
            self.inc_stat("bad_results", bad)
            logger.warning("bing: %d of %d results without readable m JSON at %s", bad, len(links), response.url)
        if not found:
            raise self.fail("parse_error", response.url, "none of %d a.iusc links has m JSON with murl", len(links))
        self.page_done(response, found, new)
        if self.can_follow(response, new):
            yield self.page_request(self.results_url(page + 1), self.parse, page + 1)


def _result_metadata(m: str | None) -> dict[str, Any] | None:
    """The decoded ``m`` attribute of one result, or ``None`` when it is not JSON with ``murl``."""
    if not m:
        return None
    try:
        data = json.loads(m)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("murl") else None
