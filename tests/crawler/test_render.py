"""`gallery -a render=1`: pages rendered and scrolled in Debian's Chromium (scrapy-playwright)
against a local infinite-scroll page whose every <img> is inserted by JavaScript."""

from __future__ import annotations

import hashlib
import os

import pytest
from crawls import catalog_rows, gallery_command, run_crawl, stored_paths
from local_sites import infinite_scroll_site
from render_sites import RenderSite

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM} (install it with `make browsers` or set CHROMIUM_PATH)",
)
TOTAL, BATCH = 20, 4


@pytest.fixture(scope="module")
def site():
    with infinite_scroll_site(total=TOTAL, batch=BATCH) as running:
        yield running


def expected_paths(site) -> set[str]:
    return {
        f"pics/{hashlib.sha256(body).hexdigest()}.png"
        for path, (_, body) in site.routes.items()
        if path.startswith("/img/")
    }


@needs_chromium
@pytest.mark.timeout(240)
def test_render_scrolls_until_every_image_is_stored(site, tmp_path) -> None:
    dataset = tmp_path / "dataset"
    result = run_crawl(gallery_command(f"{site.url}/gallery", "pics", dataset, "-a", "render=1"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    assert stored_paths(dataset) == expected_paths(site)
    assert f"{TOTAL} image URLs" in result.stdout  # the "page 1 rendered: N scrolls ..." line
    # One page rendered and closed; the images themselves came over plain HTTP.
    assert "'playwright/page_count/closed': 1" in result.stdout
    assert "'downloader/request_count': 22" in result.stdout  # robots.txt + page + 20 images
    rows = catalog_rows(dataset)
    assert {r["page_url"] for r in rows} == {f"{site.url}/gallery"}


@needs_chromium
@pytest.mark.timeout(240)
def test_max_scrolls_bounds_the_scrolling(site, tmp_path) -> None:
    dataset = tmp_path / "dataset"
    result = run_crawl(
        gallery_command(f"{site.url}/gallery", "pics", dataset, "-a", "render=1", "-a", "max_scrolls=2")
    )
    assert result.returncode == 0, result.stdout[-3000:]
    # The first batch on load, one more per scroll.
    assert len(stored_paths(dataset)) == BATCH * 3
    assert "page 1 rendered: 2 scrolls" in result.stdout
    assert "still showed new images when max_scrolls ran out: raise -a max_scrolls" in result.stdout


@pytest.mark.timeout(120)
def test_static_crawl_finds_nothing_and_never_loads_playwright(site, tmp_path) -> None:
    dataset = tmp_path / "dataset"
    result = run_crawl(gallery_command(f"{site.url}/gallery", "pics", dataset))
    assert result.returncode == 0, result.stdout[-3000:]
    assert stored_paths(dataset) == set()
    assert "scrapy-playwright" not in result.stdout and "playwright/" not in result.stdout
    assert "no image found on 1 page(s)" in result.stdout and "render=1" in result.stdout


@pytest.mark.timeout(120)
def test_render_without_the_browser_fails_clearly(site, tmp_path) -> None:
    result = run_crawl(
        gallery_command(
            f"{site.url}/gallery", "pics", tmp_path / "dataset",
            "-a", "render=1", "-s", f"CHROMIUM_PATH={tmp_path / 'no-chromium'}",
        )
    )
    assert result.returncode == 2 and "Traceback" not in result.stdout
    assert "render=1 needs Chromium" in result.stdout and "CHROMIUM_PATH" in result.stdout


def test_bad_render_flag_is_refused() -> None:
    from crawler.errors import UserError
    from crawler.spiders.gallery import GallerySpider

    with pytest.raises(UserError, match="render must be 0 or 1"):
        GallerySpider(label="x", start_urls="http://127.0.0.1/", render="maybe")
    spider = GallerySpider(label="x", start_urls="http://127.0.0.1/", render="1", max_scrolls="3")
    request = spider.page_request("http://127.0.0.1/", page_number=1)
    assert request.dont_filter and request.meta["render"]["max_scrolls"] == 3
    with pytest.raises(UserError, match=r"-a more_selector is not a CSS selector: .* \(e\.g\. -a more_selector="):
        GallerySpider(label="x", start_urls="http://127.0.0.1/", render="1", more_selector="button[data-x=")
    spider = GallerySpider(label="x", start_urls="http://127.0.0.1/", render="1", more_selector=" .more:has(svg) ")
    assert spider.page_request("http://127.0.0.1/", page_number=1).meta["render"]["more_selector"] == ".more:has(svg)"


# --- Every common way a page loads more images (crawler.render), on tests/crawler/render_sites.py.


@pytest.fixture(scope="module")
def galleries():
    with RenderSite() as running:
        yield running


def stored_for(site: RenderSite, kind: str) -> set[str]:
    return {f"pics/{hashlib.sha256(site.images[path]).hexdigest()}.png" for path in site.image_paths(kind)}


def assert_fetched_once_by_the_crawler(site: RenderSite, kind: str) -> None:
    """Each image of the gallery was requested exactly once, over plain HTTP: no request with
    the headers a browser sends (Sec-Fetch-*), so none came from Chromium."""
    requests = site.logged(f"/img/{kind}/")
    paths = [path for path, _ in requests]
    assert sorted(paths) == sorted(site.image_paths(kind)), paths
    browser = [path for path, headers in requests if any(name.startswith("sec-") for name in headers)]
    assert browser == []


def render_crawl(site: RenderSite, kind: str, tmp_path, *extra: str):
    dataset = tmp_path / "dataset"
    site.requests.clear()
    result = run_crawl(gallery_command(site.url(kind), "pics", dataset, "-a", "render=1", *extra))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    return dataset, result.stdout


@needs_chromium
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["scroll", "more", "next", "lazy"])
def test_every_image_of_a_script_built_gallery_is_stored(galleries, kind, tmp_path) -> None:
    dataset, log = render_crawl(galleries, kind, tmp_path)
    assert stored_paths(dataset) == stored_for(galleries, kind)
    assert_fetched_once_by_the_crawler(galleries, kind)
    # Chromium asked for every image it showed and got a placeholder instead.
    assert f"{len(galleries.image_paths(kind))} browser image requests blocked" in log
    if kind == "more":
        assert "2 'load more' clicks" in log
    if kind == "next":
        assert "2 'next' clicks" in log


@needs_chromium
@pytest.mark.timeout(240)
def test_a_feed_read_from_its_json_api_is_stored_completely(galleries, tmp_path) -> None:
    # The page asks for more only on mouse-wheel events: rendering alone shows the first batch;
    # the captured API answer names the next page, which the spider then reads without a browser.
    dataset, log = render_crawl(galleries, "api", tmp_path)
    assert stored_paths(dataset) == stored_for(galleries, "api")
    assert_fetched_once_by_the_crawler(galleries, "api")
    api = f"{galleries.base}/api/photos?page=1"
    assert "loads its items from a JSON API" in log and f"-a start_urls={api}" in log
    assert sorted(p for p, _ in galleries.logged("/api/photos")) == [f"/api/photos?page={n}" for n in (1, 2, 3)]
    # The sponsored JSON lists images too, but the page never showed one: not the gallery's feed.
    assert galleries.logged("/img/ads/") == [] and "'render/feed_answers_unshown': 1" in log
    # Each item keeps its own page from the API.
    assert {r["page_url"] for r in catalog_rows(dataset)} == {f"{galleries.base}/photos/{n}" for n in range(12)}
    # robots.txt forbids /private/: the page's fetches of it, from its own host and from
    # localhost (whose robots.txt the crawler fetched for it), were aborted, never sent.
    assert galleries.logged("/private/") == []
    assert [h.get("host", "").split(":")[0] for _, h in galleries.logged("/robots.txt")] == ["127.0.0.1", "localhost"]
    assert "'render/robots_forbidden': 2" in log and "robots.txt forbids the page's fetch request" in log


@pytest.mark.timeout(120)
def test_the_offered_api_url_crawls_without_a_browser(galleries, tmp_path) -> None:
    dataset = tmp_path / "dataset"
    galleries.requests.clear()
    result = run_crawl(gallery_command(f"{galleries.base}/api/photos?page=1", "pics", dataset))
    assert result.returncode == 0, result.stdout[-3000:]
    assert stored_paths(dataset) == stored_for(galleries, "api")
    assert_fetched_once_by_the_crawler(galleries, "api")
    assert "playwright" not in result.stdout


@needs_chromium
@pytest.mark.timeout(240)
def test_more_selector_finds_an_unlabelled_load_more_control(galleries, tmp_path) -> None:
    dataset, log = render_crawl(galleries, "icon", tmp_path / "plain")
    assert len(stored_paths(dataset)) == 4  # an icon with no wording: not a "load more" by itself
    dataset, log = render_crawl(galleries, "icon", tmp_path / "selected", "-a", "more_selector=.actions .fab")
    assert stored_paths(dataset) == stored_for(galleries, "icon")


# --- Which JSON lists a gallery's items (crawler.render.feeds).


def test_feed_images_take_each_items_largest_image_page_and_title() -> None:
    from crawler.render.feeds import FeedImage, feed_images, next_feed_url

    base = "https://example.org/api/search?page=1"
    unsplash_like = {
        "total": 2,
        "results": [
            {"id": "a", "alt_description": "red ant", "links": {"html": "https://example.org/p/a"},
             "urls": {"thumb": "https://cdn.example.org/a?w=200", "full": "https://cdn.example.org/a?q=85"}},
            {"id": "b", "description": "bee", "link": "/p/b",
             "urls": {"small": "https://cdn.example.org/b?w=400", "raw": "https://cdn.example.org/b"}},
        ],
        "links": {"next": "/api/search?page=2"},
    }
    assert feed_images(unsplash_like, base) == [
        FeedImage("https://cdn.example.org/a?q=85", None, "red ant"),
        FeedImage("https://cdn.example.org/b", "https://example.org/p/b", "bee"),
    ]
    assert next_feed_url(unsplash_like, base) == "https://example.org/api/search?page=2"
    shop = [{"name": "mug", "url": "/shop/mug", "image": {"src": "//img.example.org/mug.jpg?v=3"}},
            {"name": "cup", "url": "/shop/cup", "thumbnail": "/media/cup_small.webp", "original": "/media/cup.webp"}]
    assert feed_images(shop, base) == [
        FeedImage("https://img.example.org/mug.jpg?v=3", "https://example.org/shop/mug", "mug"),
        FeedImage("https://example.org/media/cup.webp", "https://example.org/shop/cup", "cup"),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        {"user": {"avatar": "https://example.org/me.png", "name": "me"}},  # one image: not a gallery
        {"items": [{"title": "a", "url": "https://example.org/a"}, {"title": "b", "url": "https://example.org/b"}]},
        {"results": [{"format": "jpeg", "size": "large"}, {"format": "png", "size": "small"}]},  # words, not URLs
        {"items": [{"image": "javascript:alert(1)"}, {"image": "data:image/png;base64,AAAA"}]},
        [[[[[[[[[[[[{"src": "https://example.org/deep.jpg"}] * 3]]]]]]]]]]],  # hostile depth
        "a string", 42, None,
    ],
)
def test_answers_that_list_no_gallery_give_nothing(answer) -> None:
    from crawler.render.feeds import feed_images, next_feed_url

    assert feed_images(answer, "https://example.org/api") == []
    assert next_feed_url(answer, "https://example.org/api") is None


