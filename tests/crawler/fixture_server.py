"""A local HTTP server for the spider tests: fixture responses, real image bytes, a request log.

(A module rather than conftest.py, so test modules can import it: pytest puts this folder on
sys.path.)

- ``/img/<name>``: a JPEG made with Pillow, distinct per name (seeded by the name), so dedupe
  keeps every one; names containing ``dead`` answer 404.
- ``/robots.txt``: allows everything but ``/denied/``.
- anything else: ``route(path, query)`` of the test, which returns ``(status, content_type,
  body)`` or ``None`` for 404.

Fixture files live in ``fixtures/<source>/``; ``{{BASE}}`` in them stands for the server's
``http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from crawler_testkit import encode, picture
from crawls import FAST, REPO, SCRAPY
from http_testkit import HttpServer, Request

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROBOTS_TXT = "User-agent: *\nDisallow: /denied/\n"

Route = Callable[[str, dict[str, str]], "tuple[int, str, bytes] | None"]


def image_bytes(name: str) -> bytes:
    """A 200x150 JPEG whose content depends only on ``name``."""
    return encode(picture(zlib.crc32(name.encode()), size=(200, 150)), "JPEG", quality=90)


class FixtureServer(HttpServer):
    """``with FixtureServer(route) as server``: serving on ``server.base`` in a thread.

    ``server.requests`` logs ``(path, query dict)`` of every request, in arrival order.
    """

    def __init__(self, route: Route) -> None:
        super().__init__()
        self.route = route
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._images: dict[str, bytes] = {}

    def on_get(self, request: Request) -> None:
        parts = urlsplit(request.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.requests.append((parts.path, query))
        request.reply(*(self.answer(parts.path, query) or (404, "text/plain", b"not found")))

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, str, bytes] | None:
        if path == "/robots.txt":
            return 200, "text/plain", ROBOTS_TXT.encode()
        if path.startswith("/img/"):
            name = path[len("/img/"):]
            if "dead" in name:
                return None
            if name not in self._images:
                self._images[name] = image_bytes(name)
            return 200, "image/jpeg", self._images[name]
        return self.route(path, query)

    def fixture(self, source: str, name: str) -> bytes:
        """A fixture file with ``{{BASE}}`` replaced by this server's base URL."""
        return (FIXTURES / source / name).read_text(encoding="utf-8").replace("{{BASE}}", self.base).encode()

    def paths(self, prefix: str) -> list[tuple[str, dict[str, str]]]:
        """Logged requests whose path starts with ``prefix``."""
        return [(path, query) for path, query in self.requests if path.startswith(prefix)]


def start_crawl(spider: str, dataset: Path, *args: str) -> subprocess.Popen[str]:
    """``scrapy crawl <spider> <args> -s DATASET_DIR=<dataset>`` started in the repository."""
    command = [*SCRAPY, "crawl", spider, *args, "-s", f"DATASET_DIR={dataset}", *FAST]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    out, _ = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)
