"""A local site on 127.0.0.1 with one JavaScript gallery per way pages load more images, for
the ``render=1`` tests in real Chromium.

(A module rather than conftest.py, so test modules can import it.)

Every gallery ``/<kind>`` shows :data:`TOTAL` distinct PNGs ``/img/<kind>/<n>.png`` that no
static parse can find (their URLs are only in scripts, JSON or HTML fragments fetched later):

- ``scroll``: infinite scroll, a batch appended when the window nears the bottom.
- ``more``: a "Load more" ``<button>`` fetches the next HTML fragment and appends it.
- ``next``: numbered pages driven by script; a "Suivant ›" ``<button>`` (no href) replaces the
  grid with the next page's images.
- ``api``: the page renders items from its JSON API (``/api/photos?page=N``, each answer naming
  the ``next`` one) and asks for more only on mouse-wheel events, which no programmatic scroll
  sends; it also fetches ``/private/...`` JSON, which robots.txt forbids, from its own host and
  from ``localhost`` (another host for robots.txt), and sponsored items (``/api/sponsored``)
  whose images it never shows.
- ``icon``: the "load more" of ``more`` as an unlabelled icon button (``.fab``), which only
  ``-a more_selector=`` finds.
- ``lazy``: placeholders whose real ``src``, ``srcset`` or ``<picture><source srcset>`` an
  IntersectionObserver sets when they come into view; the ``srcset`` ones also offer a small
  ``-s`` variant nobody should fetch.

``requests`` logs ``(path, headers)`` of every request, so a test can tell the crawler's image
requests (plain HTTP) from a browser's (``Sec-Fetch-Dest`` and friends).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

from crawler_testkit import encode, picture
from http_testkit import HttpServer, Request

TOTAL, BATCH = 12, 4
KINDS = ("scroll", "more", "next", "api", "lazy", "icon")
ROBOTS = "User-agent: *\nDisallow: /private/\n"

_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>img {{ display: block; width: 240px; height: 320px; margin: 8px; }}</style></head><body>
<header><nav><a href="/">Home</a> <button type="button">More</button></nav></header>
<h1>{title}</h1>"""

PAGES = {
    "scroll": _HEAD.format(title="Infinite feed") + """<div id="grid"></div>
<script>
let shown = 0, loading = false;
function more() {
  const grid = document.getElementById("grid");
  for (let i = 0; i < BATCH && shown < TOTAL; i++, shown++) {
    const img = document.createElement("img");
    img.src = "/img/scroll/" + shown + ".png";
    grid.appendChild(img);
  }
}
window.addEventListener("scroll", () => {
  if (loading || shown >= TOTAL) return;
  if (window.innerHeight + window.scrollY >= document.scrollingElement.scrollHeight - 50) {
    loading = true;
    setTimeout(() => { more(); loading = false; }, 150);
  }
});
document.addEventListener("DOMContentLoaded", more);
</script></body></html>""",
    "more": _HEAD.format(title="Load more") + """<ul id="grid" class="products"></ul>
<div class="actions"><button type="button" class="btn btn-primary">Load more</button></div>
<script>
let offset = 0;
async function more() {
  const answer = await fetch("/fragment/more?offset=" + offset);
  document.getElementById("grid").insertAdjacentHTML("beforeend", await answer.text());
  offset += BATCH;
  if (offset >= TOTAL) document.querySelector(".actions").remove();
}
document.querySelector(".actions button").addEventListener("click", more);
more();
</script></body></html>""",
    "icon": _HEAD.format(title="Icons") + """<ul id="grid"></ul>
<div class="actions"><span class="fab">&#x2295;</span></div>
<script>
let offset = 0;
async function more() {
  const answer = await fetch("/fragment/icon?offset=" + offset);
  document.getElementById("grid").insertAdjacentHTML("beforeend", await answer.text());
  offset += BATCH;
}
document.querySelector(".fab").addEventListener("click", more);
more();
</script></body></html>""",
    "next": _HEAD.format(title="Galerie") + """<div id="grid"></div>
<nav class="pagination" aria-label="pages"></nav>
<script>
const pages = Math.ceil(TOTAL / BATCH);
let current = 1;
function show(page) {
  current = page;
  const grid = document.getElementById("grid");
  grid.innerHTML = "";
  for (let n = (page - 1) * BATCH; n < Math.min(page * BATCH, TOTAL); n++) {
    const img = document.createElement("img");
    img.src = "/img/next/" + n + ".png";
    grid.appendChild(img);
  }
  const nav = document.querySelector(".pagination");
  nav.innerHTML = "";
  for (let p = 1; p <= pages; p++) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = p;
    if (p === page) b.setAttribute("aria-current", "page");
    b.onclick = () => show(p);
    nav.appendChild(b);
  }
  if (page < pages) {
    const next = document.createElement("button");
    next.type = "button"; next.textContent = "Suivant \u203a";
    next.onclick = () => setTimeout(() => show(current + 1), 100);
    nav.appendChild(next);
  }
}
show(1);
</script></body></html>""",
    "api": _HEAD.format(title="Photo feed") + """<div id="feed"></div>
<script>
let nextUrl = "/api/photos?page=1", loading = false;
async function load() {
  if (!nextUrl || loading) return;
  loading = true;
  const data = await (await fetch(nextUrl)).json();
  for (const photo of data.photos) {
    const figure = document.createElement("figure");
    figure.innerHTML = '<img alt=""><figcaption></figcaption>';
    figure.querySelector("img").src = photo.urls.small;
    figure.querySelector("figcaption").textContent = photo.title;
    document.getElementById("feed").appendChild(figure);
  }
  nextUrl = data.next;
  loading = false;
}
// Odd scroll logic: only a real mouse wheel asks for more.
window.addEventListener("wheel", load);
load();
fetch("/private/stats.json").catch(() => {});
// Sponsored items the page never shows: JSON with images that are not the gallery's.
fetch("/api/sponsored").then((answer) => answer.json());
// The same server under another host name: its own robots.txt, fetched by the crawler.
fetch("http://localhost:" + location.port + "/private/beacon.json", {mode: "no-cors"}).catch(() => {});
</script></body></html>""",
    "lazy": _HEAD.format(title="Lazy gallery") + """<main id="grid"></main>
<script>
const grid = document.getElementById("grid");
for (let n = 0; n < TOTAL; n++) {
  const img = document.createElement("img");
  img.src = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
  img.dataset.id = n;
  img.className = "lazy";
  if (n % 3 === 2) {  // a <picture> whose <source> gets its srcset (1x small, 2x large)
    const picture = document.createElement("picture");
    picture.append(document.createElement("source"), img);
    grid.appendChild(picture);
  } else grid.appendChild(img);
}
const observer = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const img = entry.target, id = Number(img.dataset.id);
    const small = "/img/lazy/" + id + "-s.png", large = "/img/lazy/" + id + ".png";
    if (id % 3 === 0) img.src = large;
    else if (id % 3 === 1) img.srcset = small + " 200w, " + large + " 800w";
    else img.parentElement.querySelector("source").srcset = small + " 1x, " + large + " 2x";
    delete img.dataset.id;
    observer.unobserve(img);
  }
});
document.querySelectorAll("img.lazy").forEach((img) => observer.observe(img));
</script></body></html>""",
}


