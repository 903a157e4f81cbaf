"""The ``gallery`` spider: image URLs from listing/result pages, following pagination.

Usage::

    scrapy crawl gallery -a label=<category> -a start_urls=<url[,url...]> \\
        [-a query=...] [-a max_images=N] [-a max_pages=N] [-a next_selector=CSS] \\
        [-a render=1 [-a max_scrolls=N] [-a scroll_timeout=SECONDS] [-a more_selector=CSS]] \\
        -s DATASET_DIR=<folder> [-s JOBDIR=<folder>]

The spider only parses and yields one ``ImageItem`` per image URL; downloading, checking and
storing are the pipelines' jobs. With ``render=1`` the pages (never the images) are loaded in
Chromium through scrapy-playwright and driven until they show no new image (scrolling, "load
more", script-driven "next" pages, lazy loaders: :mod:`crawler.render`); the rendered HTML then
goes through the same extraction rules as a static page, and the gallery items of the JSON the
page loaded are taken too.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from scrapy.http import Request, TextResponse

from crawler.errors import UserError
from crawler.render import (
    RenderOptions,
    css_selector,
    enable_rendering,
    feed_next_url,
    is_json,
    log_rendered,
    page_feed,
    page_responses,
    render_meta,
)
from crawler.resume import judged_urls
from crawler.spiders.base import ImageSpider, positive_int
from crawler.threads import run_in_thread

if TYPE_CHECKING:
    from parsel import Selector
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["GallerySpider", "largest_srcset_candidate", "parse_srcset"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif"}
)
# Attributes lazy-loading scripts read the real image from; `src` then holds a placeholder.
LAZY_SRC_ATTRIBUTES = ("data-src", "data-original", "data-lazy-src", "data-lazy", "data-url")
LAZY_SRCSET_ATTRIBUTES = ("data-srcset", "data-lazy-srcset")
_NEXT_TEXT = re.compile(r"^\s*(next|next page|more|older|suivant|weiter|siguiente|›|»|>|→)\s*[›»>→]?\s*$", re.I)
_NEXT_CLASS = re.compile(r"(^|[\s_-])next([\s_-]|$)", re.I)
_DESCRIPTOR = re.compile(r"^(\d+(?:\.\d+)?)([wx])$", re.I)

def parse_srcset(srcset: str) -> list[tuple[str, float, str]]:
    """Parse a ``srcset`` value into ``(url, value, unit)`` candidates (unit ``w`` or ``x``).

    Follows the HTML spec's algorithm in outline: a URL runs to the next whitespace (so commas
    inside ``data:`` URIs survive), trailing commas end a candidate without descriptors, and a
    missing descriptor means ``1x``. Unparseable descriptors are ignored.
    """
    candidates: list[tuple[str, float, str]] = []
    pos, length = 0, len(srcset)
    while pos < length:
        while pos < length and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        if pos >= length:
            break
        start = pos
        while pos < length and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = pos
            depth = 0
            while pos < length and (srcset[pos] != "," or depth):
                depth += {"(": 1, ")": -1}.get(srcset[pos], 0)
                pos += 1
            descriptor = srcset[start:pos].strip()
        value, unit = 1.0, "x"
        for token in descriptor.split():
            if match := _DESCRIPTOR.match(token):
                value, unit = float(match.group(1)), match.group(2).lower()
        if url:
            candidates.append((url, value, unit))
    return candidates


def largest_srcset_candidate(srcset: str) -> str | None:
    """The URL of the largest ``srcset`` candidate: widest ``w``, else highest ``x``."""
    return _largest_of([srcset])


def is_image_link(url: str) -> bool:
    """True for ``data:image/...`` URIs and URLs whose path ends in an image extension."""
    if url.startswith("data:"):
        return url[5:].lstrip().lower().startswith("image/")
    return PurePosixPath(urlparse(url).path).suffix.lower() in IMAGE_EXTENSIONS


class GallerySpider(ImageSpider):
    """Collect every image of a gallery/listing/result page and its following pages.

    Arguments (``-a``):
        label: the category the images belong to (required; sanitised to a folder name).
        start_urls: comma-separated page URLs to start from (required).
        query: the search query or category text, recorded in the catalog (default: label).
        max_images: stop once this many images were stored by this crawl (default: no cap).
        max_pages: pages followed per start URL, the start page included (default 50).
        next_selector: CSS selector of the "next page" link; default: ``a[rel=next]``,
            ``link[rel=next]``, or an ``<a>`` whose text or class says "next".
        render: ``1`` to load pages in Chromium (scrapy-playwright) and drive them, for
            infinite-scroll, "load more" and JavaScript-built pages (default ``0``: plain HTTP).
        max_scrolls: with ``render``, most rounds (scroll, press "load more"/"next") per page
            (default 20).
        scroll_timeout: with ``render``, seconds of driving per page at most (default 60).
        more_selector: with ``render``, CSS selector of the "load more" control when the
            search for it (by role, wording in common languages, position) misses it.

    Rendering (:mod:`crawler.render.page`) stops once :attr:`SCROLL_IDLE_ROUNDS` rounds in a
    row show no new image URL (each waits up to :attr:`SCROLL_PAUSE` seconds for one, longer
    while the page's requests are in flight). A JSON start URL (a gallery's API) is read
    without a browser: its gallery items, then its ``next`` link. The browser is the
    ``CHROMIUM_PATH`` setting (default ``$CHROMIUM_PATH`` or ``/usr/bin/chromium``); the
    scrapy-playwright download handlers are installed only for rendering crawls, so a plain
    crawl never loads Playwright.

    With ``JOBDIR`` the crawl resumes after any stop, a SIGKILL included: start and next-page
    requests bypass the dupefilter (whose file a kill leaves incomplete) and are walked again,
    while image URLs this job already recorded in the catalog are skipped
    (:func:`crawler.resume.judged_urls`).

    Which URL stands for an image, from most to least preferred: a link ``<a href>`` to an
    image file over the thumbnail ``<img>`` inside it; the largest ``srcset`` candidate of
    the ``<img>`` or of its ``<picture><source>`` siblings; a lazy-loading attribute
    (``data-src``...) over a placeholder ``src``; ``src`` (``data:`` URIs included).

    Raises:
        UserError: on a missing or unusable label, no start URL, non-integer limits, a
            ``more_selector`` that is not CSS, an unknown argument, when DATASET_DIR is not set,
            or with ``render`` when the browser executable is missing.
    """

    name = "gallery"
    arguments = ("start_urls", "max_pages", "next_selector", "render", "max_scrolls", "scroll_timeout", "more_selector")
    MAX_PAGES = 50
    MAX_SCROLLS = 20
    SCROLL_TIMEOUT = 60.0  # seconds per page
    SCROLL_PAUSE = 1.0  # seconds a scroll waits for new images
    SCROLL_IDLE_ROUNDS = 2

    def __init__(
        self,
        label: str | None = None,
        start_urls: str | list[str] | None = None,
        query: str | None = None,
        max_images: str | int | None = None,
        max_pages: str | int | None = None,
        next_selector: str | None = None,
        render: str | bool | None = None,
        max_scrolls: str | int | None = None,
        scroll_timeout: str | float | None = None,
        more_selector: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(label, query, max_images, *args, **kwargs)
        if isinstance(start_urls, str):
            start_urls = [u.strip() for u in start_urls.split(",") if u.strip()]
        if not start_urls:
            raise UserError("the gallery spider needs a page to start from (-a start_urls=<url[,url...]>)")
        self.start_urls = list(start_urls)
        self.max_pages = positive_int("max_pages", max_pages) or self.MAX_PAGES
        self.next_selector = next_selector
        self.render = _flag("render", render)
        self.max_scrolls = positive_int("max_scrolls", max_scrolls) or self.MAX_SCROLLS
        self.scroll_timeout = _positive_float("scroll_timeout", scroll_timeout) or self.SCROLL_TIMEOUT
        self.more_selector = css_selector("more_selector", more_selector)
        self._seen_urls: set[str] = set()
        # Pages reached in this run: pagination bypasses the dupefilter (see resume above), so
        # this is what stops a "next" link that loops back.
        self._seen_pages: set[str] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider = super().from_crawler(crawler, *args, **kwargs)
        if spider.render:
            # Settings freeze only after the spider is built, so the arguments can pick them.
            enable_rendering(crawler.settings)
        return spider

    async def start(self) -> AsyncIterator[Any]:
        jobdir = self.settings.get("JOBDIR")
        if jobdir:
            self._seen_urls |= await run_in_thread(
                judged_urls, self.settings["DATASET_DIR"], jobdir, self.name, self.label
            )
        for url in self.start_urls:
            self._seen_pages.add(url)
            yield self.page_request(url, page_number=1)

    def page_request(self, url: str, page_number: int, render: bool | None = None) -> Request:
        """The request of a listing page; rendered in Chromium with ``render`` (default: the
        spider's ``render``; a JSON API page is never rendered).

        ``dont_filter``: a resumed job walks its pages again (see the class docstring).
        """
        meta: dict[str, Any] = {"page_number": page_number}
        if self.render if render is None else render:
            meta |= render_meta(RenderOptions(
                max_scrolls=self.max_scrolls, timeout=self.scroll_timeout, pause=self.SCROLL_PAUSE,
                idle_rounds=self.SCROLL_IDLE_ROUNDS, more_selector=self.more_selector,
            ))
        return Request(url, callback=self.parse, meta=meta, dont_filter=True)

    def parse(self, response: Any, **kwargs: Any) -> Iterator[Any]:
        """Yield an ``ImageItem`` per new image URL on the page, then the next page's request."""
        if not isinstance(response, TextResponse):
            logger.warning("not an HTML page, skipped: %s", response.url)
            return
        found = 0
        # The page's own data (JSON feed items, with their own pages) first, then its HTML,
        # including the pages a script-driven "next" left.
        candidates = [(item.url, item.page_url or response.url) for item in page_feed(response)]
        candidates += [(url, response.url) for page in page_responses(response) for url in self.image_urls(page)]
        for url, page_url in candidates:
            key = hashlib.sha1(url.encode()).hexdigest() if url.startswith("data:") else url  # noqa: S324
            if key in self._seen_urls:
                continue
            self._seen_urls.add(key)
            found += 1
            yield self.image_item(url, page_url)
        page = response.meta.get("page_number", 1)
        logger.info("page %d: %d new image URLs on %s", page, found, response.url)
        log_rendered(response, page)
        if self.enough_stored():
            return
        if page >= self.max_pages:
            logger.info("max_pages (%d) reached at %s", self.max_pages, response.url)
            return
        feed_next = feed_next_url(response)
        next_url = (None if is_json(response) else self.next_page_url(response)) or feed_next
        if next_url and next_url not in self._seen_pages:
            self._seen_pages.add(next_url)
            yield self.page_request(next_url, page_number=page + 1, render=False if next_url == feed_next else None)

    def image_urls(self, response: TextResponse) -> list[str]:
        """Absolute image URLs on the page, one per image, in document order."""
        urls: list[str] = []
        for link in response.css("a[href]"):
            href = (link.attrib.get("href") or "").strip()
            if href and is_image_link(href):
                urls.append(response.urljoin(href))
        for img in response.css("img"):
            # The link to the full-size file was taken above; its thumbnail would be a
            # near-duplicate of it.
            parent_href = img.xpath("ancestor::a[@href][1]/@href").get()
            if parent_href and is_image_link(parent_href.strip()):
                continue
            url = self._img_url(img)
            if url:
                urls.append(response.urljoin(url))
        return [u for u in urls if u.startswith(("http://", "https://", "data:"))]

    def _img_url(self, img: Selector) -> str | None:
        attrib = img.attrib
        # <picture><source srcset> siblings describe the same image at other sizes/formats.
        # (`ancestor`, not `parent`: libxml2's HTML parser nests the <img> inside <source>.)
        sources = img.xpath("ancestor::picture[1]//source/@srcset").getall()
        lazy_sources = img.xpath("ancestor::picture[1]//source/@data-srcset").getall()
        lazy = [attrib.get(name, "") for name in LAZY_SRCSET_ATTRIBUTES]
        # A lazy-loading page keeps placeholders in srcset/src and the real set in data-*.
        best = _largest_of([*lazy, *lazy_sources]) or _largest_of([attrib.get("srcset", ""), *sources])
        if best:
            return best
        for name in LAZY_SRC_ATTRIBUTES:
            value = (attrib.get(name) or "").strip()
            if value:
                return value
        src = (attrib.get("src") or "").strip()
        if not src:
            return None
        if src.startswith("data:") and not is_image_link(src):
            return None
        return src

    def next_page_url(self, response: TextResponse) -> str | None:
        """The next page's absolute URL, or ``None``."""
        if self.next_selector:
            node = response.css(self.next_selector)
            href = node.attrib.get("href") if node else None
            if href is None and node:
                href = node.get()  # a selector ending in ::attr(href) yields the value
            return response.urljoin(href.strip()) if href else None
        for css in ("a[rel~=next]::attr(href)", "link[rel~=next]::attr(href)"):
            href = response.css(css).get()
            if href:
                return response.urljoin(href.strip())
        for link in response.css("a[href]"):
            text = " ".join(link.css("::text").getall())
            if _NEXT_TEXT.match(text) or _NEXT_CLASS.search(link.attrib.get("class", "")):
                return response.urljoin(link.attrib["href"].strip())
        return None


def _largest_of(srcsets: list[str]) -> str | None:
    candidates = [c for s in srcsets if s.strip() for c in parse_srcset(s)]
    # Inline data: candidates next to real URLs are placeholders.
    real = [c for c in candidates if not c[0].startswith("data:")]
    candidates = real or candidates
    if not candidates:
        return None
    widths = [c for c in candidates if c[2] == "w"]
    return max(widths or candidates, key=lambda c: c[1])[0]


def _flag(name: str, value: str | bool | None) -> bool:
    if isinstance(value, bool):
        return value
    text = (value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise UserError(f"-a {name} must be 0 or 1, got {value!r} (e.g. -a {name}=1)")


def _positive_float(name: str, value: str | float | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if not number > 0:
        raise UserError(f"-a {name} must be a positive number, got {value!r} (e.g. -a {name}=30)")
    return number
