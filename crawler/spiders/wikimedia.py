"""The ``wikimedia`` spider: freely licensed images from a Wikimedia Commons search.

Usage::

    scrapy crawl wikimedia -a label=<category> [-a query=...] [-a max_images=N] \\
        [-a max_pages=N] [-a width=1024] -s DATASET_DIR=<folder>

One MediaWiki Action API query per page (https://www.mediawiki.org/wiki/API:Search,
API:Imageinfo, API:Continue)::

    <WIKIMEDIA_API_URL>?action=query&format=json&generator=search
        &gsrsearch=<query> filetype:bitmap&gsrnamespace=6&gsrlimit=50
        &prop=imageinfo&iiprop=url|size|mime|extmetadata&iiurlwidth=1024

answers ``{"query": {"pages": {"<pageid>": {"title", "index", "imageinfo": [{"url",
"thumburl", "descriptionurl", "mime", "extmetadata": {"LicenseShortName": {"value"},
"Artist": {"value"}, ...}}]}}}, "continue": {...}}``; the keys of ``continue`` are merged
into the next request, and a search without any hit answers no ``query`` at all.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

from scrapy.http import Response
from w3lib.html import remove_tags

from crawler.spiders.base import SearchSpider, positive_int
from crawler.spiders.filters import chosen_filters

logger = logging.getLogger(__name__)

__all__ = ["WikimediaSpider", "attribution_text", "plain_text"]

# Contact details people put in Commons' Artist/Credit fields: "mail: x at y.com",
# "e-mail: x@y.org", "tel. +1 555...", bare addresses, obfuscated ("x at y dot com", "x[at]y").
_LABELLED_CONTACT = re.compile(
    r"[,;]?\s*\b(e-?mail|mail|email address|contact|phone|tel|telephone|mobile)\b\.?\s*:\s*[^,;\])]*", re.I
)
_ADDRESS = re.compile(
    r"[\w.+-]+\s*(@|\(at\)|\[at\]|\s+at\s+)\s*[\w-]+(\s*(\.|\(dot\)|\[dot\]|\s+dot\s+)\s*[\w-]+)+", re.I
)
_PHONE = re.compile(r"\+?\d[\d ()./-]{7,}\d")
_EMPTY_BRACKETS = re.compile(r"[\[(]\s*[,;]?\s*[\])]")


def plain_text(value: Any) -> str | None:
    """An ``extmetadata`` value (HTML) as plain text: tags removed, entities decoded,
    whitespace collapsed; ``None`` when nothing is left."""
    if not isinstance(value, str):
        return None
    text = " ".join(html.unescape(remove_tags(value)).split())
    return text or None


def attribution_text(value: Any) -> str | None:
    """An ``Artist``/``Credit`` value as plain text without contact details (e-mail addresses,
    plain or obfuscated, phone numbers, "mail: ..." parts): the name and user name stay;
    ``None`` when nothing is left."""
    text = plain_text(value)
    if text is None:
        return None
    for pattern in (_ADDRESS, _PHONE, _LABELLED_CONTACT):
        text = pattern.sub("", text)
    text = _EMPTY_BRACKETS.sub("", text)
    text = " ".join(text.split()).strip(" ,;:-")
    return text or None


# The common filters as CirrusSearch keywords of the search (filetype:, filew: in pixels).
# Commons accepts only licences that allow sharing, changing and commercial use (no NC, no ND),
# so every licence filter but `public` holds for every file and adds nothing.
SEARCH_KEYWORDS: dict[str, dict[str, str]] = {
    "type": {"photo": "filetype:bitmap", "clipart": "filetype:drawing", "line": "filetype:drawing"},
    "size": {"small": "filew:<500", "medium": "filew:500,1200", "large": "filew:>1200", "wallpaper": "filew:>1900"},
    "license": {v: "" for v in ("any", "share", "commercial", "modify", "modify_commercial")},
}


class WikimediaSpider(SearchSpider):
    """Search Commons' File namespace for bitmaps and yield each image with its licence.

    Arguments (``-a``), besides ``label``/``query``/``max_images``/``max_pages`` (default 20,
    50 files a page):
        width: width in pixels of the scaled copy to download (``thumburl``; Commons never
            scales up, smaller files come at their own size); default 1024.
        type, size, license: the common filters (README's filters table) as search keywords
            (``filetype:``, ``filew:``); every Commons licence allows commercial use and change.

    Raises:
        UserError: a filter Commons search lacks (color, layout, safesearch, region) or an
            unknown value.

    Settings: ``WIKIMEDIA_API_URL`` (default ``https://commons.wikimedia.org/w/api.php``).

    Each item's ``licence`` is ``extmetadata.LicenseShortName`` (e.g. ``CC BY-SA 4.0``),
    ``author`` is ``extmetadata.Artist`` (else ``Credit``) as plain text without contact
    details (:func:`attribution_text`), ``page_url`` the file's description
    page. Files whose MIME type is not ``image/*`` are skipped. An API ``error`` object closes
    the crawl as ``api_error``; a JSON answer without the expected structure as ``parse_error``
    (ERROR log and a ``wikimedia/<reason>`` stat either way).

    Commons' robots.txt disallows ``/w/`` for page crawlers, while Wikimedia's robot policy
    sends programs to the Action API (with an identifying User-Agent, one request at a time,
    which this spider does); API requests are therefore sent without the robots.txt check.
    Image downloads still obey robots.txt.
    """

    name = "wikimedia"
    base_url_setting = "WIKIMEDIA_API_URL"
    default_base_url = "https://commons.wikimedia.org/w/api.php"
    api_requests_obey_robotstxt = False
    PAGE_SIZE = 50
    WIDTH = 1024
    arguments = ("width",)

    def __init__(
        self,
        *args: Any,
        width: str | int | None = None,
        size: str | None = None,
        type: str | None = None,  # noqa: A002 (the filter's name)
        license: str | None = None,  # noqa: A002
        **kwargs: Any,
    ) -> None:
        chosen = chosen_filters(
            self.name, {"size": size, "type": type, "license": license}, SEARCH_KEYWORDS, kwargs
        )
        super().__init__(*args, **kwargs)
        keywords = [SEARCH_KEYWORDS[name][value] for name, value in chosen.items()]
        if "type" not in chosen:
            keywords.insert(0, "filetype:bitmap")
        self.keywords = " ".join(k for k in keywords if k)
        self.width = positive_int("width", width) or self.WIDTH

    def api_url(self, cont: dict[str, Any] | None = None) -> str:
        params: dict[str, Any] = {
            "action": "query",
            "format": "json",
            "generator": "search",
            "gsrsearch": f"{self.query} {self.keywords}",
            "gsrnamespace": 6,
            "gsrlimit": self.PAGE_SIZE,
            "prop": "imageinfo",
            "iiprop": "url|size|mime|extmetadata",
            "iiurlwidth": self.width,
        }
        params.update(cont or {})
        return f"{self.base_url}?{urlencode(params)}"

    async def start(self) -> AsyncIterator[Any]:
        yield self.page_request(self.api_url(), self.parse, 1)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """Yield an ``ImageItem`` per new file (in search order), then the continuation."""
        page = response.meta.get("page_number", 1)
        data = self.json_object(response)
        if "error" in data:
            error = data["error"] if isinstance(data["error"], dict) else {}
            raise self.fail("api_error", response.url, "%s: %s", error.get("code"), error.get("info"))
        pages = data.get("query", {}).get("pages") if isinstance(data.get("query"), dict) else None
        if pages is None:
            if "query" not in data and ("batchcomplete" in data or "continue" in data):
                # The API leaves `query` out when the search matched nothing.
                if page == 1:
                    self.no_results(response)
                self.page_done(response, 0, 0)
                return
            raise self.fail("parse_error", response.url, "no query.pages in the JSON (keys: %s)", sorted(data))
        if isinstance(pages, dict):
            pages = list(pages.values())
        found = new = 0
        for entry in sorted(pages, key=lambda p: p.get("index", 0) if isinstance(p, dict) else 0):
            info = (entry.get("imageinfo") or [None])[0] if isinstance(entry, dict) else None
            if not isinstance(info, dict) or not (info.get("thumburl") or info.get("url")):
                continue
            found += 1
            if not str(info.get("mime", "image/")).startswith("image/"):
                self.inc_stat("skipped_mime")
                continue
            meta = info.get("extmetadata") or {}
            item = self.image_result(
                info.get("thumburl") or info.get("url"),
                info.get("descriptionurl"),
                licence=plain_text((meta.get("LicenseShortName") or {}).get("value")),
                author=attribution_text((meta.get("Artist") or {}).get("value"))
                or attribution_text((meta.get("Credit") or {}).get("value")),
            )
            if item is not None:
                new += 1
                yield item
        if pages and not found:
            raise self.fail("parse_error", response.url, "no page has imageinfo with a url")
        self.page_done(response, found, new)
        cont = data.get("continue")
        if isinstance(cont, dict) and cont and self.can_follow(response, new):
            yield self.page_request(self.api_url(cont), self.parse, page + 1)
