"""`gallery -a render=1`: pages rendered and scrolled in Debian's Chromium (scrapy-playwright)
against a local infinite-scroll page whose every <img> is inserted by JavaScript."""

from __future__ import annotations

import hashlib
import os

import pytest
from crawls import catalog_rows, gallery_command, run_crawl, stored_paths
from local_sites import infinite_scroll_site

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
    assert f"{TOTAL} <img>" in result.stdout  # the spider's "page 1 rendered: N scrolls" line
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
