"""Retries slow the site down when it answers 429/503, honouring Retry-After."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate

import pytest
from crawls import catalog_rows
from fixture_server import finish, image_bytes, start_crawl
from http_testkit import HttpServer, Request

from crawler.middlewares import retry_after_seconds


@pytest.mark.parametrize(
    ("header", "expected"),
    [(b"3", 3.0), ("  120 ", 120.0), (None, None), (b"", None), (b"soon", None), (b"-5", None)],
)
def test_retry_after_delay_seconds(header, expected) -> None:
    assert retry_after_seconds(header) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0.0


class BusyServer(HttpServer):
    """Answers 429 with ``Retry-After: 1`` to the first request for each image, then the image."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, str, int]] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def on_get(self, request: Request) -> None:
        with self._lock:
            first = request.path.startswith("/busy/") and request.path not in self._seen
            self._seen.add(request.path)
        if request.path == "/robots.txt":
            status, body, ctype = 200, b"User-agent: *\nAllow: /\n", "text/plain"
        elif first:
            status, body, ctype = 429, b"slow down", "text/plain"
        else:
            status, body, ctype = 200, image_bytes(request.path), "image/jpeg"
        self.log.append((time.monotonic(), request.path, status))
        request.reply(status, ctype, body, {"Retry-After": "1"} if status == 429 else None)


@pytest.mark.timeout(120)
def test_a_429_is_retried_after_the_delay_the_site_asked_for(tmp_path) -> None:
    with BusyServer() as server:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{server.base}/busy/a.jpg\n{server.base}/busy/b.jpg\n")
        result = finish(start_crawl("urls", tmp_path / "data", "-a", f"file={urls}", "-a", "label=busy"))
    assert result.returncode == 0, result.stdout[-3000:]
    stored = [r for r in catalog_rows(tmp_path / "data") if r["status"] == "stored"]
    assert len(stored) == 2
    for path in ("/busy/a.jpg", "/busy/b.jpg"):
        times = [(t, status) for t, p, status in server.log if p == path]
        assert [status for _, status in times] == [429, 200]
        assert times[1][0] - times[0][0] >= 1.0  # Retry-After: 1
    assert "'retry/backoff': 2" in result.stdout
