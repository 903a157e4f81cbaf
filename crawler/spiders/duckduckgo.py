"""The ``duckduckgo`` spider: image URLs from DuckDuckGo image search.

Usage::

    scrapy crawl duckduckgo -a label=<category> [-a query=...] [-a max_images=N] \\
        [-a max_pages=N] [-a safesearch=strict|moderate|off] [-a size=...] [-a type=...] \\
        [-a license=...] [-a color=...] [-a layout=...] [-a region=en-US] -s DATASET_DIR=<folder>

The flow the fast.ai course's ``search_images_ddg`` and the ``duckduckgo_search`` package use:
``<DUCKDUCKGO_BASE_URL>/?q=<query>&iax=images&ia=images`` is the results page, whose HTML/JS
carries a ``vqd`` token; ``<base>/i.js?l=us-en&o=json&q=<query>&vqd=<token>&f=,,,,,&p=1``
answers JSON ``{"results": [{"image", "url", "thumbnail", "title", "width", "height",
"source"}, ...], "next": "i.js?...&s=100..."}``. The following page is the spider's own
request with only the offset ``s`` taken from ``next`` (which drops ``o=json`` and ``f=`` and
may name another safe-search level).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

from scrapy.http import Response

from crawler.errors import UserError
from crawler.spiders.base import SearchSpider
from crawler.spiders.filters import chosen_filters

logger = logging.getLogger(__name__)

__all__ = ["DuckDuckGoSpider", "find_vqd"]

_VQD = re.compile(r"""vqd=["']?([\d-]+)""")
# i.js's `p` parameter: DuckDuckGo's safe-search level (duckduckgo_search's mapping; `on` is
# the older name of `strict`).
SAFESEARCH = {"strict": "1", "on": "1", "moderate": "1", "off": "-1"}
_COLOURS = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown", "black", "gray", "white")
# The common filters as the fields of i.js's `f` (time,size,color,type,layout,license), in the
# words DuckDuckGo's filter menu sends (as duckduckgo_search does).
F_FIELDS = ("time", "size", "color", "type", "layout", "license")
F_VALUES: dict[str, dict[str, str]] = {
    "size": {v: f"size:{v.capitalize()}" for v in ("small", "medium", "large", "wallpaper")},
    "color": {"color": "color:color", "bw": "color:Monochrome", **{c: f"color:{c.capitalize()}" for c in _COLOURS}},
    "type": {"photo": "type:photo", "clipart": "type:clipart", "line": "type:line", "animated": "type:gif"},
    "layout": {v: f"layout:{v.capitalize()}" for v in ("square", "wide", "tall")},
    "license": {"any": "license:Any", "public": "license:Public", "share": "license:Share",
                "commercial": "license:ShareCommercially", "modify": "license:Modify",
                "modify_commercial": "license:ModifyCommercially"},
}
SUPPORTED = {**F_VALUES, "safesearch": SAFESEARCH, "region": None}


def find_vqd(text: str) -> str | None:
    """The ``vqd`` token in a DuckDuckGo results page, or ``None``."""
    match = _VQD.search(text)
    return match.group(1) if match else None


