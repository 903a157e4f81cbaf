"""The crawl's log formatter (crawler/logformatter.py): Scrapy's DEBUG entries per response and
per item are built only when a handler would emit them."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from scrapy import Spider
from scrapy.http import Request, Response

from crawler.logformatter import ImageLogFormatter


class _Kept(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def alone() -> Iterator[list[logging.Logger]]:
    """Scrapy's engine and scraper loggers cut off from the root's handlers; a test sets their
    handlers itself (pytest adds its capturing handlers to them when the test's call starts)."""
    loggers = [logging.getLogger("scrapy.core.engine"), logging.getLogger("scrapy.core.scraper")]
    saved = [(lg.propagate, lg.handlers[:], lg.level) for lg in loggers]
    for lg in loggers:
        lg.propagate, lg.handlers = False, []
        lg.setLevel(logging.DEBUG)  # as under Scrapy, whose root logger is NOTSET
    yield loggers
    for lg, (propagate, handlers, level) in zip(loggers, saved, strict=True):
        lg.propagate, lg.handlers = propagate, handlers
        lg.setLevel(level)


def _entries(formatter: ImageLogFormatter) -> tuple[object, object]:
    request = Request("http://127.0.0.1/a.jpg")
    response = Response(request.url, status=200, request=request)
    spider = Spider("gallery")
    return formatter.crawled(request, response, spider), formatter.scraped({"url": request.url}, response, spider)


def test_debug_entries_are_built_when_a_handler_keeps_debug(alone) -> None:
    for lg in alone:
        lg.handlers = [_Kept(logging.DEBUG)]
    crawled, scraped = _entries(ImageLogFormatter())
    assert crawled is not None and crawled["level"] == logging.DEBUG and "Crawled" in crawled["msg"]
    assert scraped is not None and scraped["level"] == logging.DEBUG and "Scraped" in scraped["msg"]


def test_no_debug_entry_when_every_handler_drops_it(alone) -> None:
    for lg in alone:
        lg.handlers = [_Kept(logging.INFO)]
    assert _entries(ImageLogFormatter()) == (None, None)


def test_a_logger_level_above_debug_drops_them_too(alone) -> None:
    for lg in alone:
        lg.handlers = [_Kept(logging.DEBUG)]
        lg.setLevel(logging.INFO)
    assert _entries(ImageLogFormatter()) == (None, None)


def test_without_any_handler_the_last_resort_decides(alone) -> None:
    # logging's lastResort handler (WARNING) drops DEBUG records.
    for lg in alone:
        lg.handlers = []
    assert _entries(ImageLogFormatter()) == (None, None)


def test_a_debug_crawl_still_logs_each_response_and_item(tmp_path) -> None:
    from crawls import gallery_command, run_crawl
    from local_sites import LocalSite, encode, picture

    images = "".join(f'<img src="/img/{n}.png">' for n in range(2))
    routes = {
        "/robots.txt": ("text/plain", b"User-agent: *\nAllow: /\n"),
        "/gallery": ("text/html; charset=utf-8", f"<html><body>{images}</body></html>".encode()),
    } | {f"/img/{n}.png": ("image/png", encode(picture(3000 + n))) for n in range(2)}
    with LocalSite(routes) as site:
        result = run_crawl(gallery_command(f"{site.url}/gallery", "cats", tmp_path / "data", "-s", "LOG_LEVEL=DEBUG"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Crawled (200) <GET http://127.0.0.1" in result.stdout
    assert result.stdout.count("Scraped from <200") == 2, result.stdout[-3000:]
