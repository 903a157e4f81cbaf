"""What every spider shares: the common arguments, provenance items and loud failures.

``ImageSpider`` holds ``label``/``query``/``max_images``; ``SearchSpider`` adds what the
sources that page through results share (search engines and image APIs): a base URL read from
a setting, ``max_pages``, one request per results page, and failures that stop the crawl with a
reason the log, the stats and the summary all show (``parse_error``, ``robots_denied``,
``request_failed``) instead of ending as an empty success.
"""

from __future__ import annotations

import difflib
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import scrapy
from scrapy.exceptions import CloseSpider, IgnoreRequest
from scrapy.http import Request
from scrapy.spidermiddlewares.httperror import HttpError

from crawler import frontier
from crawler.catalog import Catalog
from crawler.errors import UserError
from crawler.items import ImageItem
from crawler.labels import sanitize_label
from crawler.spiders.filters import FILTERS

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.python.failure import Failure
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["ImageSpider", "SearchSpider", "positive_int"]


def positive_int(name: str, value: str | int | None) -> int | None:
    """``value`` (a ``-a`` argument) as a positive int; ``None`` when absent or empty.

    Raises:
        UserError: naming the argument, when it is not a positive integer.
    """
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise UserError(f"-a {name} must be a positive integer, got {value!r} (e.g. -a {name}=100)")
    return number


def spider_label(spider_name: str, label: str) -> str:
    """``label`` sanitised to a folder name (:func:`crawler.labels.sanitize_label`).

    Raises:
        UserError: the label has no usable character.
    """
    try:
        return sanitize_label(label)
    except ValueError as exc:
        raise UserError(f"the {spider_name} spider cannot use this label: {exc} (pick a word or two)") from None