class DuckDuckGoSpider(SearchSpider):
    """Fetch the ``vqd`` token, then page through ``i.js`` JSON, yielding each ``image``.

    Arguments (``-a``), besides ``label``/``query``/``max_images``/``max_pages`` (default 20):
        safesearch: ``strict`` (or ``on``), ``moderate`` (default) or ``off``.
        size, type, license, color, layout, region: the common filters (README's filters
            table), sent as i.js's ``f`` fields and ``l`` (``en-US`` becomes ``us-en``).

    Settings: ``DUCKDUCKGO_BASE_URL`` (default ``https://duckduckgo.com``).

    Page URL of each image: the result's ``url``. No token in the results page, a JSON answer
    without a ``results`` list, or an answer that is not JSON is a changed format: ERROR, stat
    ``duckduckgo/parse_error``, the crawl closes as ``parse_error``.

    Raises:
        UserError: an unknown filter value (besides ``ImageSpider``'s checks).
    """

    name = "duckduckgo"
    base_url_setting = "DUCKDUCKGO_BASE_URL"
    default_base_url = "https://duckduckgo.com"
    arguments = ("safesearch",)

    def __init__(
        self,
        *args: Any,
        safesearch: str | None = None,
        size: str | None = None,
        type: str | None = None,  # noqa: A002 (the filter's name)
        license: str | None = None,  # noqa: A002
        color: str | None = None,
        layout: str | None = None,
        region: str | None = None,
        **kwargs: Any,
    ) -> None:
        given = {"size": size, "type": type, "license": license, "color": color, "layout": layout,
                 "safesearch": safesearch, "region": region}
        chosen = chosen_filters(self.name, given, SUPPORTED, kwargs)
        super().__init__(*args, **kwargs)
        self.safesearch = chosen.get("safesearch", "moderate")
        fields = {name: F_VALUES[name][chosen[name]] for name in F_VALUES if name in chosen}
        self.f = ",".join(fields.get(name, "") for name in F_FIELDS)
        region = chosen.get("region", "en-US").lower().replace("_", "-")
        language, _, country = region.partition("-")
        self.locale = f"{country}-{language}" if country else region
        self.vqd: str | None = None

    async def start(self) -> AsyncIterator[Any]:
        url = f"{self.base_url}/?{urlencode({'q': self.query, 'iax': 'images', 'ia': 'images'})}"
        yield self.page_request(url, self.parse_token, 0)

    def parse_token(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """Read the ``vqd`` token and request the first JSON page."""
        self.vqd = find_vqd(response.text) if hasattr(response, "text") else None
        if not self.vqd:
            raise self.fail("parse_error", response.url, "no vqd token in the results page")
        yield self.json_request(self.ijs_url(), 1)

    def ijs_url(self, offset: str | None = None) -> str:
        """The i.js URL with this spider's parameters, from result ``offset`` (``s``) on."""
        params = {"l": self.locale, "o": "json", "q": self.query, "vqd": self.vqd, "f": self.f,
                  "p": SAFESEARCH[self.safesearch]}
        if offset is not None:
            params["s"] = offset
        return f"{self.base_url}/i.js?{urlencode(params)}"

    def json_request(self, url: str, page: int) -> Any:
        request = self.page_request(url, self.parse, page)
        # i.js answers the results page's own scripts: it expects their Referer.
        request.headers["Referer"] = f"{self.base_url}/"
        request.headers["Accept"] = "application/json, text/javascript, */*; q=0.01"
        return request

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """Yield an ``ImageItem`` per new result, then the ``next`` page's request."""
        page = response.meta.get("page_number", 1)
        data, results = self.json_results(response)
        found = new = 0
        for result in results:
            if not isinstance(result, dict) or "image" not in result:
                continue
            found += 1
            item = self.image_result(result.get("image"), result.get("url"))
            if item is not None:
                new += 1
                yield item
        if results and not found:
            raise self.fail("parse_error", response.url, "no result has an 'image' (keys: %s)",
                            sorted(results[0]) if isinstance(results[0], dict) else "?")
        self.page_done(response, found, new)
        next_path = data.get("next")
        next_url = self._next_url(next_path) if isinstance(next_path, str) and next_path else None
        if next_path and next_url is None:
            logger.warning("duckduckgo: 'next' without an offset (%r): stopping", next_path)
        if next_url and self.can_follow(response, new):
            yield self.json_request(next_url, page + 1)

    def _next_url(self, next_path: str) -> str | None:
        # `next` ("i.js?q=car&p=strict&s=100&u=yahoo&l=us-en") is what DuckDuckGo's own page
        # script reads the offset from: its other parameters are not this crawl's.
        params = dict(parse_qsl(urlsplit(urljoin(f"{self.base_url}/", next_path)).query))
        offset = params.get("s", "")
        return self.ijs_url(offset) if offset.isdigit() else None
