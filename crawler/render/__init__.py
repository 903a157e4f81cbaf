"""Rendering pages in Chromium for the gallery spider (``-a render=1``), and a page's own data.

What the spider calls (this module imports neither Playwright nor scrapy-playwright, so a plain
crawl never loads them):

- :func:`enable_rendering`: installs scrapy-playwright's download handlers and
  :class:`crawler.render.middleware.RenderMiddleware` for this crawl.
- :func:`render_meta`: the meta of a page request to render (picklable, so JOBDIR keeps it).
- :func:`page_responses`, :func:`page_feed`, :func:`feed_next_url`, :func:`log_rendered`: what a
  rendered (or JSON) response holds, for the spider's ``parse``.

How a page is driven is :mod:`crawler.render.page`; how its requests are routed (images
blocked, robots.txt, JSON captured) is :mod:`crawler.render.middleware`; which JSON lists
gallery items is :mod:`crawler.render.feeds`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from scrapy.http import HtmlResponse, JsonResponse, TextResponse

from crawler.errors import UserError
from crawler.render.feeds import FeedImage, feed_images, next_feed_url
from crawler.render.state import RenderOptions

if TYPE_CHECKING:
    from scrapy.http import Response
    from scrapy.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "RenderOptions",
    "css_selector",
    "enable_rendering",
    "feed_next_url",
    "is_json",
    "log_rendered",
    "page_feed",
    "page_responses",
    "render_meta",
]

PLAYWRIGHT_HANDLER = "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"
RENDER_MIDDLEWARE = "crawler.render.middleware.RenderMiddleware"
# Before scrapy-playwright's handler, after Scrapy's robots.txt (100) and user agent (500)
# middlewares, so a forbidden page is never rendered.
RENDER_MIDDLEWARE_ORDER = 800


def enable_rendering(settings: Settings) -> None:
    """Route http(s) downloads through scrapy-playwright, point it at ``CHROMIUM_PATH`` and
    install the render middleware.

    The handler renders only requests whose meta has ``playwright`` (the middleware sets it
    for ``meta["render"]``); the others (images, robots.txt) keep Scrapy's HTTP/1.1 handler.
    Playwright starts its driver when the engine starts and Chromium on the first rendered
    request.

    Raises:
        UserError: the browser executable does not exist.
    """
    chromium = settings.get("CHROMIUM_PATH") or os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    options = dict(settings.getdict("PLAYWRIGHT_LAUNCH_OPTIONS"))
    options.setdefault("executable_path", chromium)
    if not os.access(options["executable_path"], os.X_OK):
        raise UserError(
            f"render=1 needs Chromium at {options['executable_path']!r} (install it: "
            "`make browsers` or apt-get install chromium; or set -s CHROMIUM_PATH=<path>)"
        )
    handlers = dict(settings.getdict("DOWNLOAD_HANDLERS"))
    handlers.update({"http": PLAYWRIGHT_HANDLER, "https": PLAYWRIGHT_HANDLER})
    settings.set("DOWNLOAD_HANDLERS", handlers, priority="spider")
    settings.set("PLAYWRIGHT_LAUNCH_OPTIONS", options, priority="spider")
    middlewares = dict(settings.getdict("DOWNLOADER_MIDDLEWARES"))
    middlewares.setdefault(RENDER_MIDDLEWARE, RENDER_MIDDLEWARE_ORDER)
    settings.set("DOWNLOADER_MIDDLEWARES", middlewares, priority="spider")
    if not settings.get("PLAYWRIGHT_BROWSER_TYPE"):
        settings.set("PLAYWRIGHT_BROWSER_TYPE", "chromium", priority="spider")


def css_selector(name: str, value: str | None) -> str | None:
    """``value`` of the ``-a name`` argument as a CSS selector (``None`` when empty).

    Only syntax is checked (with cssselect, parsel's parser): selectors it cannot translate but
    Chromium may know (pseudo-elements) pass.

    Raises:
        UserError: ``value`` is not CSS.
    """
    from cssselect import GenericTranslator, SelectorSyntaxError
    from cssselect.xpath import ExpressionError

    text = (value or "").strip()
    if not text:
        return None
    try:
        GenericTranslator().css_to_xpath(text)
    except SelectorSyntaxError as exc:
        raise UserError(f"-a {name} is not a CSS selector: {exc} (e.g. -a {name}='button.load-more')") from None
    except ExpressionError:
        pass
    return text


def render_meta(options: RenderOptions) -> dict[str, Any]:
    """The meta that has a page request rendered with ``options``."""
    return {"render": asdict(options)}


def page_responses(response: Response) -> list[TextResponse]:
    """The HTML pages a response stands for: the pages a rendered page's script-driven "next"
    control left (oldest first), then the response itself unless it is JSON."""
    rendered = response.meta.get("rendered")
    snapshots = getattr(rendered, "snapshots", None) or []
    pages: list[TextResponse] = [
        HtmlResponse(url=response.url, body=html, encoding="utf-8", request=response.request) for html in snapshots
    ]
    if isinstance(response, TextResponse) and not is_json(response):
        pages.append(response)
    return pages


def page_feed(response: Response) -> list[FeedImage]:
    """The gallery items of a page's own data: the JSON answers captured while rendering it,
    or, for a plain crawl started at such an API, the JSON response itself."""
    rendered = response.meta.get("rendered")
    if rendered is not None:
        return list(rendered.feed_images)
    data = _json_of(response)
    return feed_images(data, response.url) if data is not None else []


def feed_next_url(response: Response) -> str | None:
    """The next page of a page's own data, or ``None``: the one a JSON response names
    (``next``, ``links.next``...), or for a rendered page, the one its last captured JSON
    answer names when the page did not load it (its scrolling stopped early)."""
    rendered = response.meta.get("rendered")
    if rendered is not None:
        return rendered.feed_next if rendered.feed_next not in rendered.feed_urls else None
    data = _json_of(response)
    return next_feed_url(data, response.url) if data is not None else None


def log_rendered(response: Response, page_number: int) -> None:
    """Log what rendering the page did, and the JSON API it found, if any."""
    rendered = response.meta.get("rendered")
    if rendered is None:
        return
    logger.info(
        "page %d rendered: %d scrolls, %d 'load more' clicks, %d 'next' clicks, %d image URLs, "
        "%d browser image requests blocked; stopped: %s%s",
        page_number, rendered.scrolls, rendered.clicks, rendered.pages - 1, rendered.images,
        rendered.browser_images, rendered.stopped,
        " (scroll_timeout reached)" if rendered.timed_out else "",
    )
    if rendered.stopped in ("max_scrolls", "scroll_timeout"):
        logger.warning(
            "page %d still showed new images when %s ran out: raise -a %s to get more (%s)",
            page_number, rendered.stopped, rendered.stopped, response.url,
        )
    if rendered.feed_urls:
        logger.info(
            "page %d loads its items from a JSON API: %d answer(s), %d image URLs, first %s "
            "(a plain crawl reads it without a browser: -a start_urls=%s)",
            page_number, len(rendered.feed_urls), len(rendered.feed_images), rendered.feed_urls[0],
            rendered.feed_urls[0],
        )


def is_json(response: Response) -> bool:
    """Whether the response is JSON (an API page, not HTML)."""
    ctype = response.headers.get(b"Content-Type", b"").decode("latin-1").lower()
    return isinstance(response, JsonResponse) or (isinstance(response, TextResponse) and "json" in ctype)


def _json_of(response: Response) -> Any:
    if not is_json(response):
        return None
    try:
        return response.json()
    except ValueError:
        return None
