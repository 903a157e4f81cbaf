"""Whole `scrapy crawl bing|duckduckgo|wikimedia|openverse` runs against fixture responses.

One local server plays every source. Paths are ``/<variant>/<source>/...``: ``ok`` (and
``max``, the same answers) serve the fixtures in the services' documented formats, ``changed``
serves a redesigned page/JSON, ``denied`` is forbidden by the server's robots.txt. All crawls
start at once (one process each) and the tests read their logs, catalogs and the request log.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from crawls import catalog_rows
from fixture_server import FIXTURES, FixtureServer, finish, start_crawl
from scrapy.exceptions import CloseSpider, IgnoreRequest
from scrapy.http import HtmlResponse, Request, TextResponse
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.test import get_crawler
from twisted.python.failure import Failure

from crawler.spiders.bing import BingSpider
from crawler.spiders.duckduckgo import DuckDuckGoSpider
from crawler.spiders.openverse import OpenverseSpider
from crawler.spiders.wikimedia import WikimediaSpider

VQD = "4-211432478457832471128574193457238452"
HTML = "text/html; charset=utf-8"
JSON = "application/json"

BASE_SETTING = {
    "bing": ("BING_BASE_URL", ""),
    "duckduckgo": ("DUCKDUCKGO_BASE_URL", ""),
    "wikimedia": ("WIKIMEDIA_API_URL", "/api.php"),
    "openverse": ("OPENVERSE_API_URL", ""),
}


def make_route(server_ref: list[FixtureServer]) -> Any:
    def route(path: str, query: dict[str, str]) -> tuple[int, str, bytes] | None:
        server = server_ref[0]
        match = re.fullmatch(r"/(ok|max|changed|denied)/(\w+)(/.*)?", path)
        if not match:
            return None
        variant, source, rest = match.group(1), match.group(2), match.group(3) or "/"
        changed = variant == "changed"
        if source == "bing" and rest == "/images/async":
            assert query["q"] == "tabby cat" and query["count"] == "35"
            name = {"1": "async-page1.html", "36": "async-page2.html"}.get(query["first"], "async-end.html")
            if changed and query["first"] == "1":
                name = "async-changed.html"
            return 200, HTML, server.fixture("bing", name)
        if source == "duckduckgo" and rest == "/":
            assert query == {"q": "tabby cat", "iax": "images", "ia": "images"}
            return 200, HTML, server.fixture("duckduckgo", "search-changed.html" if changed else "search.html")
        if source == "duckduckgo" and rest == "/i.js":
            if query.get("vqd") != VQD:  # what DuckDuckGo answers without its token
                return 403, HTML, b"<html>Forbidden</html>"
            name = "ijs-page2.json" if query.get("s") == "100" else "ijs-page1.json"
            return 200, JSON, server.fixture("duckduckgo", name)
        if source == "wikimedia" and rest == "/api.php":
            assert query["action"] == "query" and query["generator"] == "search"
            assert query["gsrsearch"] == "tabby cat filetype:bitmap" and query["gsrnamespace"] == "6"
            assert query["iiprop"] == "url|size|mime|extmetadata" and query["iiurlwidth"] == "1024"
            if "gsroffset" not in query:
                return 200, JSON, server.fixture("wikimedia", "search-changed.json" if changed else "search-page1.json")
            if query == {**query, "gsroffset": "3", "continue": "gsroffset||"}:
                return 200, JSON, server.fixture("wikimedia", "search-page2.json")
            return 400, JSON, b'{"error": {"code": "badcontinue", "info": "Invalid continue param."}}'
        if source == "openverse" and rest == "/v1/images/":
            assert query["q"] == "tabby cat" and query["page_size"] == "3"
            if changed:
                return 200, JSON, server.fixture("openverse", "images-changed.json")
            return 200, JSON, server.fixture("openverse", f"images-page{query['page']}.json")
        return None

    return route


@pytest.fixture(scope="module")
def server():
    ref: list[FixtureServer] = []
    with FixtureServer(make_route(ref)) as running:
        ref.append(running)
        yield running


RUNS: dict[str, tuple[str, str, list[str]]] = {
    # run name: (spider, variant, extra arguments)
    "bing": ("bing", "ok", []),
    "bing_max": ("bing", "max", ["-a", "max_images=2"]),
    "bing_changed": ("bing", "changed", []),
    "bing_denied": ("bing", "denied", []),
    "duckduckgo": ("duckduckgo", "ok", []),
    "wikimedia": ("wikimedia", "ok", []),
    "openverse": ("openverse", "ok", ["-a", "license_type=commercial", "-s", "OPENVERSE_PAGE_SIZE=3"]),
}


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """Every crawl of RUNS at once: run name -> (log, dataset). `scrapy crawl` exits 0 for
    the crawls that did their job and 1 for those that failed (changed markup, robots.txt)."""
    root = tmp_path_factory.mktemp("search")
    procs = {}
    for name, (spider, variant, extra) in RUNS.items():
        setting, suffix = BASE_SETTING[spider]
        procs[name] = start_crawl(
            spider, root / name, "-a", "label=tabby", "-a", "query=tabby cat",
            "-s", f"{setting}={server.base}/{variant}/{spider}{suffix}", *extra,
        )
    results = {}
    for name, proc in procs.items():
        result = finish(proc)
        assert "Traceback" not in result.stdout, result.stdout[-3000:]
        assert result.returncode == (1 if name in ("bing_changed", "bing_denied") else 0), result.stdout[-3000:]
        results[name] = (result.stdout, root / name)
    return results


def stored_urls(dataset: Path) -> set[str]:
    return {row["url"] for row in catalog_rows(dataset) if row["status"] == "stored"}


def img(server: FixtureServer, *names: str) -> set[str]:
    return {f"{server.base}/img/{name}" for name in names}


def finish_reason(log: str) -> str:
    match = re.search(r"'finish_reason': '(\w+)'", log)
    assert match, log[-2000:]
    return match.group(1)


@pytest.mark.timeout(240)
def test_bing_takes_murl_and_purl_of_every_result_page(server, runs) -> None:
    log, dataset = runs["bing"]
    rows = catalog_rows(dataset)
    # Page 2 repeats bing-2, so it is yielded once; the dead link is judged and rejected.
    assert {row["url"] for row in rows} == img(server, "bing-1.jpg", "bing-2.jpg", "dead-bing.jpg", "bing-3.jpg",
                                               "bing-4.jpg", "bing-5.jpg")
    assert len(rows) == 6
    assert stored_urls(dataset) == img(server, "bing-1.jpg", "bing-2.jpg", "bing-3.jpg", "bing-4.jpg", "bing-5.jpg")
    assert [r["reason"] for r in rows if r["status"] == "rejected"] == ["http_404"]
    by_url = {row["url"]: row for row in rows}
    assert by_url[f"{server.base}/img/bing-4.jpg"]["page_url"] == f"{server.base}/pages/shelter.html"
    assert {(r["spider"], r["query"], r["label"]) for r in rows} == {("bing", "tabby cat", "tabby")}
    # Paging: first=1, 36, then 71 answers the empty fragment that ends the results.
    firsts = [q["first"] for _, q in server.paths("/ok/bing/images/async")]
    assert firsts == ["1", "36", "71"]
    assert finish_reason(log) == "finished"


@pytest.mark.timeout(240)
def test_bing_max_images_counts_stored_images(runs) -> None:
    log, dataset = runs["bing_max"]
    assert len(stored_urls(dataset)) == 2
    assert len(list((dataset / "tabby").iterdir())) == 2
    assert "max_images" in log


@pytest.mark.timeout(240)
def test_changed_markup_fails_a_whole_crawl_loudly(runs) -> None:
    log, dataset = runs["bing_changed"]
    assert re.search(r"ERROR: bing spider: parse_error at http://127\.0\.0\.1:\d+/changed/bing/images/async\S*: "
                     r"no a\.iusc result links", log), log[-3000:]
    assert "'bing/parse_error': 1" in log
    assert finish_reason(log) == "parse_error"
    assert stored_urls(dataset) == set()


CHANGED = [
    # (spider class, callback, fixture, what the ERROR says)
    (BingSpider, "parse", "bing/async-changed.html", "no a.iusc result links"),
    (DuckDuckGoSpider, "parse_token", "duckduckgo/search-changed.html", "no vqd token"),
    (DuckDuckGoSpider, "parse", "openverse/images-changed.json", "no 'results' list"),
    (WikimediaSpider, "parse", "wikimedia/search-changed.json", "no query.pages"),
    (OpenverseSpider, "parse", "openverse/images-changed.json", "no 'results' list"),
]


@pytest.mark.parametrize(("spider_cls", "callback", "fixture", "message"), CHANGED)
def test_changed_format_fails_loudly(spider_cls, callback, fixture, message, tmp_path, caplog) -> None:
    """Each parser on its changed-format fixture: an ERROR naming spider and URL, the
    ``<spider>/parse_error`` counter, and CloseSpider("parse_error") to end the crawl so."""
    crawler = get_crawler(spider_cls, settings_dict={"DATASET_DIR": str(tmp_path)})
    spider = spider_cls.from_crawler(crawler, label="tabby", query="tabby cat")
    url = "http://127.0.0.1:9/changed"
    body = (FIXTURES / fixture).read_text(encoding="utf-8").replace("{{BASE}}", "http://127.0.0.1:9").encode()
    cls = HtmlResponse if fixture.endswith(".html") else TextResponse
    response = cls(url, body=body, encoding="utf-8", request=Request(url, meta={"page_number": 1}))
    with caplog.at_level(logging.ERROR), pytest.raises(CloseSpider) as closed:
        list(getattr(spider, callback)(response))
    assert closed.value.reason == "parse_error"
    assert crawler.stats.get_value(f"{spider.name}/parse_error") == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith(f"{spider.name} spider: parse_error at {url}: ")
    assert message in record.getMessage()


@pytest.mark.timeout(240)
def test_robots_txt_refusal_is_reported_not_an_empty_success(runs) -> None:
    log, dataset = runs["bing_denied"]
    assert re.search(r"ERROR: bing spider: robots_denied at .*/denied/bing/images/async", log), log[-3000:]
    assert "'bing/robots_denied': 1" in log
    assert finish_reason(log) == "robots_denied"
    assert stored_urls(dataset) == set()


@pytest.mark.timeout(240)
def test_duckduckgo_token_then_json_pages(server, runs) -> None:
    log, dataset = runs["duckduckgo"]
    assert stored_urls(dataset) == img(server, *(f"ddg-{i}.jpg" for i in range(1, 6)))
    assert len(catalog_rows(dataset)) == 5  # ddg-3 is on both pages, yielded once
    by_url = {row["url"]: row for row in catalog_rows(dataset)}
    assert by_url[f"{server.base}/img/ddg-5.jpg"]["page_url"] == f"{server.base}/pages/shelter.html"
    requests = server.paths("/ok/duckduckgo/")
    assert [path for path, _ in requests] == ["/ok/duckduckgo/", "/ok/duckduckgo/i.js", "/ok/duckduckgo/i.js"]
    first, following = requests[1][1], requests[2][1]
    assert first == {"l": "us-en", "o": "json", "q": "tabby cat", "vqd": VQD, "f": ",,,,,", "p": "1"}
    assert following["s"] == "100" and following["vqd"] == VQD
    assert finish_reason(log) == "finished"


@pytest.mark.timeout(240)
def test_wikimedia_carries_licence_and_author(server, runs) -> None:
    log, dataset = runs["wikimedia"]
    rows = {row["url"]: row for row in catalog_rows(dataset)}
    base = server.base
    expected = {
        # url: (licence, author, page_url)
        f"{base}/img/1024px-Tabby_kitten_on_grass.jpg": ("CC BY 2.0", "Ana & Tom", "File:Tabby_kitten_on_grass.jpg"),
        f"{base}/img/1024px-Tabby_cat_with_green_eyes.jpg": ("CC BY-SA 4.0", "Jane Example", "File:Tabby_cat_with_green_eyes.jpg"),
        f"{base}/img/Small_tabby_sketch.jpg": ("Public domain", "Unknown author", "File:Small_tabby_sketch.jpg"),
        f"{base}/img/1024px-Tabby_cat_sleeping.jpg": ("CC0", "Photo Bot", "File:Tabby_cat_sleeping.jpg"),
        f"{base}/img/1024px-Grey_tabby_portrait.jpg": ("CC BY-SA 3.0", "Lens Person", "File:Grey_tabby_portrait.jpg"),
    }
    assert set(rows) == set(expected)
    for url, (licence, author, page) in expected.items():
        row = rows[url]
        assert row["status"] == "stored", url
        assert (row["licence"], row["author"], row["page_url"]) == (licence, author, f"{base}/wiki/{page}")
    # The continuation's keys were merged into the second request.
    requests = [q for _, q in server.paths("/ok/wikimedia/api.php")]
    assert len(requests) == 2 and "gsroffset" not in requests[0]
    assert (requests[1]["gsroffset"], requests[1]["continue"]) == ("3", "gsroffset||")
    # The CSV export carries them too.
    assert "Ana & Tom" in (dataset / "catalog.csv").read_text(encoding="utf-8")
    assert finish_reason(log) == "finished"


@pytest.mark.timeout(240)
def test_openverse_carries_licence_author_and_landing_page(server, runs) -> None:
    log, dataset = runs["openverse"]
    rows = {row["url"]: row for row in catalog_rows(dataset)}
    base = server.base
    expected = {
        "ov-1.jpg": ("CC BY 2.0", "Sean MacEntee", "photos/18090920@N07/4459771899"),
        "ov-2.jpg": ("CC0 1.0", "Tim Sullivan", "photo/XNVBVXO3B7"),
        "ov-3.jpg": ("CC BY-SA 4.0", "Jane Example", "wiki/File:Tabby_cat_with_green_eyes.jpg"),
        "ov-4.jpg": ("Public Domain Mark 1.0", None, "objects/12345"),
        "ov-5.jpg": ("CC BY-NC 2.0", "bella's human", "photos/bella/987654321"),
    }
    assert set(rows) == {f"{base}/img/{name}" for name in expected}
    for name, (licence, author, landing) in expected.items():
        row = rows[f"{base}/img/{name}"]
        assert row["status"] == "stored", name
        assert (row["licence"], row["author"], row["page_url"]) == (licence, author, f"{base}/{landing}")
    pages = [q for _, q in server.paths("/ok/openverse/v1/images/")]
    assert [q["page"] for q in pages] == ["1", "2"]  # page_count is 2: no third request
    assert all(q["license_type"] == "commercial" for q in pages)
    assert finish_reason(log) == "finished"


def test_fixtures_follow_the_documented_shapes() -> None:
    """Guard the fixtures themselves: the fields the spiders read are where the services put them."""
    fixtures = Path(__file__).resolve().parent / "fixtures"
    ddg = json.loads((fixtures / "duckduckgo/ijs-page1.json").read_text())
    assert {"image", "url", "thumbnail", "title", "width", "height", "source"} <= set(ddg["results"][0])
    wm = json.loads((fixtures / "wikimedia/search-page1.json").read_text())
    info = next(iter(wm["query"]["pages"].values()))["imageinfo"][0]
    assert {"url", "thumburl", "descriptionurl", "mime", "extmetadata"} <= set(info)
    ov = json.loads((fixtures / "openverse/images-page1.json").read_text())
    assert {"result_count", "page_count", "page", "results"} <= set(ov)
    assert {"url", "foreign_landing_url", "creator", "license", "license_version", "license_url",
            "attribution"} <= set(ov["results"][0])


def test_failed_results_page_ends_the_crawl_with_its_reason(tmp_path, caplog) -> None:
    crawler = get_crawler(OpenverseSpider, settings_dict={"DATASET_DIR": str(tmp_path)})
    spider = OpenverseSpider.from_crawler(crawler, label="tabby")
    request = spider.page_request(spider.api_url(1), spider.parse, 1)
    assert request.meta["dont_obey_robotstxt"] is True  # an API, see the spider's docstring
    assert request.url.startswith("https://api.openverse.org/v1/images/?q=tabby&page=1&page_size=20")
    outcomes = []
    for exc in (HttpError(TextResponse(request.url, status=429, request=request)),
                IgnoreRequest("Forbidden by robots.txt")):
        failure = Failure(exc)
        failure.request = request
        with caplog.at_level(logging.ERROR), pytest.raises(CloseSpider) as closed:
            spider.page_failed(failure)
        outcomes.append(closed.value.reason)
    assert outcomes == ["request_failed", "robots_denied"]
    assert "results page 1: HTTP 429" in caplog.text
    assert crawler.stats.get_value("openverse/request_failed") == 1
