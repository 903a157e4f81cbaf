"""The downloader middleware that sets up each rendered page (``-a render=1``).

For every request the spider marks with ``meta["render"]`` (the :class:`RenderOptions` fields as
a dict, which a JOBDIR queue can store), it asks scrapy-playwright to render it and hooks a
:class:`PageSession` into the page before it loads:

- **Images go through Scrapy only.** The browser's image requests are answered with a 1x1
  placeholder and never sent (stat ``render/browser_images_blocked``); video and audio requests
  are aborted. The page still lays out and its load/error handlers see a loaded image; the
  spider takes the URLs from the DOM and the pipelines download them, once each.
- **robots.txt holds for the page's own requests.** Every other request the page makes
  (scripts, stylesheets, XHR/fetch, frames) is checked with Scrapy's ``RobotsTxtMiddleware``
  (same parsers, cache, user agent and ``ROBOTSTXT_*`` settings as the crawl; a new host's
  robots.txt is fetched through the crawler) and aborted when forbidden (stats
  ``robotstxt/forbidden`` and ``render/robots_forbidden``). The allowed ones the browser sends
  itself, with the crawl's User-Agent (scrapy-playwright's header processing), outside Scrapy's
  scheduler: AutoThrottle paces the pages, not their XHRs.
- **The page's own data is kept.** JSON answers to its XHR/fetch requests that list gallery
  items (:func:`crawler.render.feeds.feed_images`) are captured with their URLs, and kept when
  the page showed an image of theirs: that tells the gallery's feed from the JSON of ads,
  recommendations or a site menu (stats ``render/feed_answers`` and
  ``render/feed_answers_unshown``).

Then :func:`crawler.render.page.expand_page` drives the page; the outcome lands in
``response.meta["rendered"]`` (:class:`RenderOutcome`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Request
from playwright.async_api import Error as PlaywrightError
from scrapy_playwright.page import PageMethod

from crawler.render.feeds import FeedImage, feed_images, next_feed_url
from crawler.render.page import expand_page
from crawler.render.state import RenderOptions, RenderOutcome

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["PageSession", "RenderMiddleware"]

# The smallest valid GIF: a transparent 1x1 pixel.
PLACEHOLDER_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
MAX_JSON_BYTES = 16 * 1024 * 1024
_PAGE_DATA = frozenset({"xhr", "fetch"})


class RenderMiddleware:
    """Turns ``meta["render"]`` requests into scrapy-playwright requests with a
    :class:`PageSession` (see the module docstring). Installed by
    :func:`crawler.render.enable_rendering`.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._robots: RobotsTxtMiddleware | None | bool = False  # False: not looked up yet

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def process_request(self, request: Request, spider: Any = None) -> None:
        options = request.meta.get("render")
        if not isinstance(options, dict):
            return
        # Set on every pass (a retry copies the meta): the session belongs to one download.
        session = PageSession(self, RenderOptions(**options), request.meta)
        request.meta["playwright"] = True
        # A service worker's requests would bypass the page's routes (images, robots.txt).
        request.meta.setdefault("playwright_context_kwargs", {"service_workers": "block"})
        request.meta["playwright_page_init_callback"] = session.attach
        request.meta["playwright_page_methods"] = [PageMethod(session.expand)]

    def inc_stat(self, key: str, count: int = 1) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(key, count)

    async def allowed(self, url: str) -> bool:
        """Whether robots.txt lets the crawl fetch ``url`` (always, without ROBOTSTXT_OBEY)."""
        robots = self._robots_middleware()
        if robots is None or not url.startswith(("http://", "https://")):
            return True
        try:
            await robots.process_request(Request(url))
        except IgnoreRequest:
            return False
        return True

    def _robots_middleware(self) -> RobotsTxtMiddleware | None:
        if self._robots is False:
            engine = self.crawler.engine
            middlewares = engine.downloader.middleware.middlewares if engine else ()
            self._robots = next((m for m in middlewares if isinstance(m, RobotsTxtMiddleware)), None)
        return self._robots or None


