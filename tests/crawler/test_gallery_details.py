"""The gallery spider on hand-built shop and gallery pages: item cards followed to their detail
pages, the main image's order of trust, and site chrome skipped with a stat per reason."""

from __future__ import annotations

import pytest
from scrapy.http import HtmlResponse, Request
from scrapy.utils.test import get_crawler

from crawler.items import ImageItem
from crawler.spiders.gallery import GallerySpider

SITE = "http://shop.test"

CHROME = """
<header class="site-header"><a href="/"><img src="/img/shop-logo.png" alt="Shop" class="custom-logo"></a>
  <nav><img src="/img/menu-promo.jpg"></nav></header>
<div class="widget_shopping_cart"><ul class="cart_list"><li><a href="/product/old-hat/">
  <img src="/img/old-hat-100x100.jpg" width="100" height="100"></a></li></ul></div>
<img src="/img/sprite-icons.png"><img src="/img/tracker.gif" width="1" height="1">
"""

# WooCommerce: the card is the <li>, the image inside the product link, plus an add-to-cart link.
WOO_LISTING = f"""<html><body>{CHROME}
<main><ul class="products columns-4">
""" + "".join(
    f'''<li class="product type-product"><a href="/product/{n}/" class="woocommerce-LoopProduct-link">
  <img src="/img/p{n}-300x300.jpg" srcset="/img/p{n}-300x300.jpg 300w, /img/p{n}-150x150.jpg 150w"></a>
  <a href="?add-to-cart={n}" class="button">Add to cart</a></li>'''
    for n in range(1, 5)
) + """</ul>
<div class="brands-carousel"><img src="/img/brand-acme.png"><img src="/img/brand-zeta.png"></div>
<img src="/img/sale-banner.jpg" class="hero"></main>
<footer><img src="/img/payments.png"></footer></body></html>"""

# Dawn-like: the image and the product link are siblings inside the card.
DAWN_LISTING = """<html><body><main><ul id="product-grid">""" + "".join(
    f'''<li class="grid__item"><div class="card-wrapper"><div class="card__media"><img src="/cdn/p{n}.jpg?width=533"></div>
  <div class="card__content"><h3><a href="/products/p{n}.html">Product {n}</a></h3></div></div></li>'''
    for n in range(1, 4)
) + "</ul></main></body></html>"


def make_spider(**kwargs):
    crawler = get_crawler(GallerySpider, {"DATASET_DIR": "/nonexistent"})
    kwargs.setdefault("label", "hats")
    kwargs.setdefault("start_urls", f"{SITE}/shop/")
    return GallerySpider.from_crawler(crawler, **kwargs)


def page(body: str, url: str = f"{SITE}/shop/", **meta) -> HtmlResponse:
    return HtmlResponse(url, body=body.encode(), encoding="utf-8", request=Request(url, meta={"page_number": 1, **meta}))


def split(output):
    output = list(output)
    items = [o for o in output if isinstance(o, ImageItem)]
    requests = [o for o in output if isinstance(o, Request)]
    return items, requests


def stats(spider) -> dict[str, int]:
    return {k: v for k, v in spider.crawler.stats.get_stats().items() if k.startswith("gallery/skipped/")}


def test_woocommerce_cards_are_followed_and_chrome_is_skipped() -> None:
    spider = make_spider()
    items, requests = split(spider.parse(page(WOO_LISTING)))
    assert items == []  # every content image comes from a detail page
    assert [r.url for r in requests] == [f"{SITE}/product/{n}/" for n in range(1, 5)]
    assert requests[0].meta["thumbnail_url"] == f"{SITE}/img/p1-300x300.jpg"
    assert stats(spider) == {
        "gallery/skipped/logo": 1,  # shop logo
        # nav promo, mini-cart thumbnail, footer payments badge, the brands carousel's two logos
        "gallery/skipped/container": 5,
        "gallery/skipped/icon": 2,  # sprite, tracking pixel
        "gallery/skipped/outside_items": 1,  # the sale banner
    }


