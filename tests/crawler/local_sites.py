"""Small fixture sites on 127.0.0.1 for whole-crawl tests the demo site does not cover:
an infinite-scroll gallery built by JavaScript, and a site whose robots.txt forbids crawling.

(A module rather than conftest.py, so test modules can import it.)"""

from __future__ import annotations

from crawler_testkit import encode, picture
from http_testkit import HttpServer, Request

# The page inserts every <img> with JavaScript: the first batch on load, one more batch per
# scroll near the bottom (after a short "fetch" delay, as real sites do), up to TOTAL.
SCROLL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Infinite gallery</title>
<style>img {{ display: block; width: 200px; height: 300px; }}</style></head>
<body><h1>Infinite gallery</h1><div id="grid"></div>
<script>
const TOTAL = {total}, BATCH = {batch};
let shown = 0, loading = false;
function more() {{
  const grid = document.getElementById("grid");
  for (let i = 0; i < BATCH && shown < TOTAL; i++, shown++) {{
    const img = document.createElement("img");
    img.src = "/img/" + shown + ".png";
    img.alt = "picture " + shown;
    grid.appendChild(img);
  }}
}}
window.addEventListener("scroll", () => {{
  const root = document.scrollingElement;
  if (loading || shown >= TOTAL) return;
  if (window.innerHeight + window.scrollY >= root.scrollHeight - 50) {{
    loading = true;
    setTimeout(() => {{ more(); loading = false; }}, {delay_ms});
  }}
}});
document.addEventListener("DOMContentLoaded", more);
</script></body></html>
"""


class LocalSite(HttpServer):
    """A threaded HTTP server on 127.0.0.1 serving ``routes`` (path -> (type, bytes)).

    Use as a context manager; ``url`` is its base URL.
    """

    def __init__(self, routes: dict[str, tuple[str, bytes]]) -> None:
        super().__init__()
        self.routes = routes
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return self.base

    def on_get(self, request: Request) -> None:
        self.requests.append(request.path)
        ctype, body = self.routes.get(request.path, ("text/html", b"<h1>404</h1>"))
        request.reply(200 if request.path in self.routes else 404, ctype, body)


def infinite_scroll_site(total: int = 20, batch: int = 4, delay_ms: int = 200) -> LocalSite:
    """``/gallery``: ``total`` distinct PNGs (``/img/<n>.png``, 128x128), ``batch`` per scroll."""
    routes = {
        "/robots.txt": ("text/plain", b"User-agent: *\nAllow: /\n"),
        "/gallery": (
            "text/html; charset=utf-8",
            SCROLL_PAGE.format(total=total, batch=batch, delay_ms=delay_ms).encode(),
        ),
    }
    for n in range(total):
        routes[f"/img/{n}.png"] = ("image/png", encode(picture(1000 + n)))
    return LocalSite(routes)


def forbidding_site() -> LocalSite:
    """``/gallery`` with three plain images, and a robots.txt that disallows everything."""
    images = "".join(f'<img src="/img/{n}.png">' for n in range(3))
    routes = {
        "/robots.txt": ("text/plain", b"User-agent: *\nDisallow: /\n"),
        "/gallery": ("text/html; charset=utf-8", f"<html><body>{images}</body></html>".encode()),
    }
    for n in range(3):
        routes[f"/img/{n}.png"] = ("image/png", encode(picture(2000 + n)))
    return LocalSite(routes)
