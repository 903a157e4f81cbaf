"""The ``openverse`` spider: openly licensed images from Openverse image search.

Usage::

    scrapy crawl openverse -a label=<category> [-a query=...] [-a max_images=N] \\
        [-a max_pages=N] [-a license_type=commercial,modification] [-a license=by,cc0] \\
        [-a source=flickr,wikimedia] [-a size=...] [-a type=photo|clipart] \\
        [-a layout=square|wide|tall] [-a safesearch=strict|moderate|off] -s DATASET_DIR=<folder>

Openverse API v1 image search (https://api.openverse.org/v1/, ``GET /v1/images/``):
``<OPENVERSE_API_URL>/v1/images/?q=<query>&page=N&page_size=20&format=json`` (sent with
``Accept: application/json``: the API is Django REST framework with its browsable HTML renderer
on, so a browser-like ``Accept`` gets an HTML page) answers ``{"result_count",
"page_count", "page_size", "page", "results": [{"id", "title", "url", "foreign_landing_url",
"creator", "creator_url", "license", "license_version", "license_url", "provider", "source",
"attribution", "width", "height", "thumbnail", ...}]}``. 20 is the largest ``page_size`` an
anonymous client may ask for, and ``page_count`` already stops where anonymous paging must.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

from scrapy.http import Response

from crawler.setting_values import get_int
from crawler.spiders.base import SearchSpider
from crawler.spiders.filters import chosen_filters

logger = logging.getLogger(__name__)

__all__ = ["OpenverseSpider", "licence_name"]

# Openverse licence codes that are not "CC <CODE>" (https://api.openverse.org/v1/ licenses).
_LICENCE_NAMES = {"cc0": "CC0", "pdm": "Public Domain Mark", "sampling+": "CC Sampling+",
                  "nc-sampling+": "CC NC-Sampling+"}
# Openverse's own licence codes, which `license` also accepts as they are.
LICENCE_CODES = frozenset({"by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd", "cc0", "pdm",
                           "sampling+", "nc-sampling+"})
# The common filters (crawler.spiders.filters) as Openverse parameters.
COMMON_FILTERS: dict[str, dict[str, dict[str, str]]] = {
    "size": {v: {"size": v} for v in ("small", "medium", "large")},
    "type": {"photo": {"category": "photograph"}, "clipart": {"category": "illustration"}},
    "license": {
        "any": {"license_type": "all-cc"},
        "public": {"license": "cc0,pdm"},
        "share": {"license_type": "all"},
        "commercial": {"license_type": "commercial"},
        "modify": {"license_type": "modification"},
        "modify_commercial": {"license_type": "commercial,modification"},
    },
    "layout": {v: {"aspect_ratio": v} for v in ("square", "wide", "tall")},
    # Openverse leaves mature results out unless asked for them.
    "safesearch": {"strict": {}, "moderate": {}, "off": {"mature": "true"}},
}


def licence_name(result: dict[str, Any]) -> str | None:
    """A result's licence as people write it: ``CC BY 4.0``, ``CC0 1.0``, ``Public Domain Mark
    1.0``; the ``license_url`` when there is no code; ``None`` when there is neither."""
    code = str(result.get("license") or "").strip().lower()
    if not code:
        return result.get("license_url") or None
    name = _LICENCE_NAMES.get(code) or f"CC {code.upper()}"
    version = str(result.get("license_version") or "").strip()
    return f"{name} {version}" if version else name


class OpenverseSpider(SearchSpider):
    """Page through Openverse image results, yielding each image with licence and creator.

    Arguments (``-a``), besides ``label``/``query``/``max_images``/``max_pages`` (default 20):
        size, type, license, layout, safesearch: the common filters (README's filters table),
            mapped to Openverse's parameters; ``license`` also takes Openverse's own codes
            (``by,cc0``).
        license_type, source, extension, aspect_ratio, category: Openverse's own search
            filters, passed through (e.g. ``license_type=commercial``).

    Raises:
        UserError: a filter Openverse lacks (``color``, ``region``) or an unknown value.

    Settings: ``OPENVERSE_API_URL`` (default ``https://api.openverse.org``),
    ``OPENVERSE_PAGE_SIZE`` (results per page, default 20: the most anonymous clients may ask).

    Each item's ``licence`` comes from ``licence_name``, ``author`` is ``creator``, ``page_url``
    is ``foreign_landing_url``. A JSON answer without a ``results`` list is a changed format:
    ERROR, stat ``openverse/parse_error``, the crawl closes as ``parse_error``.

    The API's robots.txt disallows ``/v1/images/`` to keep indexers out, while the API is made
    for programs under its own terms (rate limits, attribution); API requests are therefore sent
    without the robots.txt check, one at a time. Image downloads still obey robots.txt.
    """

    name = "openverse"
    base_url_setting = "OPENVERSE_API_URL"
    default_base_url = "https://api.openverse.org"
    api_requests_obey_robotstxt = False
    arguments = ("license_type", "source", "extension", "aspect_ratio", "category")

    def __init__(
        self,
        *args: Any,
        license_type: str | None = None,
        source: str | None = None,
        extension: str | None = None,
        aspect_ratio: str | None = None,
        category: str | None = None,
        size: str | None = None,
        type: str | None = None,  # noqa: A002 (the filter's name)
        license: str | None = None,  # noqa: A002
        layout: str | None = None,
        safesearch: str | None = None,
        **kwargs: Any,
    ) -> None:
        own = {"license_type": license_type, "source": source, "extension": extension,
               "aspect_ratio": aspect_ratio, "category": category}
        self.filters = {key: value for key, value in own.items() if value}
        if license and set(license.lower().split(",")) <= LICENCE_CODES:
            self.filters["license"], license = license.lower(), None
        given = {"size": size, "type": type, "license": license, "layout": layout, "safesearch": safesearch}
        for name, value in chosen_filters(self.name, given, COMMON_FILTERS, kwargs).items():
            self.filters.update(COMMON_FILTERS[name][value])
        super().__init__(*args, **kwargs)
        self.page_size = 0  # set from the settings in from_crawler

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> OpenverseSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.page_size = get_int(crawler.settings, "OPENVERSE_PAGE_SIZE", unit="results", minimum=1, example=20)
        return spider

    def api_url(self, page: int) -> str:
        params = {"q": self.query, "page": page, "page_size": self.page_size, **self.filters, "format": "json"}
        return f"{self.base_url}/v1/images/?{urlencode(params)}"

    def page_request(self, url: str, callback: Any, page: int, **meta: Any) -> Any:
        request = super().page_request(url, callback, page, **meta)
        request.headers["Accept"] = "application/json"
        return request

    async def start(self) -> AsyncIterator[Any]:
        yield self.page_request(self.api_url(1), self.parse, 1)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """Yield an ``ImageItem`` per new result, then the next page's request."""
        page = response.meta.get("page_number", 1)
        data, results = self.json_results(response)
        found = new = 0
        for result in results:
            if not isinstance(result, dict) or not result.get("url"):
                continue
            found += 1
            item = self.image_result(
                result["url"],
                result.get("foreign_landing_url"),
                licence=licence_name(result),
                author=result.get("creator"),
            )
            if item is not None:
                new += 1
                yield item
        if results and not found:
            raise self.fail("parse_error", response.url, "no result has a 'url' (keys: %s)",
                            sorted(results[0]) if isinstance(results[0], dict) else "?")
        self.page_done(response, found, new)
        page_count = data.get("page_count")
        if isinstance(page_count, int) and page >= page_count:
            logger.info("openverse: last page (%d of %d)", page, page_count)
            return
        if results and self.can_follow(response, new):
            yield self.page_request(self.api_url(page + 1), self.parse, page + 1)