def test_dawn_cards_link_beside_the_image() -> None:
    items, requests = split(make_spider().parse(page(DAWN_LISTING)))
    assert items == [] and [r.url for r in requests] == [f"{SITE}/products/p{n}.html" for n in range(1, 4)]


def test_cards_with_a_hover_picture_and_a_vendor_link() -> None:
    body = "<html><body><div class='grid'>" + "".join(
        f'''<div class="tile"><div class="media"><img src="/cdn/p{n}-a.jpg"><img src="/cdn/p{n}-b.jpg"></div>
        <a href="/products/p{n}">Product {n}</a> <a href="/vendors/acme">Acme</a></div>'''
        for n in range(1, 5)
    ) + "<a href='/about'>About</a></div></body></html>"
    items, requests = split(make_spider().parse(page(body)))
    assert items == [] and [r.url for r in requests] == [f"{SITE}/products/p{n}" for n in range(1, 5)]


def test_follow_details_never_takes_the_listing_images() -> None:
    items, requests = split(make_spider(follow_details="never").parse(page(WOO_LISTING)))
    assert [i["url"] for i in items] == [f"{SITE}/img/p{n}-300x300.jpg" for n in range(1, 5)]
    assert not [r for r in requests if "/product/" in r.url]


def test_keep_chrome_keeps_everything() -> None:
    items, requests = split(make_spider(keep_chrome="1", follow_details="never").parse(page(WOO_LISTING)))
    urls = {i["url"] for i in items}
    assert {f"{SITE}/img/shop-logo.png", f"{SITE}/img/payments.png", f"{SITE}/img/old-hat-100x100.jpg",
            f"{SITE}/img/brand-acme.png", f"{SITE}/img/tracker.gif"} <= urls


def test_two_cards_are_no_listing_unless_always() -> None:
    two = DAWN_LISTING.replace('<li class="grid__item"><div class="card-wrapper"><div class="card__media"><img src="/cdn/p3.jpg?width=533"></div>', '<li><div>')
    items, requests = split(make_spider().parse(page(two)))
    assert len(items) == 2 and not [r for r in requests if "/products/" in r.url]
    items, requests = split(make_spider(follow_details="always").parse(page(two)))
    assert items == [] and len([r for r in requests if "/products/" in r.url]) == 2


DETAIL = """<html><head>
<meta property="og:image" content="/img/og.jpg">
<script type="application/ld+json">{"@context": "https://schema.org", "@graph": [
  {"@type": "Organization", "logo": "/img/shop-logo.png"},
  {"@type": "Product", "name": "Hat", "image": ["/img/hat-original.jpg", "/img/hat-2.jpg"]}]}</script>
</head><body><header><img src="/img/shop-logo.png" class="logo"></header>
<div class="product-gallery"><a href="/img/hat-linked.jpg"><img src="/img/hat-600.jpg"
  srcset="/img/hat-600.jpg 600w, /img/hat-1200.jpg 1200w"></a></div>
<section class="related"><img src="/img/other.jpg"></section></body></html>"""


@pytest.mark.parametrize(("drop", "expected"), [
    ("", "/img/hat-original.jpg"),  # JSON-LD Product image
    ("ld+json", "/img/og.jpg"),  # og:image
    ("ld+json og:image", "/img/hat-linked.jpg"),  # the gallery's linked original
    ("ld+json og:image linked", "/img/hat-1200.jpg"),  # the largest srcset candidate
])
def test_detail_main_image_order_of_trust(drop: str, expected: str) -> None:
    body = DETAIL
    if "ld+json" in drop:
        body = body.replace('type="application/ld+json"', 'type="text/plain"')
    if "og:image" in drop:
        body = body.replace('property="og:image"', 'property="og:title"')
    if "linked" in drop:
        body = body.replace('<a href="/img/hat-linked.jpg">', "<a>")
    spider = make_spider()
    listing, thumb = f"{SITE}/shop/", f"{SITE}/img/p1-300x300.jpg"
    items, _ = split(spider.parse_detail(page(body, f"{SITE}/product/1/", listing_url=listing, thumbnail_url=thumb)))
    (item,) = items
    assert item["url"] == SITE + expected
    assert item["page_url"] == f"{SITE}/product/1/" and item["listing_url"] == listing
    # The other candidates, then the listing thumbnail, are the fallbacks of a 404.
    assert spider.fallback_urls[item["url"]][-1] == thumb


