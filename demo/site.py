"""A local image gallery site on 127.0.0.1 for the demo, the tests and the benchmarks.

It looks like what an image search or gallery site serves: one paginated results page per
category, images referenced in the ways real sites reference them, and the junk real crawls meet.

URL layout (``label`` is URL-quoted):

- ``/``: the list of categories.
- ``/search/<label>?page=N``: results, ``per_page`` images a page, ``<a rel="next">`` pagination.
- ``/images/<label>/<name>``: the full-size file, as stored (original bytes).
- ``/thumbs/<label>/<name>``: a downscaled, recompressed JPEG of it (a near-duplicate).
- ``/pixel.gif``: a 1x1 tracking pixel; ``/robots.txt`` allows everything but ``/admin/``.

Each real image is referenced in one of five forms, in turn: a plain ``<img src>``; an
``<img srcset>`` whose small candidate is the thumbnail; a lazy ``<img data-src>`` with a 1x1
``data:`` GIF placeholder in ``src``; an ``<a href>`` to the full file wrapping the thumbnail;
and the whole file inline as a ``data:`` base64 URI. Page 1 of every category also carries, in
this order: a resized and recompressed copy of the category's first image, a truncated JPEG, an
HTML page served as ``image/jpeg``, a ``.jpg`` URL that answers 404, and the tracking pixel (which
the gallery spider skips before download as site chrome).
``DemoSite.expected`` says what a correct crawl of each category keeps and rejects.

By default the images are generated: three categories of drawn shapes (``circle``, ``square``,
``triangle``) over random gradient backgrounds, deterministic from ``seed`` and pairwise at
least ``MIN_GENERATED_DISTANCE`` bits apart in phash and well outside the crawl's PDQ rule
(``_pdq_apart``: flips and rotations included; a centred blob on a plain gradient is otherwise
"the same picture recoloured"), so no correct near-duplicate filter can merge two of them. Given ``images_dir`` (a folder of label subfolders, e.g.
``hymenoptera_data/train``), it serves those files instead, one category per subfolder.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import math
import mimetypes
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import imagehash
from PIL import Image, ImageDraw, ImageOps

logger = logging.getLogger(__name__)

GENERATED_LABELS = ("circle", "square", "triangle")
GENERATED_SIDE = 160  # pixels; above any sane minimum-side filter, small enough to train fast
# A generated image is re-drawn until its phash is this many bits from every other one: well
# past any near-duplicate threshold a crawler would use (the usual ones are 4-10 of 64 bits).
MIN_GENERATED_DISTANCE = 16
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
THUMB_SCALE = 0.4
# A 1x1 transparent GIF: the placeholder lazy-loading sites put in ``src``.
PLACEHOLDER_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
# Junk kinds on page 1 of every category and the rejection each must get from a crawler.
JUNK_REJECTIONS = {
    "truncated": "truncated",
    "html": "not_an_image",
    "missing": "http_404",
}
# The 1x1 tracking pixel (declared width=1 height=1) is site chrome: the gallery spider skips it
# before download (stat gallery/skipped/icon), so it gets no catalog row.


@dataclass
class SiteImage:
    """One full-size image of a category: its file name on the site and its bytes."""

    name: str
    body: bytes
    content_type: str


@dataclass
class Category:
    label: str
    images: list[SiteImage]
    junk: dict[str, SiteImage] = field(default_factory=dict)


def _gradient(size: int, c0: tuple[int, int, int], c1: tuple[int, int, int], angle: float) -> Image.Image:
    """A linear gradient from ``c0`` to ``c1`` along ``angle`` (radians), ``size``x``size`` RGB."""
    ramp = Image.linear_gradient("L").resize((size * 2, size * 2)).rotate(math.degrees(angle))
    ramp = ramp.crop((size // 2, size // 2, size // 2 + size, size // 2 + size))
    return Image.composite(Image.new("RGB", (size, size), c1), Image.new("RGB", (size, size), c0), ramp)


def _draw_shape(label: str, rng: random.Random, side: int = GENERATED_SIDE) -> Image.Image:
    """One picture of ``label``: a filled shape over a gradient, with light clutter.

    The shape contrasts with the background (dark on light or light on dark) so that a small
    CNN can learn the category from 64 px images in a few epochs.
    """
    dark_bg = rng.random() < 0.5
    lo, hi = (20, 110) if dark_bg else (150, 240)
    bg0 = tuple(rng.randint(lo, hi) for _ in range(3))
    bg1 = tuple(rng.randint(lo, hi) for _ in range(3))
    img = _gradient(side, bg0, bg1, rng.uniform(0, 2 * math.pi))
    draw = ImageDraw.Draw(img)
    # Clutter: thin lines that belong to no category, so the shape is not the only edge.
    for _ in range(rng.randint(1, 3)):
        pts = [(rng.randint(0, side), rng.randint(0, side)) for _ in range(2)]
        draw.line(pts, fill=tuple(rng.randint(lo, hi) for _ in range(3)), width=rng.randint(1, 3))
    flo, fhi = (170, 255) if dark_bg else (0, 90)
    fill = tuple(rng.randint(flo, fhi) for _ in range(3))
    r = rng.uniform(0.24, 0.40) * side
    cx, cy = rng.uniform(r + 4, side - r - 4), rng.uniform(r + 4, side - r - 4)
    rot = rng.uniform(0, 2 * math.pi)
    if label == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        n = 4 if label == "square" else 3
        pts = [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)]
        draw.polygon(pts, fill=fill)
    return img


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def generate_categories(per_label: int = 60, seed: int = 0) -> list[Category]:
    """Draw ``per_label`` distinct images for each of :data:`GENERATED_LABELS`.

    Deterministic for a given ``(per_label, seed)``. Every fourth image is a PNG, the rest are
    JPEG (quality 90). Any two images are at least :data:`MIN_GENERATED_DISTANCE` bits apart in
    ``imagehash.phash`` (64 bits).
    """
    rng = random.Random(seed)
    hashes: list[imagehash.ImageHash] = []
    pdqs: list[dict] = []
    categories = []
    for label in GENERATED_LABELS:
        images = []
        while len(images) < per_label:
            img = _draw_shape(label, rng)
            h = imagehash.phash(img)
            if any(h - other < MIN_GENERATED_DISTANCE for other in hashes):
                continue
            pdq = _pdq_hashes(img)
            if not all(_pdq_apart(pdq, other) for other in pdqs):
                continue
            hashes.append(h)
            pdqs.append(pdq)
            i = len(images)
            if i % 4 == 3:
                images.append(SiteImage(f"{label}-{i:03d}.png", _encode(img, "PNG"), "image/png"))
            else:
                images.append(SiteImage(f"{label}-{i:03d}.jpg", _encode(img, "JPEG", quality=90), "image/jpeg"))
        categories.append(Category(label, images))
    return categories


# Margins past the crawl's PDQ thresholds (crawler/settings.py DEDUPE_DEFAULTS: 31, 24, 50 bits).
_PDQ_APART_BITS = (40, 32, 60)


def _pdq_hashes(img: Image.Image) -> dict:
    from crawler.images.hashing import canonical_image, hashes_of  # the crawl's own recipe

    return hashes_of(canonical_image(img))


def _pdq_apart(a: dict, b: dict) -> bool:
    """Two generated pictures far outside every way the crawl's PDQ rule could link them."""
    from crawler.images.matching import WINDOW_PAIRS
    from crawler.images.pdq import DIHEDRAL_KINDS, FULL, aligned_thumbnails, second_look

    def bits(x: str, y: str) -> int:
        return (int(x, 16) ^ int(y, 16)).bit_count()

    full, windows, wide = _PDQ_APART_BITS
    if min(bits(a[kind], b[FULL]) for kind in DIHEDRAL_KINDS) <= full:
        return False
    pairs = {*WINDOW_PAIRS, *((y, x) for x, y in WINDOW_PAIRS)}
    if any(x in a and y in b and bits(a[x], b[y]) <= windows for x, y in pairs):
        return False
    return bits(a[FULL], b[FULL]) > wide or second_look(*aligned_thumbnails(a["look"], b["look"])) > 0.2


