"""The ``urls`` spider: download the image URLs listed in a file.

Usage::

    scrapy crawl urls -a file=<urls.txt|urls.csv> [-a label=<category>] [-a query=...] \\
        [-a max_images=N] -s DATASET_DIR=<folder>

The seeds' "export the search results' URLs from the browser, then download" workflow. The file
is either plain text, one URL a line (``#`` starts a comment, blank lines are skipped), or a CSV
whose header names a ``url`` column and optionally a ``label`` column.

With the shared frontier on (scrapy-redis's ``SCHEDULER``, see ``crawler/frontier.py``), the
list's entries go into the shared Redis queue and every ``urls`` crawl on it downloads a share;
``-a file`` is then optional (a process without one only takes entries), and URLs pushed to the
Redis list ``urls:start_urls`` (``url`` or ``url<TAB>label``) join the queue too.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.http import Request, Response

from crawler import frontier
from crawler.errors import UserError
from crawler.threads import run_in_thread
from crawler.spiders.base import ImageSpider, spider_label

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["UrlsSpider", "read_url_file"]

_SCHEMES = ("http://", "https://", "data:")
# ``file`` of a process that only takes entries from the shared frontier (no -a file given).
_NO_FILE = object()


def read_url_file(path: str | Path) -> list[tuple[str, str | None]]:
    """``(url, label or None)`` per entry of a URL list file, in file order.

    A file is read as CSV when its name ends in ``.csv`` or its first non-blank, non-comment
    line is a header with a ``url`` column (case-insensitive); the ``label`` column, when
    present, gives each row's label (empty cells give ``None``). Otherwise each non-blank line
    not starting with ``#`` is one URL. Surrounding whitespace is stripped; the text is UTF-8
    (a BOM is allowed).

    Raises:
        OSError: when the file cannot be read.
        ValueError: for a CSV without a ``url`` column.
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return []
    header = [cell.strip().lower() for cell in next(csv.reader([lines[0]]))]
    if str(path).lower().endswith(".csv") or "url" in header:
        if "url" not in header:
            raise ValueError(f"{path}: a CSV URL list needs a 'url' column, found {header}")
        rows = csv.reader(io.StringIO("\n".join(lines[1:])))
        url_at = header.index("url")
        label_at = header.index("label") if "label" in header else None
        entries = []
        for row in rows:
            url = row[url_at].strip() if len(row) > url_at else ""
            label = row[label_at].strip() if label_at is not None and len(row) > label_at else ""
            if url:
                entries.append((url, label or None))
        return entries
    return [(line.strip(), None) for line in lines]