def test_detail_page_without_image_gives_the_thumbnail() -> None:
    spider = make_spider()
    thumb = f"{SITE}/img/p1-300x300.jpg"
    body = "<html><body><header><img src='/img/shop-logo.png'></header><p>No photo</p></body></html>"
    items, _ = split(spider.parse_detail(page(body, f"{SITE}/product/1/", listing_url=f"{SITE}/shop/", thumbnail_url=thumb)))
    assert [i["url"] for i in items] == [thumb]


def test_pages_on_other_hosts_are_not_followed() -> None:
    body = DAWN_LISTING.replace("/products/p", "https://elsewhere.example/products/p")
    body = body.replace("</main>", '</main><a rel="next" href="https://elsewhere.example/page2">Next</a>')
    _, requests = split(make_spider().parse(page(body)))
    assert requests == []


def test_repeated_images_are_skipped_on_later_pages() -> None:
    spider = make_spider(follow_details="never")
    first = "<html><body><img src='/img/a.jpg'><img src='/img/badge.jpg'></body></html>"
    second = "<html><body><img src='/img/b.jpg'><img src='/img/badge.jpg'></body></html>"
    items1, _ = split(spider.parse(page(first)))
    items2, _ = split(spider.parse(page(second, f"{SITE}/shop/?page=2")))
    assert [i["url"] for i in items1] == [f"{SITE}/img/a.jpg", f"{SITE}/img/badge.jpg"]
    assert [i["url"] for i in items2] == [f"{SITE}/img/b.jpg"]
    assert stats(spider) == {"gallery/skipped/repeated": 1}


def test_a_site_wide_og_image_is_no_items_picture() -> None:
    spider = make_spider()
    list(spider.parse(page(WOO_LISTING)))  # the logo is seen as chrome there
    body = """<html><head><meta property="og:image" content="/img/shop-logo.png"></head><body>
    <div class="product"><img src="/img/p{n}-800.jpg"></div></body></html>"""
    for n in (1, 2):
        items, _ = split(spider.parse_detail(page(body.format(n=n), f"{SITE}/product/{n}/",
                                                  listing_url=f"{SITE}/shop/", thumbnail_url="x")))
        assert [i["url"] for i in items] == [f"{SITE}/img/p{n}-800.jpg"]
    shared = """<html><head><meta property="og:image" content="/img/site-card.jpg"></head><body>
    <div class="product"><img src="/img/q{n}-800.jpg"></div></body></html>"""
    urls = []
    for n in (1, 2):
        items, _ = split(spider.parse_detail(page(shared.format(n=n), f"{SITE}/item/{n}/",
                                                  listing_url=f"{SITE}/shop/", thumbnail_url="x")))
        urls += [i["url"] for i in items]
    # The first detail page cannot tell; the second sees the og:image is shared.
    assert urls == [f"{SITE}/img/site-card.jpg", f"{SITE}/img/q2-800.jpg"]


def test_an_articles_own_header_and_page_builder_widgets_are_content() -> None:
    body = """<html><body><header class="site-header"><img src="/img/banner.jpg"></header>
    <main><article><header class="entry-header"><img src="/img/featured.jpg"></header>
    <div class="elementor-widget elementor-widget-image-gallery"><div class="elementor-widget-container">
    <img src="/img/g1.jpg"><img src="/img/g2.jpg"></div></div></article></main></body></html>"""
    items, _ = split(make_spider().parse(page(body)))
    assert [i["url"] for i in items] == [f"{SITE}/img/{n}.jpg" for n in ("featured", "g1", "g2")]
