"""What rendering one page is given (:class:`RenderOptions`) and gives back
(:class:`RenderOutcome`): plain data, so the spider can build and read them without Playwright."""

from __future__ import annotations

from dataclasses import dataclass, field

from crawler.render.feeds import FeedImage

__all__ = ["RenderOptions", "RenderOutcome"]


@dataclass
class RenderOptions:
    """The bounds of one page's rendering.

    Attributes:
        max_scrolls: rounds (scroll, and press a control) at most.
        timeout: seconds for all rounds of the page.
        pause: seconds a round waits for a new image URL (longer while the page's XHR/fetch
            requests are in flight, up to :attr:`busy_factor` times this).
        idle_rounds: rounds in a row without a new image URL that end the loop.
        more_selector: the user's CSS selector of the "load more" control (replaces the search).
    """

    max_scrolls: int = 20
    timeout: float = 60.0
    pause: float = 1.0
    idle_rounds: int = 2
    more_selector: str | None = None
    busy_factor: float = 5.0


@dataclass
class RenderOutcome:
    """What rendering one page did and found (``request.meta["rendered"]``).

    Attributes:
        scrolls: rounds run; clicks: "load more" presses that showed new images; pages: pages
        seen (1 + script-driven "next" presses that showed new images); images: image URLs
        the page showed in all; timed_out: ``timeout`` ended the loop; stopped: why the loop
        ended (``"nothing new"``, ``"max_scrolls"``, ``"scroll_timeout"``, ``"page error"``,
        ``"navigated"``).
        snapshots: HTML of each page a "next" press left (the spider extracts them like the
        final page).
        feed_urls, feed_images: the JSON answers (XHR/fetch) that listed the gallery's items
        (items of which the page showed an image), and those items, in arrival order;
        feed_next: the next page the last of them names.
        shown_urls: the absolute image URLs the page showed.
        browser_images: image requests the browser made (answered with a placeholder, never
        sent); robots_forbidden: URLs of the page's requests robots.txt forbids (aborted).
    """

    scrolls: int = 0
    clicks: int = 0
    pages: int = 1
    images: int = 0
    timed_out: bool = False
    stopped: str = "nothing new"
    snapshots: list[str] = field(default_factory=list)
    feed_urls: list[str] = field(default_factory=list)
    feed_images: list[FeedImage] = field(default_factory=list)
    feed_next: str | None = None
    shown_urls: set[str] = field(default_factory=set)
    browser_images: int = 0
    robots_forbidden: list[str] = field(default_factory=list)
