"""The ``gallery`` spider: image URLs from listing/result pages, following pagination.

Usage::

    scrapy crawl gallery -a label=<category> -a start_urls=<url[,url...]> \\
        [-a query=...] [-a max_images=N] [-a max_pages=N] [-a next_selector=CSS] \\
        [-a follow_details=auto|always|never] [-a keep_chrome=1] \\
        [-a render=1 [-a max_scrolls=N] [-a scroll_timeout=SECONDS] [-a more_selector=CSS]] \\
        -s DATASET_DIR=<folder> [-s JOBDIR=<folder>]

On a listing whose items link to their own pages (shops, portfolios), the spider follows each
item's link and takes that detail page's main image at full size (:mod:`crawler.spiders.page_parts`
says how items, chrome and main images are recognised). The spider only parses and yields one
``ImageItem`` per image URL; downloading, checking and
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
from crawler.spiders.page_parts import (
    MIN_CARDS,
    card_of,
    card_signature,
    chrome_reason,
    detail_image_candidates,
    element_signature,
    nearest_link_href,
)
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
FOLLOW_DETAILS = ("auto", "always", "never")
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
        follow_details: ``auto`` (default): on a page that lists at least
            :data:`~crawler.spiders.page_parts.MIN_CARDS` item cards of one structure, each
            linking to its own page of the site, follow those links and take each detail
            page's main image instead of the listing's thumbnail; ``always``: follow every
            image's item link; ``never``: take the listing's images only.
        keep_chrome: ``1`` to keep site chrome (logos, icons, images in header, nav, footer,
            sidebars, menus and carts, images outside a listing's items, images seen on an
            earlier page); default ``0`` skips them before download, each counted as
            ``gallery/skipped/<reason>`` (``icon``, ``logo``, ``container``,
            ``outside_items``, ``repeated``).

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

    A detail page's main image is, in order of trust: JSON-LD ``Product``/``ImageObject``
    ``image``, ``og:image``/``twitter:image``, the first linked original (``<a href>`` to an
    image file), the largest ``srcset`` candidate of the first content ``<img>``; the item's
    listing image only when its detail page fails or shows none. The other candidates stay
    as fallbacks: a candidate answering 404/410 is replaced by the next one
    (:class:`crawler.middlewares.ImageFallbackMiddleware`). Its catalog row keeps the detail
    page (``page_url``) and the listing page (``listing_url``). Pages (listings, detail pages,
    "next" links) are only followed on the start URLs' hosts; images may come from anywhere.

    Which URL stands for an image on a listing, from most to least preferred: a link ``<a href>`` to an
    image file over the thumbnail ``<img>`` inside it; the largest ``srcset`` candidate of
    the ``<img>`` or of its ``<picture><source>`` siblings; a lazy-loading attribute
    (``data-src``...) over a placeholder ``src``; ``src`` (``data:`` URIs included).

    Raises:
        UserError: on a missing or unusable label, no start URL, non-integer limits, a
            ``more_selector`` that is not CSS, an unknown argument, when DATASET_DIR is not set,
            or with ``render`` when the browser executable is missing.
    """

    name = "gallery"
    arguments = (
        "start_urls", "max_pages", "next_selector", "render", "max_scrolls", "scroll_timeout", "more_selector",
        "follow_details", "keep_chrome",
    )
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
        follow_details: str | None = None,
        keep_chrome: str | bool | None = None,
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
        self.follow_details = (follow_details or "auto").strip().lower()
        if self.follow_details not in FOLLOW_DETAILS:
            raise ValueError(f"follow_details must be one of {', '.join(FOLLOW_DETAILS)}, got {follow_details!r}")
        self.keep_chrome = _flag("keep_chrome", keep_chrome)
        self.hosts = {urlparse(url).hostname for url in self.start_urls}
        # Image URL -> the next candidates to try when it answers 404/410 (detail pages).
        self.fallback_urls: dict[str, list[str]] = {}
        # Image URLs skipped as chrome, and detail-page candidates -> the detail page that named
        # them first: a site-wide og:image (often the logo) is no item's picture.
        self._chrome_urls: set[str] = set()
        self._candidate_pages: dict[str, str] = {}
        # Image URL -> the page it was first seen on, for `repeated`.
        self._image_pages: dict[str, str] = {}
        self._seen_urls: set[str] = set()
        # Pages reached in this run: pagination bypasses the dupefilter (see resume above), so
        # this is what stops a "next" link that loops back.
        self._seen_pages: set[str] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider = super().from_crawler(crawler, *args, **kwargs)
        # Settings freeze only after the spider is built, so the spider can add its middleware.
        if not crawler.settings.frozen:
            middlewares = dict(crawler.settings.getdict("DOWNLOADER_MIDDLEWARES"))
            middlewares.setdefault("crawler.middlewares.ImageFallbackMiddleware", 560)
            crawler.settings.set("DOWNLOADER_MIDDLEWARES", middlewares, priority="spider")
        if spider.render:
            # Settings freeze only after the spider is built, so the arguments can pick them.
            enable_rendering(crawler.settings)
        return spider

    async def start(self) -> AsyncIterator[Any]:
        jobdir = self.settings.get("JOBDIR")
        if jobdir:
            self._seen_urls |= await run_in_thread(
                judged_urls, self.settings["DATASET_DIR"], jobdir, self.name, self.label, self.settings.get("CATALOG_URL")
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
        """Yield an ``ImageItem`` per new content image on the page (or a detail page's request
        per item), then the next page's request."""
        if not isinstance(response, TextResponse):
            logger.warning("not an HTML page, skipped: %s", response.url)
            return
        found = details = 0
        # The page's own data (JSON feed items, with their own pages) first, then its HTML,
        # including the pages a rendered page's script-driven "next" left.
        for item in page_feed(response):
            if self._new_image(item.url):
                found += 1
                yield self.image_item(item.url, item.page_url or response.url)
        for url, detail in (entry for html in page_responses(response) for entry in self.page_images(html)):
            if detail is not None:
                if detail in self._seen_pages or self.enough_stored():
                    continue
                self._seen_pages.add(detail)
                details += 1
                # dont_filter: a resumed job walks its detail pages again, like its listings.
                yield Request(
                    detail, callback=self.parse_detail, errback=self.detail_failed,
                    meta={"listing_url": response.url, "thumbnail_url": url}, dont_filter=True,
                )
                continue
            if self._new_image(url):
                found += 1
                yield self.image_item(url, response.url)
        page = response.meta.get("page_number", 1)
        logger.info("page %d: %d new image URLs, %d detail pages to follow on %s", page, found, details, response.url)
        log_rendered(response, page)
        if self.enough_stored():
            return
        if page >= self.max_pages:
            logger.info("max_pages (%d) reached at %s", self.max_pages, response.url)
            return
        # The next page of the page's own JSON API (read without a browser) when it has no
        # "next" link of its own.
        feed_next = feed_next_url(response)
        next_url = None if is_json(response) else self.next_page_url(response)
        if next_url and urlparse(next_url).hostname not in self.hosts:
            logger.info("next page %s is on another site: not followed", next_url)
            next_url = None
        next_url = next_url or feed_next
        if next_url and next_url not in self._seen_pages:
            self._seen_pages.add(next_url)
            yield self.page_request(next_url, page_number=page + 1, render=False if next_url == feed_next else None)

    def parse_detail(self, response: Any, **kwargs: Any) -> Iterator[Any]:
        """Yield the item of a detail page's main image (its listing image when it has none)."""
        listing_url = response.meta["listing_url"]
        thumbnail = response.meta["thumbnail_url"]
        candidates: list[str] = []
        if isinstance(response, TextResponse):
            candidates = detail_image_candidates(response, response.urljoin, self._img_url, is_image_link)
        shared = [c for c in candidates if c in self._chrome_urls or self._candidate_pages.setdefault(c, response.url) != response.url]
        if shared:
            self.inc_stat("detail/shared_image", len(shared))
            candidates = [c for c in candidates if c not in shared]
        if not candidates:
            self.inc_stat("detail/no_image")
            logger.info("no main image on %s: taking the listing image", response.url)
            candidates = [thumbnail]
        else:
            self.inc_stat("detail/pages")
        url, *fallbacks = [*candidates, thumbnail] if thumbnail not in candidates else candidates
        if fallbacks:
            self.fallback_urls[url] = fallbacks
        if self._new_image(url):
            yield self.image_item(url, response.url, listing_url=listing_url)

    def detail_failed(self, failure: Any) -> Iterator[Any]:
        """A detail page could not be fetched: take the item's listing image instead."""
        request = failure.request
        self.inc_stat("detail/failed")
        logger.info("detail page %s failed (%s): taking the listing image", request.url, failure.getErrorMessage())
        url = request.meta["thumbnail_url"]
        if self._new_image(url):
            yield self.image_item(url, request.meta["listing_url"])

    def _new_image(self, url: str) -> bool:
        key = hashlib.sha1(url.encode()).hexdigest() if url.startswith("data:") else url  # noqa: S324
        if key in self._seen_urls:
            return False
        self._seen_urls.add(key)
        return True

    def page_images(self, response: TextResponse) -> list[tuple[str, str | None]]:
        """The page's content images in document order, each as ``(image URL, detail page URL
        or None)``; chrome is left out (and counted) unless ``keep_chrome``."""
        host = urlparse(response.url).hostname or ""
        entries = []  # (node, url, card signature or None, detail url or None)
        for node, url in self._image_nodes(response):
            img = node if node.root.tag == "img" else (node.css("img") or [node])[0]
            if not self.keep_chrome:
                reason = chrome_reason(img, url)
                if reason is None and self._repeated(url, response.url):
                    reason = "repeated"
                if reason:
                    self.inc_stat(f"skipped/{reason}")
                    self._chrome_urls.add(url)
                    continue
            card = None
            if node.root.tag == "img":
                card = card_of(img, response.url, host, response.urljoin, is_image_link)
            if card is not None:
                entries.append((url, ("detail", *card_signature(card[0])), card[1]))
            else:
                parent = node.root.getparent()
                entries.append((url, ("image", *element_signature(parent)) if parent is not None else None, None))
        counts: dict[Any, set[str]] = {}
        for url, signature, detail in entries:
            counts.setdefault(signature, set()).add(detail or url)
        items = {sig for sig, members in counts.items() if sig is not None and len(members) >= MIN_CARDS}
        # Only a listing of item cards (links to detail pages) tells content from the rest of
        # the page; a plain gallery's images are all content unless they are chrome.
        has_cards = any(sig[0] == "detail" for sig in items)
        result: list[tuple[str, str | None]] = []
        for url, signature, detail in entries:
            if has_cards and signature not in items and not self.keep_chrome:
                self.inc_stat("skipped/outside_items")
                self._chrome_urls.add(url)
                continue
            follow = detail is not None and self.follow_details != "never" and (
                self.follow_details == "always" or signature in items
            )
            result.append((url, detail if follow else None))
        return result

    def _repeated(self, url: str, page_url: str) -> bool:
        """Whether the image was seen on another page of this crawl (logos, banners, badges)."""
        first = self._image_pages.setdefault(url, page_url)
        return first != page_url

    def _image_nodes(self, response: TextResponse) -> list[tuple[Selector, str]]:
        """``(node, absolute URL)`` per image: the ``<a href>`` links to image files (over the
        thumbnails inside them), then the other ``<img>``, each in document order."""
        nodes: list[tuple[Selector, str]] = []
        for node in response.css("a[href]"):
            href = (node.attrib.get("href") or "").strip()
            if href and is_image_link(href):
                nodes.append((node, response.urljoin(href)))
        for node in response.css("img"):
            # The link to the full-size file was taken above; its thumbnail would be a
            # near-duplicate of it.
            parent_href = nearest_link_href(node.root)
            if parent_href and is_image_link(parent_href.strip()):
                continue
            url = self._img_url(node)
            if url:
                nodes.append((node, response.urljoin(url)))
        return [(n, u) for n, u in nodes if u.startswith(("http://", "https://", "data:"))]

    def image_urls(self, response: TextResponse) -> list[str]:
        """Absolute image URLs on the page, one per image, in document order (all of them:
        no chrome filter, no detail pages)."""
        return [url for _, url in self._image_nodes(response)]

    def _img_url(self, img: Selector) -> str | None:
        attrib = img.attrib
        # <picture><source srcset> siblings describe the same image at other sizes/formats.
        # (`ancestor`, not `parent`: libxml2's HTML parser nests the <img> inside <source>.)
        # (``ancestor::picture[1]//source/@srcset`` and ``.../@data-srcset``, walked with lxml.)
        picture = next(img.root.iterancestors("picture"), None)
        found = () if picture is None else list(picture.iterdescendants("source"))
        sources = [s.get("srcset") for s in found if s.get("srcset") is not None]
        lazy_sources = [s.get("data-srcset") for s in found if s.get("data-srcset") is not None]
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
