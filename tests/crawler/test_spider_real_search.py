"""The search spiders on real captured answers of their services (``../shared/real/search``),
served from 127.0.0.1 or handed to the spider's callbacks; skipped when the material is absent.
Also the common filters' checks."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from crawler_testkit import encode, picture
from crawls import REPO, catalog_rows
from fixture_server import finish, start_crawl
from http_testkit import HttpServer, Request
from scrapy.exceptions import CloseSpider
from scrapy.http import HtmlResponse, Request as ScrapyRequest, TextResponse
from scrapy.utils.test import get_crawler

from crawler.errors import UserError
from crawler.items import ImageItem
from crawler.spiders.bing import BingSpider
from crawler.spiders.duckduckgo import DuckDuckGoSpider, find_vqd
from crawler.spiders.openverse import OpenverseSpider
from crawler.spiders.wikimedia import WikimediaSpider

SEARCH = REPO.parent / "shared" / "real" / "search"
real = pytest.mark.skipif(not (SEARCH / "openverse_cat_2022_page1.json").exists(), reason="../shared/real is absent")


def make(cls, **kwargs):
    crawler = get_crawler(cls, {"DATASET_DIR": "/nonexistent"})
    kwargs.setdefault("label", "cats")
    return cls.from_crawler(crawler, **kwargs)


def answer(url: str, path: Path, cls=TextResponse, **meta) -> TextResponse:
    request = ScrapyRequest(url, meta={"page_number": 1, **meta})
    return cls(url, body=path.read_bytes(), encoding="utf-8", request=request)


# -- openverse ---------------------------------------------------------------------------------


class BrowsableApi(HttpServer):
    """Openverse's API as Django REST framework serves it: HTML to a client whose Accept
    prefers text/html (unless ``format=json``), else the captured JSON with its image URLs
    pointed at this server; images are real JPEGs."""

    def __init__(self, capture: dict) -> None:
        super().__init__()
        self.capture = capture
        self.api_requests: list[tuple[dict[str, list[str]], str]] = []

    def on_get(self, request: Request) -> None:
        parts = urlsplit(request.path)
        if parts.path.startswith("/img/"):
            seed = int(parts.path.rsplit("/", 1)[1].split(".")[0])
            request.reply(200, "image/jpeg", encode(picture(seed, (200, 160)), "JPEG"))
            return
        query = parse_qs(parts.query)
        accept = request.headers.get("Accept", "")
        self.api_requests.append((query, accept))
        if query.get("format") != ["json"] and "text/html" in accept:
            request.reply(200, "text/html; charset=utf-8", b"<html><body>Django REST framework</body></html>")
            return
        data = json.loads(json.dumps(self.capture))
        for n, result in enumerate(data["results"]):
            result["url"] = f"{self.base}/img/{n}.jpg"
        request.reply(200, "application/json", json.dumps(data).encode())


@real
def test_openverse_gets_json_from_a_browsable_api(tmp_path: Path) -> None:
    capture = json.loads((SEARCH / "openverse_cat_2022_page1.json").read_text())
    with BrowsableApi(capture) as api:
        result = finish(start_crawl(
            "openverse", tmp_path / "ds", "-a", "label=cat", "-a", "max_pages=1",
            "-s", f"OPENVERSE_API_URL={api.base}",
        ))
    assert result.returncode == 0 and "parse_error" not in result.stdout, result.stdout[-3000:]
    query, accept = api.api_requests[0]
    assert query["format"] == ["json"] and accept == "application/json"
    rows = catalog_rows(tmp_path / "ds")
    assert sum(r["status"] == "stored" for r in rows) == len(capture["results"]) == 20
    assert all(r["licence"] and r["licence"].startswith(("CC", "Public")) for r in rows)


def test_openverse_reports_html_as_parse_error_naming_the_type(caplog) -> None:
    spider = make(OpenverseSpider)
    url = "http://127.0.0.1:9/v1/images/?q=cats&format=json"
    response = HtmlResponse(url, body=b"<html>browsable API</html>", headers={"Content-Type": "text/html; charset=utf-8"},
                            request=ScrapyRequest(url, meta={"page_number": 1}))
    with caplog.at_level(logging.ERROR), pytest.raises(CloseSpider) as closed:
        list(spider.parse(response))
    assert closed.value.reason == "parse_error"
    assert "text/html" in caplog.text and "parse_error" in caplog.text


@real
def test_openverse_trimmed_commercial_answer() -> None:
    spider = make(OpenverseSpider, license="commercial")
    assert "license_type=commercial" in spider.api_url(1) and "format=json" in spider.api_url(1)
    items = [o for o in spider.parse(answer(spider.api_url(1), SEARCH / "openverse_coffee_2025_trimmed.json"))
             if isinstance(o, ImageItem)]
    assert items and all(i["url"].startswith("http") for i in items)


# -- bing --------------------------------------------------------------------------------------


@real
def test_bing_stops_on_an_empty_next_url() -> None:
    spider = make(BingSpider)
    output = list(spider.parse(answer(spider.results_url(1), SEARCH / "bing_async_cnbing_2024_row0.html", HtmlResponse, first=1)))
    items = [o for o in output if isinstance(o, ImageItem)]
    assert len(items) == 5 and all(i["url"].startswith("http") for i in items)
    assert not [o for o in output if isinstance(o, ScrapyRequest)]


@real
def test_bing_takes_the_next_offset_from_next_url_and_keeps_its_filters() -> None:
    spider = make(BingSpider, size="large", safesearch="strict", region="en-US")
    output = list(spider.parse(answer(spider.results_url(1), SEARCH / "bing_async_cnbing_2020_1result.html", HtmlResponse, first=1)))
    assert len([o for o in output if isinstance(o, ImageItem)]) == 1
    (request,) = [o for o in output if isinstance(o, ScrapyRequest)]
    query = parse_qs(urlsplit(request.url).query)
    assert query["first"] == ["2"]  # data-nextUrl's offset, not 1 + count
    assert query["q"] == ["cats"] and query["qft"] == ["+filterui:imagesize-large"]
    assert query["adlt"] == ["strict"] and query["mkt"] == ["en-US"]


# -- duckduckgo --------------------------------------------------------------------------------


@real
def test_duckduckgo_keeps_its_parameters_and_takes_only_the_offset() -> None:
    assert find_vqd((SEARCH / "ddg_serp_2019_goDuck.html").read_text())
    spider = make(DuckDuckGoSpider, safesearch="off", type="photo", layout="wide")
    spider.vqd = "3-123"
    output = list(spider.parse(answer(spider.ijs_url(), SEARCH / "ddg_ijs_2016_car.json")))
    assert [o["url"] for o in output if isinstance(o, ImageItem)] == [
        "http://hdwallpapers.in/walls/new_bmw_z4_2011_car-wide.jpg"
    ]
    (request,) = [o for o in output if isinstance(o, ScrapyRequest)]
    query = parse_qs(urlsplit(request.url).query, keep_blank_values=True)
    # `next` says p=strict, u=yahoo and no o/f: only its s=100 is taken.
    assert query == {"l": ["us-en"], "o": ["json"], "q": ["cats"], "vqd": ["3-123"],
                     "f": [",,,type:photo,layout:Wide,"], "p": ["-1"], "s": ["100"]}


# -- wikimedia ---------------------------------------------------------------------------------


@real
def test_wikimedia_author_without_html_or_contact_details() -> None:
    spider = make(WikimediaSpider)
    items = [o for o in spider.parse(answer(spider.api_url(), SEARCH / "commons_hospital_fv2_trimmed.json"))
             if isinstance(o, ImageItem)]
    authors = {i["author"] for i in items}
    assert len(items) == 4 and "Tomasz Sienicki [user: tsca]" in authors
    for item in items:
        assert not re.search(r"<|@|gmail|\bat\b.*\.com|mail:", item["author"]), item["author"]
        assert item["licence"]


# -- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs"), [
    (BingSpider, {"size": "huge"}),
    (DuckDuckGoSpider, {"type": "vector"}),
    (OpenverseSpider, {"color": "red"}),  # Openverse has no colour filter
    (WikimediaSpider, {"safesearch": "off"}),
    (DuckDuckGoSpider, {"safesearch": "maybe"}),
])
def test_unknown_filters_are_user_errors(cls, kwargs) -> None:
    with pytest.raises(UserError, match=r"\(.+\)$"):
        make(cls, **kwargs)


def test_filters_map_to_each_service() -> None:
    bing = parse_qs(urlsplit(make(BingSpider, license="commercial", color="bw").results_url(1)).query)
    assert bing["qft"] == ["+filterui:license-L2_L3_L4+filterui:color2-bw"]
    openverse = make(OpenverseSpider, type="photo", layout="square", size="large")
    assert {"category": "photograph", "aspect_ratio": "square", "size": "large"}.items() <= openverse.filters.items()
    wikimedia = parse_qs(urlsplit(make(WikimediaSpider, type="clipart", size="large").api_url()).query)
    assert wikimedia["gsrsearch"] == ["cats filew:>1200 filetype:drawing"]
    assert make(OpenverseSpider, license="by,cc0").filters["license"] == "by,cc0"  # its own codes too