class PageSession:
    """One rendered page: its request routing, its captured JSON and its :class:`RenderOutcome`."""

    def __init__(self, owner: RenderMiddleware, options: RenderOptions, meta: dict[str, Any]) -> None:
        self.owner = owner
        self.options = options
        self.meta = meta
        self.outcome = RenderOutcome()
        self.in_flight: set[Any] = set()
        self._reads: set[asyncio.Task[None]] = set()
        self._answers: list[tuple[str, list[FeedImage], str | None]] = []  # (url, items, next)
        self._forbidden_logged = 0

    async def attach(self, page: Any, request: Request) -> None:
        """scrapy-playwright's page init callback: runs before the page loads."""
        # Routes registered later run first: this one sees every request before
        # scrapy-playwright's own (which sets the headers and sends it).
        await page.route("**", self.route)
        page.on("request", self._request_started)
        page.on("requestfinished", self._request_ended)
        page.on("requestfailed", self._request_ended)
        page.on("response", self._response)

    async def expand(self, page: Any) -> RenderOutcome:
        """The page method: drive the page, then wait for the JSON answers still being read."""
        await expand_page(page, self.options, self.outcome, lambda: len(self.in_flight))
        if self._reads:
            await asyncio.wait(list(self._reads), timeout=10)
        self._keep_shown_feeds()
        self.meta["rendered"] = self.outcome
        return self.outcome

    async def route(self, route: Any, request: Any) -> None:
        try:
            await self._route(route, request)
        except PlaywrightError:  # the page closed meanwhile: nothing left to answer
            pass

    async def _route(self, route: Any, request: Any) -> None:
        kind = request.resource_type
        if kind == "image":
            self.outcome.browser_images += 1
            self.owner.inc_stat("render/browser_images_blocked")
            await route.fulfill(status=200, content_type="image/gif", body=PLACEHOLDER_GIF)
            return
        if kind == "media":
            await route.abort("blockedbyclient")
            return
        if not await self.owner.allowed(request.url):
            self.outcome.robots_forbidden.append(request.url)
            self.owner.inc_stat("render/robots_forbidden")
            if self._forbidden_logged < 5:
                self._forbidden_logged += 1
                logger.info("robots.txt forbids the page's %s request, aborted: %s", kind, request.url)
            await route.abort("blockedbyclient")
            return
        await route.fallback()

    def _request_started(self, request: Any) -> None:
        if request.resource_type in _PAGE_DATA:
            self.in_flight.add(request)

    def _request_ended(self, request: Any) -> None:
        self.in_flight.discard(request)

    def _response(self, response: Any) -> None:
        if response.request.resource_type not in _PAGE_DATA or not 200 <= response.status < 300:
            return
        task = asyncio.ensure_future(self._read_json(response))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_json(self, response: Any) -> None:
        ctype = (response.headers.get("content-type") or "").lower()
        if "json" not in ctype and not ctype.startswith("text/"):
            return
        try:
            body = await response.body()
        except PlaywrightError:  # the page navigated or closed meanwhile
            return
        if len(body) > MAX_JSON_BYTES or ("json" not in ctype and body.lstrip()[:1] not in (b"{", b"[")):
            return
        try:
            data = json.loads(body)
        except ValueError:
            return
        images = feed_images(data, response.url)
        if images:
            self._answers.append((response.url, images, next_feed_url(data, response.url)))

    def _keep_shown_feeds(self) -> None:
        shown = self.outcome.shown_urls
        for url, images, next_url in self._answers:
            if not any(size in shown for image in images for size in image.sizes):
                self.owner.inc_stat("render/feed_answers_unshown")
                logger.debug("JSON answer %s lists images the page did not show: not its feed", url)
                continue
            self.outcome.feed_urls.append(url)
            self.outcome.feed_images.extend(images)
            self.outcome.feed_next = next_url
            self.owner.inc_stat("render/feed_answers")