class UrlsSpider(ImageSpider):
    """Yield one ``ImageItem`` per URL of a URL list file (``page_url`` empty: no page).

    Arguments (``-a``):
        file: the URL list (text or CSV, see ``read_url_file``); required, but with the shared
            frontier (``crawler/frontier.py``), where a process without it takes entries only.
        label: the category; required unless every CSV row has a ``label``. A row's own label
            overrides it.
        query: recorded in the catalog (default: the label).
        max_images: stop once this many images were stored by this crawl (all labels together).

    URLs other than ``http(s)://`` and ``data:`` are skipped with a WARNING
    (stat ``urls/skipped``); a URL listed twice is requested once (``urls/duplicate_entries``).

    Raises:
        UserError: no ``file``, an unreadable or empty file, a CSV without ``url`` column, a
            row without a label when no ``-a label`` was given, a bad ``max_images``, an
            unknown argument, or when DATASET_DIR is not set.
    """

    name = "urls"
    label_required = False
    shares_frontier = True
    arguments = ("file",)

    def __init__(self, *args: Any, file: Any = None, query: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, query=query, **kwargs)
        # Without -a query, each row's query is its own label.
        self.query_given = bool(query)
        self.file: str | None = None
        self.entries: list[tuple[str, str | None]] = []
        if file is _NO_FILE:
            return
        if not file:
            raise UserError("the urls spider needs a URL list (-a file=<urls.txt|urls.csv>)")
        try:
            entries = read_url_file(file)
        except OSError as exc:
            raise UserError(
                f"the urls spider cannot read -a file={file}: {exc.strerror or exc} "
                "(give the path of a readable text or CSV file of URLs)"
            ) from None
        except ValueError as exc:  # a CSV without a url column, or not UTF-8 text
            raise UserError(f"{exc} (a text file of URLs, one a line, or a CSV with a 'url' column)") from None
        if not entries:
            raise UserError(f"the urls spider found no URLs in {file} (one URL a line; # starts a comment)")
        unlabelled = [url for url, label in entries if label is None]
        if unlabelled and self.label is None:
            raise UserError(
                f"the urls spider needs a label: {len(unlabelled)} entries of {file} have none, "
                f"first {unlabelled[0][:100]} (pass -a label=<category> or add a label column)"
            )
        self.file = file
        # Row labels are checked now, so a bad one fails before anything is downloaded.
        self.entries = [(url, spider_label(self.name, label) if label else None) for url, label in entries]

    @classmethod
    def update_settings(cls, settings: BaseSettings) -> None:
        super().update_settings(settings)
        frontier.install(settings)

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        if not kwargs.get("file") and frontier.enabled(crawler.settings):
            kwargs["file"] = _NO_FILE
        return super().from_crawler(crawler, *args, **kwargs)

    async def start(self) -> AsyncIterator[Any]:
        if frontier.enabled(self.crawler.settings):
            async for request in self.frontier_entries():
                yield request
            return
        # The list is fetched through Scrapy's file:// handler so that the items come from a
        # callback, not from start(): Scrapy 2.19 never finishes closing a spider (as at
        # max_images) while items yielded by start() are still in the pipelines
        # (scrapy/scrapy#7029).
        yield Request(Path(self.file).resolve().as_uri(), callback=self.parse_list, dont_filter=True)

    def parse_list(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """Yield an ``ImageItem`` per usable, not yet seen entry of the list (read at start-up)."""
        seen: set[str] = set()
        logger.info("urls: %d entries in %s", len(self.entries), self.file)
        for url, label in self.entries:
            if self.enough_stored():
                logger.info("urls: max_images (%d) stored, the rest of %s is skipped", self.max_images, self.file)
                return
            if not url.startswith(_SCHEMES):
                logger.warning("urls: not an http(s) or data: URL, skipped: %s", url[:200])
                self.inc_stat("skipped")
                continue
            if url in seen:
                self.inc_stat("duplicate_entries")
                continue
            seen.add(url)
            query = self.query if self.query_given else (label or self.query)
            yield self.image_item(url, None, label=label, query=query)

    # -- the shared frontier (crawler/frontier.py) -------------------------------------------
    async def frontier_entries(self) -> AsyncIterator[Request]:
        """An entry request per usable entry of the list without a catalog row; the shared
        seen-set keeps an entry queued by several processes to one."""
        if not self.entries:
            return
        done = await run_in_thread(
            frontier.catalogued_urls, self.crawler.settings["DATASET_DIR"], None, self.crawler.settings.get("CATALOG_URL")
        )
        seen: set[str] = set()
        for url, label in self.entries:
            if url in done or url in seen:
                self.inc_stat("catalogued" if url in done else "duplicate_entries")
                seen.add(url)
                continue
            seen.add(url)
            request = self.entry(url, label)
            if request is not None:
                yield request
        logger.info("urls: %d entries of %s offered to the shared frontier (%d already in the catalog)",
                    len(seen) - len(done & seen), self.file, len(done & seen))

    def entry(self, url: str, label: str | None) -> Request | None:
        """The frontier request for one entry, or ``None`` (logged) for an unusable one."""
        if not url.startswith(_SCHEMES):
            logger.warning("urls: not an http(s) or data: URL, skipped: %s", url[:200])
            self.inc_stat("skipped")
            return None
        label = label or self.label
        if label is None:
            logger.warning("urls: no label for %s (push url<TAB>label, or give -a label)", url[:200])
            self.inc_stat("skipped")
            return None
        query = self.query if self.query_given else label
        return frontier.entry_request(url, label, query, self.parse_entry)

    def pushed_entry(self, url: str, label: str | None) -> Request | None:
        """The frontier request for a URL pushed to Redis (its label sanitised), or ``None``."""
        try:
            label = spider_label(self.name, label) if label else None
        except UserError as exc:
            logger.warning("urls: pushed entry %s skipped: %s", url[:200], exc)
            self.inc_stat("skipped")
            return None
        return self.entry(url, label)

    def parse_entry(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """The item for one entry popped from the shared frontier (the response is empty)."""
        if self.enough_stored():
            return  # the entry goes back to the shared queue when this crawl closes
        entry = response.meta[frontier.ENTRY]
        yield self.image_item(response.url, None, label=entry["label"], query=entry["query"])