def load_categories(images_dir: Path) -> list[Category]:
    """One category per non-hidden subfolder of ``images_dir``, its image files sorted by name.

    Raises:
        FileNotFoundError: ``images_dir`` is not a folder.
        ValueError: it holds no subfolder with image files.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    categories = []
    for sub in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            images = [
                SiteImage(f.name, f.read_bytes(), mimetypes.guess_type(f.name)[0] or "application/octet-stream")
                for f in files
            ]
            categories.append(Category(sub.name, images))
    if not categories:
        raise ValueError(f"{images_dir} has no label subfolders with image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return categories


def _decoded(body: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(body)) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except Exception:  # any undecodable file is simply not a usable image
        return None


def _add_junk(cat: Category) -> None:
    """Attach the junk of page 1: a near-duplicate copy, a truncated JPEG, HTML, a 404."""
    source, first = next(((im, d) for im in cat.images if (d := _decoded(im.body)) is not None), (None, None))
    if first is None:
        raise ValueError(f"category {cat.label!r} has no image that decodes")
    small = first.resize((max(1, int(first.width * 0.75)), max(1, int(first.height * 0.75))), Image.LANCZOS)
    cat.junk["copy"] = SiteImage(f"copy-of-{Path(source.name).stem}.jpg", _encode(small, "JPEG", quality=70), "image/jpeg")
    whole = _encode(first, "JPEG", quality=90)
    cat.junk["truncated"] = SiteImage("broken-upload.jpg", whole[: len(whole) // 2], "image/jpeg")
    page = b"<!doctype html><html><head><title>Access denied</title></head><body><h1>Please log in</h1></body></html>"
    cat.junk["html"] = SiteImage("hotlink-protected.jpg", page, "image/jpeg")


class DemoSite:
    """The demo gallery site, served by a thread on 127.0.0.1.

    Args:
        images_dir: folder of label subfolders to serve; ``None`` serves generated shapes.
        per_label: generated images per category (ignored with ``images_dir``).
        seed: seed of the generated images.
        per_page: results per page.
        latency: seconds every response waits before it is sent (for benchmarks).
        host, port: where to listen; port 0 picks a free one.

    Use as a context manager (``with DemoSite() as site: site.results_url("circle")``) or call
    :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        images_dir: str | Path | None = None,
        *,
        per_label: int = 60,
        seed: int = 0,
        per_page: int = 12,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.categories = load_categories(Path(images_dir)) if images_dir else generate_categories(per_label, seed)
        for cat in self.categories:
            _add_junk(cat)
        self.per_page = per_page
        self.latency = latency
        self._by_label = {c.label: c for c in self.categories}
        self._files = {(c.label, im.name): im for c in self.categories for im in [*c.images, *c.junk.values()]}
        self._thumbs: dict[tuple[str, str], bytes | None] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- what a crawl should find ------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.categories]

    @property
    def expected(self) -> dict[str, dict]:
        """Per label, what a correct crawl of its results keeps: ``{"stored": n, "duplicate": 1,
        "rejected": {"truncated": 1, "not_an_image": 1, "http_404": 1}}``.

        ``stored`` counts the distinct images that decode and are at least 32 px a side; files
        of the served folder that do not decode are counted under ``rejected["undecodable"]``.
        """
        out = {}
        for cat in self.categories:
            good = [im for im in cat.images if (d := _decoded(im.body)) is not None and min(d.size) >= 32]
            rejected = {reason: 1 for reason in JUNK_REJECTIONS.values()}
            if len(good) < len(cat.images):
                rejected["undecodable"] = len(cat.images) - len(good)
            out[cat.label] = {"stored": len(good), "duplicate": 1, "rejected": rejected}
        return out

    # -- server lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def results_url(self, label: str, page: int = 1) -> str:
        """URL of a results page of ``label`` (page 1 carries no ``?page=``)."""
        base = f"{self.url}/search/{quote(label)}"
        return base if page == 1 else f"{base}?page={page}"

    def start(self) -> DemoSite:
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-site", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DemoSite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- pages ---------------------------------------------------------------------------------
    def _thumb(self, label: str, name: str) -> bytes | None:
        key = (label, name)
        with self._lock:
            if key not in self._thumbs:
                img = _decoded(self._files[key].body)
                if img is not None:
                    size = (max(1, int(img.width * THUMB_SCALE)), max(1, int(img.height * THUMB_SCALE)))
                    img = _encode(img.resize(size, Image.LANCZOS), "JPEG", quality=75)
                self._thumbs[key] = img
            return self._thumbs[key]

    def _figure(self, cat: Category, index: int, im: SiteImage) -> str:
        full = f"/images/{quote(cat.label)}/{quote(im.name)}"
        thumb = f"/thumbs/{quote(cat.label)}/{quote(im.name)}"
        alt = html.escape(f"{cat.label} {index}")
        form = index % 5
        if form == 0:
            tag = f'<img src="{full}" alt="{alt}">'
        elif form == 1:
            tag = f'<img src="{thumb}" srcset="{thumb} 160w, {full} 800w" sizes="(max-width: 600px) 160px, 800px" alt="{alt}">'
        elif form == 2:
            placeholder = "data:image/gif;base64," + base64.b64encode(PLACEHOLDER_GIF).decode()
            tag = f'<img class="lazy" src="{placeholder}" data-src="{full}" alt="{alt}">'
        elif form == 3:
            tag = f'<a class="full" href="{full}"><img src="{thumb}" alt="{alt}"></a>'
        else:
            inline = f"data:{im.content_type};base64," + base64.b64encode(im.body).decode()
            tag = f'<img src="{inline}" alt="{alt}">'
        return f'<figure class="result">{tag}<figcaption>{alt}</figcaption></figure>'

    def _results_page(self, cat: Category, page: int) -> str | None:
        pages = max(1, math.ceil(len(cat.images) / self.per_page))
        if not 1 <= page <= pages:
            return None
        start = (page - 1) * self.per_page
        figures = [self._figure(cat, start + i, im) for i, im in enumerate(cat.images[start : start + self.per_page])]
        if page == 1:
            lbl = quote(cat.label)
            junk = [
                f'<figure class="result"><img src="/images/{lbl}/{quote(cat.junk["copy"].name)}" alt="copy"></figure>',
                f'<figure class="result"><img src="/images/{lbl}/{quote(cat.junk["truncated"].name)}" alt="broken"></figure>',
                f'<figure class="result"><img src="/images/{lbl}/{quote(cat.junk["html"].name)}" alt="protected"></figure>',
                f'<figure class="result"><img src="/images/{lbl}/gone-{quote(cat.label)}.jpg" alt="gone"></figure>',
                '<img src="/pixel.gif" width="1" height="1" alt="">',
            ]
            figures[1:1] = junk  # junk sits among the results, as it does on real pages
        nav = ['<nav class="pagination">']
        if page > 1:
            nav.append(f'<a rel="prev" class="prev" href="?page={page - 1}">&laquo; Previous</a>')
        nav.append(f"<span>Page {page} of {pages}</span>")
        if page < pages:
            nav.append(f'<a rel="next" class="next" href="?page={page + 1}">Next &raquo;</a>')
        nav.append("</nav>")
        other = " ".join(f'<a href="/search/{quote(c.label)}">{html.escape(c.label)}</a>' for c in self.categories)
        title = html.escape(f"{cat.label} - images - page {page}")
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
            f"<header><a href='/'>Demo image search</a> <nav class='categories'>{other}</nav></header>"
            f"<main><h1>{html.escape(cat.label)}</h1><div class='results'>{''.join(figures)}</div>{''.join(nav)}</main>"
            "</body></html>"
        )

    def _index_page(self) -> str:
        items = "".join(f'<li><a href="/search/{quote(c.label)}">{html.escape(c.label)}</a></li>' for c in self.categories)
        return f"<!doctype html><html><head><meta charset='utf-8'><title>Demo image search</title></head><body><ul>{items}</ul></body></html>"

    def _route(self, raw_path: str) -> tuple[int, str, bytes]:
        parts = urlsplit(raw_path)
        segs = [unquote(s) for s in parts.path.split("/") if s]
        if not segs:
            return 200, "text/html; charset=utf-8", self._index_page().encode()
        if segs == ["robots.txt"]:
            return 200, "text/plain", b"User-agent: *\nDisallow: /admin/\n"
        if segs == ["pixel.gif"]:
            return 200, "image/gif", PLACEHOLDER_GIF
        if len(segs) == 2 and segs[0] == "search" and segs[1] in self._by_label:
            try:
                page = int(parse_qs(parts.query).get("page", ["1"])[0])
            except ValueError:
                page = 0
            body = self._results_page(self._by_label[segs[1]], page)
            if body is not None:
                return 200, "text/html; charset=utf-8", body.encode()
        if len(segs) == 3 and segs[0] in ("images", "thumbs") and (segs[1], segs[2]) in self._files:
            if segs[0] == "thumbs":
                thumb = self._thumb(segs[1], segs[2])
                if thumb is not None:
                    return 200, "image/jpeg", thumb
            else:
                im = self._files[(segs[1], segs[2])]
                return 200, im.content_type, im.body
        return 404, "text/html; charset=utf-8", b"<html><body><h1>404 Not Found</h1></body></html>"

    def _handler_class(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "DemoImageSearch/1.0"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                if site.latency:
                    time.sleep(site.latency)
                status, ctype, body = site._route(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                logger.debug("%s " + fmt, self.address_string(), *args)

        return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.site", description="Serve the demo gallery site on 127.0.0.1.")
    parser.add_argument("--images", type=Path, help="folder of label subfolders to serve (default: generated shapes)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--per-label", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each response")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    site = DemoSite(args.images, per_label=args.per_label, latency=args.latency, port=args.port)
    logger.info("Demo site at %s", site.url)
    for label in site.labels:
        logger.info("  %-12s %s", label, site.results_url(label))
    site.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        site.stop()


if __name__ == "__main__":
    main()