class ImageSpider(scrapy.Spider):
    """Base spider: the arguments every spider takes, and items that carry provenance.

    Arguments (``-a``):
        label: the category (folder name, sanitised). Required unless ``label_required`` is
            False (the ``urls`` spider, whose CSV rows may carry their own labels).
        query: the search query, recorded in the catalog (default: the label).
        max_images: stop once this many images were stored by this crawl; the store pipeline
            enforces it, :class:`crawler.middlewares.MaxImagesMiddleware` keeps items that could
            not be stored from being downloaded, spiders also stop paging (``enough_stored``).

    Each spider declares the ``-a`` arguments it takes in ``arguments`` (its own, added to its
    base classes'); a crawl given any other fails before its first request, listing the valid
    ones (:meth:`valid_arguments`).

    Raises:
        UserError: on a missing or unusable label, a non-positive ``max_images``, an unknown
            argument, when DATASET_DIR is not set, or on the shared frontier (scrapy-redis's
            ``SCHEDULER``) for a spider without ``shares_frontier``.
    """

    label_required = True
    # Whether the spider can run on the shared frontier (crawler/frontier.py): only spiders whose
    # queued requests are frontier entries (the urls spider) can; the others' results pages are
    # not entries, and would be neither split nor leased.
    shares_frontier = False
    arguments: ClassVar[tuple[str, ...]] = ("label", "query", "max_images")

    def __init__(
        self,
        label: str | None = None,
        query: str | None = None,
        max_images: str | int | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not label and self.label_required:
            raise UserError(f"the {self.name} spider needs a label (-a label=<category>)")
        self.label = spider_label(self.name, label) if label else None
        self.query = (query or label or "").strip()
        self.max_images = positive_int("max_images", max_images)

    @classmethod
    def valid_arguments(cls) -> list[str]:
        """The ``-a`` arguments of this spider: its bases' ``arguments``, then its own."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names += [name for name in vars(klass).get("arguments", ()) if name not in names]
        return names

    @classmethod
    def check_arguments(cls, given: Any) -> None:
        """Refuse ``-a`` arguments the spider does not declare (a typo would otherwise be
        ignored, and ``-a max_image=3`` would store everything).

        Raises:
            UserError: naming the unknown arguments, the closest valid one and all valid ones.
        """
        valid = cls.valid_arguments()
        unknown = [name for name in given if name not in valid]
        if not unknown:
            return
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"did you mean -a {close[0]}? " if close else ""
        raise UserError(
            f"the {cls.name} spider has no argument {', '.join('-a ' + name for name in unknown)} "
            f"({hint}valid: {', '.join(valid)})"
        )

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        cls.check_arguments(kwargs)
        if not crawler.settings.get("DATASET_DIR"):
            raise UserError("DATASET_DIR is not set (run with -s DATASET_DIR=<folder>)")
        if crawler.settings.get("CATALOG_URL"):
            # A bad or unreachable catalog database stops the crawl here, with one error line,
            # before any component starts (Scrapy's shutdown from open_spider is noisy).
            Catalog(crawler.settings["DATASET_DIR"], url=crawler.settings["CATALOG_URL"]).close()
        if not cls.shares_frontier and frontier.enabled(crawler.settings):
            raise UserError(
                f"the {cls.name} spider cannot run on the shared frontier (scrapy-redis SCHEDULER); "
                "only the urls spider can (crawl with Scrapy's own scheduler, or pass the image URLs to urls)"
            )
        spider = super().from_crawler(crawler, *args, **kwargs)
        if spider.max_images is not None and not crawler.settings.frozen:
            # Settings freeze only after the spider is built, so max_images can add its gate.
            middlewares = dict(crawler.settings.getdict("SPIDER_MIDDLEWARES"))
            middlewares.setdefault("crawler.middlewares.MaxImagesMiddleware", 950)
            crawler.settings.set("SPIDER_MIDDLEWARES", middlewares, priority="spider")
        return spider

    def enough_stored(self) -> bool:
        """True once the store pipeline has stored ``max_images`` images in this crawl."""
        if self.max_images is None or self.crawler.stats is None:
            return False
        return (self.crawler.stats.get_value("store/stored") or 0) >= self.max_images

    def image_item(self, url: str, page_url: str | None, **provenance: Any) -> ImageItem:
        """An ``ImageItem`` for ``url`` with this crawl's label, query and spider name.

        ``provenance`` may set ``licence``, ``author`` or a per-item ``label``.
        """
        fields = {"label": self.label, "query": self.query, "spider": self.name}
        fields.update({key: value for key, value in provenance.items() if value not in (None, "")})
        self.inc_stat("images")
        return ImageItem(url=url, page_url=page_url, **fields)

    def inc_stat(self, key: str, count: int = 1) -> None:
        """Bump ``<spider name>/<key>``."""
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"{self.name}/{key}", count)

    def fail(self, reason: str, url: str, why: str, *args: Any) -> CloseSpider:
        """Log an ERROR naming the spider and ``url``, bump ``<spider>/<reason>``, and return
        the ``CloseSpider(reason)`` for the caller to raise, so the crawl ends with that reason.

        ``why`` is a %-format string for ``args``.
        """
        logger.error(f"%s spider: %s at %s: {why}", self.name, reason, url, *args)
        self.inc_stat(reason)
        return CloseSpider(reason)


class SearchSpider(ImageSpider):
    """Base of the spiders that page through a source's results (HTML or JSON).

    Subclasses set ``base_url_setting`` and ``default_base_url`` (the setting names the
    service's base URL, so tests point it at 127.0.0.1), build the first request in ``start``
    with ``page_request`` and parse with callbacks that call ``image_result`` per result and
    ``can_follow`` before requesting the next page.

    Arguments (``-a``), besides ``ImageSpider``'s:
        max_pages: results pages requested at most (default ``MAX_PAGES``).

    Stats: ``<spider>/pages``, ``<spider>/images`` (image URLs yielded),
    ``<spider>/duplicate_results`` (URLs already yielded in this crawl), ``<spider>/no_results``,
    and the failure counters ``parse_error``, ``robots_denied``, ``request_failed``, each of
    which is also the crawl's close reason.
    """

    MAX_PAGES = 20
    # Every search spider takes the common filters; one its service lacks is refused with the
    # filters it has (crawler.spiders.filters.chosen_filters), not as an unknown argument.
    arguments: ClassVar[tuple[str, ...]] = ("max_pages", *FILTERS)
    base_url_setting = ""
    default_base_url = ""
    # Public APIs made for programs (their own usage policy governs clients) may keep robots.txt
    # for their web pages only; see the subclasses for the source's own words.
    api_requests_obey_robotstxt = True

    def __init__(self, *args: Any, max_pages: str | int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_pages = positive_int("max_pages", max_pages) or self.MAX_PAGES
        self.base_url = self.default_base_url
        self._seen_urls: set[str] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider = super().from_crawler(crawler, *args, **kwargs)
        base_url = crawler.settings.get(cls.base_url_setting) or cls.default_base_url
        spider.base_url = str(base_url).rstrip("/")
        return spider

    def page_request(self, url: str, callback: Any, page: int, **meta: Any) -> Request:
        """A request for results page ``page`` (1-based) whose failures are reported loudly."""
        meta = {"page_number": page, **meta}
        if not self.api_requests_obey_robotstxt:
            meta["dont_obey_robotstxt"] = True
        return Request(url, callback=callback, errback=self.page_failed, meta=meta, dont_filter=True)

    def image_result(self, url: str | None, page_url: str | None, **provenance: Any) -> ImageItem | None:
        """The item for one result's image URL, or ``None`` for a URL seen before or unusable."""
        if not url or not url.startswith(("http://", "https://", "data:")):
            self.inc_stat("unusable_results")
            return None
        if url in self._seen_urls:
            self.inc_stat("duplicate_results")
            return None
        self._seen_urls.add(url)
        return self.image_item(url, page_url or None, **provenance)

    def page_done(self, response: Response, found: int, new: int) -> None:
        """Log and count one parsed results page."""
        self.inc_stat("pages")
        logger.info(
            "%s page %d: %d results, %d new image URLs (%s)",
            self.name, response.meta.get("page_number", 1), found, new, response.url,
        )

    def json_object(self, response: Response) -> dict[str, Any]:
        """The JSON object a results page answered.

        Raises:
            CloseSpider: ``parse_error`` (logged, counted) when the body is not a JSON object.
        """
        try:
            data = response.json()  # type: ignore[attr-defined]
        except (AttributeError, ValueError):
            ctype = response.headers.get("Content-Type", b"").decode("latin-1") or "no Content-Type"
            raise self.fail("parse_error", response.url, "the answer is not JSON (%s)", ctype) from None
        if not isinstance(data, dict):
            raise self.fail("parse_error", response.url, "the answer is not a JSON object")
        return data

    def json_results(self, response: Response) -> tuple[dict[str, Any], list[Any]]:
        """The JSON object of a results page and its ``results`` list (DuckDuckGo's and
        Openverse's shape); an empty list on page 1 is reported by ``no_results``.

        Raises:
            CloseSpider: ``parse_error`` when there is no ``results`` list.
        """
        data = self.json_object(response)
        results = data.get("results")
        if not isinstance(results, list):
            raise self.fail("parse_error", response.url, "no 'results' list in the JSON (keys: %s)", sorted(data))
        if not results and response.meta.get("page_number", 1) == 1:
            self.no_results(response)
        return data, results

    def no_results(self, response: Response) -> None:
        """The source answered that the query has no results: a WARNING, not a failure."""
        self.inc_stat("no_results")
        logger.warning("%s spider: no results for query %r at %s", self.name, self.query, response.url)

    def can_follow(self, response: Response, new: int) -> bool:
        """Whether to request the page after ``response``; logs why not."""
        page = response.meta.get("page_number", 1)
        if self.enough_stored():
            logger.info("%s: max_images (%d) stored, not paging further", self.name, self.max_images)
            return False
        if page >= self.max_pages:
            logger.info("%s: max_pages (%d) reached at %s", self.name, self.max_pages, response.url)
            return False
        if new == 0:
            # Result pages past the end repeat earlier results (Bing does): nothing more to get.
            logger.info("%s: no new results on page %d, stopping", self.name, page)
            return False
        return True

    def page_failed(self, failure: Failure) -> None:
        """Errback of results pages: a robots.txt refusal or an HTTP/network error (after
        Scrapy's retries) ends the crawl with reason ``robots_denied`` or ``request_failed``;
        images already found still finish their way through the pipelines."""
        request = failure.request  # type: ignore[attr-defined]
        page = request.meta.get("page_number", 1)
        if failure.check(IgnoreRequest) and "robots.txt" in str(failure.value):
            raise self.fail("robots_denied", request.url, "the site's robots.txt forbids it "
                            "(set -s ROBOTSTXT_OBEY=False only where the source's terms allow)")
        if failure.check(HttpError):
            why, args = "HTTP %d", (failure.value.response.status,)
        else:
            why, args = "%s", (failure.getErrorMessage(),)
        raise self.fail("request_failed", request.url, f"results page {page}: {why}", *args)
