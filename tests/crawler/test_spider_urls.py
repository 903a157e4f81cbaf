"""Whole `scrapy crawl urls` runs: text and CSV URL lists against a local image server."""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from pathlib import Path

import pytest
from crawler_testkit import encode, picture
from crawls import catalog_rows
from fixture_server import FIXTURES, FixtureServer, finish, start_crawl

from crawler.errors import UserError
from crawler.spiders.urls import UrlsSpider, read_url_file

DATA_URI = "data:image/png;base64," + base64.b64encode(encode(picture(4242, size=(96, 96)))).decode()
# The same kind of image percent-encoded (RFC 2397 without ;base64), as some pages inline them.
PERCENT_BYTES = encode(picture(4343, size=(80, 80)), "JPEG", quality=80)
PERCENT_DATA_URI = "data:image/jpeg," + urllib.parse.quote(PERCENT_BYTES, safe="")


@pytest.fixture(scope="module")
def server():
    with FixtureServer(lambda path, query: None) as running:
        yield running


def url_file(server: FixtureServer, tmp: Path, name: str, extra: str = "") -> Path:
    """The fixture ``urls/<name>`` with the server's address, written under ``tmp``."""
    path = tmp / name
    path.write_text((FIXTURES / "urls" / name).read_text().replace("{{BASE}}", server.base) + extra)
    return path


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory) -> dict[str, tuple[str, int, Path]]:
    """All crawls at once: run name -> (log, exit code, dataset)."""
    tmp = tmp_path_factory.mktemp("urls")
    text = url_file(server, tmp, "urls.txt", DATA_URI + "\n" + PERCENT_DATA_URI + "\n")
    commands = {
        "text": ["-a", f"file={text}", "-a", "label=tabby"],
        "csv": ["-a", f"file={url_file(server, tmp, 'labelled.csv')}", "-a", "label=other"],
        "csv_all_labelled": ["-a", f"file={url_file(server, tmp, 'all-labelled.csv')}", "-a", "query=pets"],
        "max": ["-a", f"file={text}", "-a", "label=tabby", "-a", "max_images=1"],
    }
    procs = {name: start_crawl("urls", tmp / name, *args) for name, args in commands.items()}
    results = {}
    for name, proc in procs.items():
        result = finish(proc)
        assert "Traceback (most recent call last)" not in result.stdout, result.stdout[-3000:]
        results[name] = (result.stdout, result.returncode, tmp / name)
    return results


@pytest.mark.timeout(240)
def test_text_list_downloads_each_url_once(server, runs) -> None:
    log, code, dataset = runs["text"]
    assert code == 0, log[-3000:]
    rows = catalog_rows(dataset)
    img = f"{server.base}/img"
    # Order of rows is the order downloads finish in; each URL once (url-1 is listed twice).
    assert sorted(row["url"] for row in rows if not row["url"].startswith("data:")) == [
        f"{img}/dead-url.jpg", f"{img}/url-1.jpg", f"{img}/url-2.jpg", f"{img}/url-3.jpg",
    ]
    assert sum(row["url"].startswith("data:image/png;base64,") for row in rows) == 1
    assert sum(row["status"] == "stored" for row in rows) == 5  # 3 files + the two data: URIs
    assert [row["reason"] for row in rows if row["status"] == "rejected"] == ["http_404"]
    for row in rows:
        assert row["page_url"] is None
        assert (row["spider"], row["label"], row["query"]) == ("urls", "tabby", "tabby")
    assert "not an http(s) or data: URL, skipped: ftp://example.org/not-http.jpg" in log
    assert "'urls/duplicate_entries': 1" in log and "'urls/skipped': 1" in log


@pytest.mark.timeout(240)
def test_csv_row_labels_override_the_argument(server, runs) -> None:
    log, code, dataset = runs["csv"]
    assert code == 0, log[-3000:]
    labels = {row["url"].rsplit("/", 1)[1]: (row["label"], row["query"], row["status"]) for row in catalog_rows(dataset)}
    assert labels == {
        "csv-cat-1.jpg": ("cat", "cat", "stored"),
        "csv-dog-1.jpg": ("dog", "dog", "stored"),
        "csv-cat-2.jpg": ("cat", "cat", "stored"),
        "csv-other-1.jpg": ("other", "other", "stored"),
    }
    assert sorted(p.name for p in dataset.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["cat", "dog", "other"]
    assert "'urls/skipped'" not in log  # the header row is not taken for a URL


@pytest.mark.timeout(240)
def test_csv_with_a_label_on_every_row_needs_no_label_argument(runs) -> None:
    log, code, dataset = runs["csv_all_labelled"]
    assert code == 0, log[-3000:]
    rows = catalog_rows(dataset)
    assert sorted((row["label"], row["query"]) for row in rows) == [("cat", "pets"), ("dog", "pets")]


def test_missing_label_or_file_fails_clearly(server, tmp_path) -> None:
    # (How `scrapy crawl` turns these into a non-zero exit is tested with the gallery spider.)
    text = url_file(server, tmp_path, "urls.txt")
    with pytest.raises(UserError, match=r"needs a label: 6 entries of .* have none"):
        UrlsSpider(file=str(text))
    with pytest.raises(UserError, match=r"needs a URL list \(-a file="):
        UrlsSpider(label="tabby")
    with pytest.raises(UserError, match="cannot read -a file="):
        UrlsSpider(label="tabby", file=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(UserError, match="found no URLs"):
        UrlsSpider(label="tabby", file=str(empty))


@pytest.mark.timeout(240)
def test_max_images_caps_stored_images(runs) -> None:
    log, code, dataset = runs["max"]
    assert code == 0, log[-3000:]
    assert sum(row["status"] == "stored" for row in catalog_rows(dataset)) == 1


def test_read_url_file_formats(tmp_path) -> None:
    text = tmp_path / "list.txt"
    text.write_text("\ufeff# comment\n\nhttp://a/1.jpg\n  http://a/2.jpg  \n")
    assert read_url_file(text) == [("http://a/1.jpg", None), ("http://a/2.jpg", None)]
    headed = tmp_path / "list.txt"
    headed.write_text("url\nhttp://a/1.jpg\n")
    assert read_url_file(headed) == [("http://a/1.jpg", None)]
    bad = tmp_path / "list.csv"
    bad.write_text("link,label\nhttp://a/1.jpg,x\n")
    with pytest.raises(ValueError, match="'url' column"):
        read_url_file(bad)


@pytest.mark.timeout(240)
def test_base64_and_percent_encoded_data_uris_are_downloads_like_any_other(runs) -> None:
    log, code, dataset = runs["text"]
    assert code == 0, log[-3000:]
    inline = {row["sha256"]: row for row in catalog_rows(dataset) if row["url"].startswith("data:")}
    for body in (base64.b64decode(DATA_URI.split(",", 1)[1]), PERCENT_BYTES):
        row = inline[hashlib.sha256(body).hexdigest()]
        assert row["status"] == "stored", dict(row)
        assert (dataset / row["path"]).read_bytes() == body