class RenderSite(HttpServer):
    """Serves the galleries of the module docstring; ``url(kind)`` is a gallery's address."""

    def __init__(self, total: int = TOTAL, batch: int = BATCH) -> None:
        super().__init__()
        # socketserver listens with a backlog of 5: on a loaded machine, a burst of image
        # requests overflowed it and some stalled until Scrapy's 30 s timeout.
        self._httpd.socket.listen(64)
        self.total, self.batch = total, batch
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.images = {
            f"/img/{kind}/{n}.png": encode(picture(5000 + 100 * i + n))
            for i, kind in enumerate(KINDS) for n in range(total)
        }
        # The small variants of the lazy srcsets: served, but nobody should ask for them.
        self.images |= {f"/img/lazy/{n}-s.png": encode(picture(9000 + n, size=(64, 64))) for n in range(total)}

    def url(self, kind: str) -> str:
        return f"{self.base}/{kind}"

    def image_paths(self, kind: str) -> set[str]:
        return {f"/img/{kind}/{n}.png" for n in range(self.total)}

    def on_get(self, request: Request) -> None:
        parts = urlsplit(request.path)
        query = dict(parse_qsl(parts.query))
        self.requests.append((request.path, {k.lower(): v for k, v in request.headers.items()}))
        path = parts.path
        if path == "/robots.txt":
            request.reply(200, "text/plain", ROBOTS.encode())
        elif path in self.images:
            request.reply(200, "image/png", self.images[path])
        elif path.strip("/") in PAGES:
            script = f"<script>const TOTAL = {self.total}, BATCH = {self.batch};</script>"
            page = PAGES[path.strip("/")].replace("<body>", "<body>" + script, 1)
            request.reply(200, "text/html; charset=utf-8", page.encode())
        elif path in ("/fragment/more", "/fragment/icon"):
            offset, kind = int(query.get("offset", 0)), path.rsplit("/", 1)[1]
            items = "".join(
                f'<li class="product"><img src="/img/{kind}/{n}.png" alt="item {n}"></li>'
                for n in range(offset, min(offset + self.batch, self.total))
            )
            request.reply(200, "text/html; charset=utf-8", items.encode())
        elif path == "/api/photos":
            page = int(query.get("page", 1))
            first = (page - 1) * self.batch
            photos = [
                {"id": n, "title": f"Photo {n}", "link": f"/photos/{n}",
                 "urls": {"full": f"/img/api/{n}.png", "small": f"/img/api/{n}.png"}}
                for n in range(first, min(first + self.batch, self.total))
            ]
            more = first + self.batch < self.total
            body = {"page": page, "photos": photos, "next": f"/api/photos?page={page + 1}" if more else None}
            request.reply(200, "application/json", json.dumps(body).encode())
        elif path == "/api/sponsored":
            ads = [{"title": f"Ad {n}", "image": f"/img/ads/{n}.png", "link": f"/ads/{n}"} for n in range(3)]
            request.reply(200, "application/json", json.dumps({"items": ads}).encode())
        elif path.startswith("/private/"):
            request.reply(200, "application/json", b'{"visits": 1}')
        else:
            request.reply(404, "text/html", b"<h1>404</h1>")

    def logged(self, prefix: str) -> list[tuple[str, dict[str, str]]]:
        """Logged requests whose path starts with ``prefix``."""
        return [(path, headers) for path, headers in self.requests if path.startswith(prefix)]
