"""The ``duckduckgo`` spider: image URLs from DuckDuckGo image search.

Usage::

    scrapy crawl duckduckgo -a label=<category> [-a query=...] [-a max_images=N] \\
        [-a max_pages=N] [-a safesearch=on|moderate|off] -s DATASET_DIR=<folder>

The flow the fast.ai course's ``search_images_ddg`` and the ``duckduckgo_search`` package use:
``<DUCKDUCKGO_BASE_URL>/?q=<query>&iax=images&ia=images`` is the results page, whose HTML/JS
carries a ``vqd`` token; ``<base>/i.js?l=us-en&o=json&q=<query>&vqd=<token>&f=,,,,,&p=1``
answers JSON ``{"results": [{"image", "url", "thumbnail", "title", "width", "height",
"source"}, ...], "next": "i.js?...&s=100..."}``; ``next`` leads to the following page.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from scrapy.http import Response

from crawler.errors import UserError
from crawler.spiders.base import SearchSpider

logger = logging.getLogger(__name__)

__all__ = ["DuckDuckGoSpider", "find_vqd"]

_VQD = re.compile(r"""vqd=["']?([\d-]+)""")
# i.js's `p` parameter: DuckDuckGo's safe-search level (duckduckgo_search's mapping).
SAFESEARCH = {"on": "1", "moderate": "1", "off": "-1"}


def find_vqd(text: str) -> str | None:
    """The ``vqd`` token in a DuckDuckGo results page, or ``None``."""
    match = _VQD.search(text)
    return match.group(1) if match else None


class DuckDuckGoSpider(SearchSpider):
    """Fetch the ``vqd`` token, then page through ``i.js`` JSON, yielding each ``image``.

    Arguments (``-a``), besides ``label``/``query``/``max_images``/``max_pages`` (default 20):
        safesearch: ``on``, ``moderate`` (default) or ``off``.

    Settings: ``DUCKDUCKGO_BASE_URL`` (default ``https://duckduckgo.com``).

    Page URL of each image: the result's ``url``. No token in the results page, a JSON answer
    without a ``results`` list, or an answer that is not JSON is a changed format: ERROR, stat
    ``duckduckgo/parse_error``, the crawl closes as ``parse_error``.

    Raises:
        UserError: on an unknown ``safesearch`` (besides ``ImageSpider``'s checks).
    """

    name = "duckduckgo"
    base_url_setting = "DUCKDUCKGO_BASE_URL"
    default_base_url = "https://duckduckgo.com"
    arguments = ("safesearch",)

    def __init__(self, *args: Any, safesearch: str = "moderate", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if safesearch not in SAFESEARCH:
            raise UserError(
                f"-a safesearch must be one of {', '.join(sorted(SAFESEARCH))}, got {safesearch!r} "
                "(e.g. -a safesearch=moderate)"
            )
        self.safesearch = safesearch
        self.vqd: str | None = None

    async def start(self) -> AsyncIterator[Any]:
        url = f"{self.base_url}/?{urlencode({'q': self.query, 'iax': 'images', 'ia': 'images'})}"
        yield self.page_request(url, self.parse_token, 0)

    def parse_token(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """Read the ``vqd`` token and request the first JSON page."""
        self.vqd = find_vqd(response.text) if hasattr(response, "text") else None
        if not self.vqd:
            raise self.fail("parse_error", response.url, "no vqd token in the results page")
        params = {"l": "us-en", "o": "json", "q": self.query, "vqd": self.vqd, "f": ",,,,,",
                  "p": SAFESEARCH[self.safesearch]}
        yield self.json_request(f"{self.base_url}/i.js?{urlencode(params)}", 1)

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
        if next_path and self.can_follow(response, new):
            yield self.json_request(self._next_url(next_path), page + 1)

    def _next_url(self, next_path: str) -> str:
        # `next` is relative to the site root ("i.js?q=...&s=100..."); like search_images_ddg,
        # keep sending the token when it is not part of it.
        parts = urlsplit(urljoin(f"{self.base_url}/", next_path))
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if "vqd" not in params and self.vqd:
            params["vqd"] = self.vqd
        return urlunsplit(parts._replace(query=urlencode(params)))
