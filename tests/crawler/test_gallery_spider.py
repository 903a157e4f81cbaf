"""The gallery spider on hand-built pages: which URL stands for each image, and pagination."""

from __future__ import annotations

import asyncio

import pytest
from scrapy.http import HtmlResponse, Request
from scrapy.utils.test import get_crawler

from crawler.errors import UserError
from crawler.items import ImageItem
from crawler.spiders.gallery import (
    GallerySpider,
    largest_srcset_candidate,
    parse_srcset,
)

PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
INLINE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

PAGE = f"""<html><body>
<img src="/images/plain.jpg">
<img src="/thumbs/set.jpg" srcset="/thumbs/set.jpg 64w, /images/set.jpg 640w, /images/set-mid.jpg 320w">
<img src="{PLACEHOLDER}" data-src="/images/lazy.jpg">
<img src="{PLACEHOLDER}" data-original="/images/lazy2.png">
<a href="/images/linked.jpg"><img src="/thumbs/linked.jpg"></a>
<a href="/images/linked.jpg"><img src="/thumbs/linked-again.jpg"></a>
<img src="{INLINE}">
<picture><source srcset="/images/pic.webp 1200w, /thumbs/pic.webp 200w" type="image/webp">
  <img src="/thumbs/pic.jpg"></picture>
<img srcset="/images/dpr.jpg 2x, /thumbs/dpr.jpg 1x">
<a href="/download/file.PNG?size=large">download</a>
<a href="/about">about</a>
<img src="/images/plain.jpg">
<img src="data:text/html;base64,PGI+aGk8L2I+">
<a rel="next" class="next" href="?page=2">Next &raquo;</a>
</body></html>"""

EXPECTED = [
    "http://site.test/images/linked.jpg",
    "http://site.test/download/file.PNG?size=large",
    "http://site.test/images/plain.jpg",
    "http://site.test/images/set.jpg",
    "http://site.test/images/lazy.jpg",
    "http://site.test/images/lazy2.png",
    INLINE,
    "http://site.test/images/pic.webp",
    "http://site.test/images/dpr.jpg",
]


def make_spider(**kwargs):
    crawler = get_crawler(GallerySpider, {"DATASET_DIR": "/nonexistent"})
    kwargs.setdefault("label", "cats")
    kwargs.setdefault("start_urls", "http://site.test/search")
    return GallerySpider.from_crawler(crawler, **kwargs)


def page(body: str = PAGE, url: str = "http://site.test/search", page_number: int = 1) -> HtmlResponse:
    request = Request(url, meta={"page_number": page_number})
    return HtmlResponse(url, body=body.encode(), encoding="utf-8", request=request)


def test_one_url_per_image_with_preferences() -> None:
    spider = make_spider()
    output = list(spider.parse(page()))
    items = [o for o in output if isinstance(o, ImageItem)]
    assert [i["url"] for i in items] == EXPECTED
    assert all(not u.startswith("http://site.test/thumbs/") for u in (i["url"] for i in items))
    first = items[0]
    assert (first["label"], first["query"], first["spider"], first["page_url"]) == (
        "cats", "cats", "gallery", "http://site.test/search"
    )
    (follow,) = [o for o in output if isinstance(o, Request)]
    assert follow.url == "http://site.test/search?page=2"
    assert follow.meta["page_number"] == 2


def test_urls_are_not_yielded_twice_in_a_crawl() -> None:
    spider = make_spider()
    list(spider.parse(page()))
    again = [o for o in spider.parse(page(url="http://site.test/search?page=2")) if isinstance(o, ImageItem)]
    assert again == []


def test_max_pages_stops_pagination() -> None:
    spider = make_spider(max_pages="2")
    output = list(spider.parse(page(page_number=2)))
    assert not any(isinstance(o, Request) for o in output)


@pytest.mark.parametrize(
    ("html", "kwargs", "expected"),
    [
        ('<link rel="next" href="/p2">', {}, "http://site.test/p2"),
        ('<a class="pager-next" href="/p3">3</a>', {}, "http://site.test/p3"),
        ('<a href="/p4">Next ›</a>', {}, "http://site.test/p4"),
        ('<a href="/p5">more</a><div class="pages"><a href="/p6">6</a></div>', {"next_selector": ".pages a"}, "http://site.test/p6"),
        ('<a href="/p7">7</a>', {}, None),
    ],
)
def test_next_page_detection(html: str, kwargs: dict, expected: str | None) -> None:
    spider = make_spider(**kwargs)
    assert spider.next_page_url(page(f"<html><body>{html}</body></html>")) == expected


def test_start_requests_every_start_url() -> None:
    spider = make_spider(start_urls="http://a.test/1, http://b.test/2")

    async def collect():
        return [r async for r in spider.start()]

    requests = asyncio.run(collect())
    assert [r.url for r in requests] == ["http://a.test/1", "http://b.test/2"]


def test_label_is_required_and_sanitised() -> None:
    with pytest.raises(UserError, match="label"):
        make_spider(label=None)
    assert make_spider(label="../../etc").label == "_.._etc"


def test_start_urls_and_limits_are_checked() -> None:
    with pytest.raises(UserError, match="start_urls"):
        make_spider(start_urls="")
    with pytest.raises(UserError, match="max_images"):
        make_spider(max_images="many")


def test_dataset_dir_is_required() -> None:
    crawler = get_crawler(GallerySpider, {})
    with pytest.raises(UserError, match="DATASET_DIR"):
        GallerySpider.from_crawler(crawler, label="cats", start_urls="http://site.test/")


def test_srcset_parsing() -> None:
    assert parse_srcset("a.jpg 320w, b.jpg 2x,c.jpg") == [("a.jpg", 320.0, "w"), ("b.jpg", 2.0, "x"), ("c.jpg", 1.0, "x")]
    assert largest_srcset_candidate("s.jpg 100w, l.jpg 900w, m.jpg 400w") == "l.jpg"
    assert largest_srcset_candidate("") is None