# --- Which control is "load more" / "next" (crawler.render.page.FIND_CONTROL), in Chromium.

GRID = '<div class="grid">' + "".join(f'<div class="card"><img src="/i{n}.jpg"></div>' for n in range(6)) + "</div>"
CONTROLS = [
    # (kind, page body, the id of the control to press, or None)
    ("more", GRID + '<button id="x">Load more</button>', "x"),
    ("more", GRID + '<button id="x">Mehr anzeigen</button>', "x"),
    ("more", GRID + '<a id="x" role="button">Voir plus de résultats</a>', "x"),
    ("more", GRID + '<button id="x">Cargar más (24)</button>', "x"),
    ("more", GRID + '<span id="x" onclick="1">Mostra altri…</span>', "x"),
    ("more", GRID + '<button id="x">Carregar mais</button>', "x"),
    ("more", GRID + '<button id="x">Meer laden</button>', "x"),
    ("more", GRID + '<button id="x">Visa fler</button>', "x"),
    ("more", GRID + '<button id="x" aria-label="Show more photos"><svg width="20" height="20"></svg></button>', "x"),
    ("more", GRID + '<button id="x" class="js-load-more">+</button>', "x"),
    # "More" alone counts right after the repeated items, not as a menu in the header.
    ("more", '<header><button id="menu">More</button></header>' + GRID + '<button id="x">More</button>', "x"),
    ("more", '<header><button id="menu">More</button></header>' + GRID, None),
    # A link with a real href is a page the spider requests itself; a disabled button is spent.
    ("more", GRID + '<a id="x" href="/gallery?page=2">Load more</a>', None),
    ("more", GRID + '<button id="x" disabled>Load more</button>', None),
    ("more", GRID + '<a id="x" href="#">Load more</a>', "x"),
    ("next", GRID + '<nav><button id="x">Next ›</button></nav>', "x"),
    ("next", GRID + '<nav><button id="x">Weiter</button></nav>', "x"),
    ("next", GRID + '<nav><span id="x" role="button" aria-label="Página siguiente">›</span></nav>', "x"),
    ("next", GRID + '<nav class="pagination"><button aria-current="page">1</button>'
     '<button id="x">2</button></nav>', "x"),
    ("next", GRID + '<nav><a id="x" href="/p/2">Next</a></nav>', None),
    ("next", GRID + '<button id="x">Load more</button>', None),
]


@needs_chromium
@pytest.mark.timeout(120)
def test_controls_are_found_by_role_wording_and_position() -> None:
    from playwright.sync_api import sync_playwright

    from crawler.render.page import FIND_CONTROL, MORE_NAMES, MORE_PHRASES, MORE_WORDS, NEXT_NAMES, NEXT_WORDS
    from crawler.settings import PLAYWRIGHT_LAUNCH_OPTIONS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=PLAYWRIGHT_LAUNCH_OPTIONS["args"])
        page = browser.new_page()
        served = {}
        page.route(
            "http://gallery.test/**",
            lambda route: route.fulfill(content_type="text/html; charset=utf-8", body=served["body"]),
        )
        found = []
        for kind, body, _ in CONTROLS:
            served["body"] = f"<!doctype html><html><body>{body}</body></html>"
            page.goto("http://gallery.test/gallery")
            args = [kind, None, list(MORE_PHRASES), list(MORE_WORDS), list(NEXT_WORDS), MORE_NAMES, NEXT_NAMES]
            found.append(page.evaluate(f"(args) => {{ const el = ({FIND_CONTROL})(args); return el && el.id; }}", args))
        browser.close()
    assert found == [expected for _, _, expected in CONTROLS]
