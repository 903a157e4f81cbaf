"""Hostile inputs through a whole ``scrapy crawl``, each with its expected catalog outcome.

Decoding cases (truncated, zero bytes, HTML as image/jpeg, SVG, PNG bomb, CMYK, 16-bit,
palette + transparency, animated GIF, EXIF rotation, WebP) are unit-tested in test_verify.py;
this module serves the ones that only a real download shows, from a local server on 127.0.0.1:
a slow server, a redirect loop, a response over DOWNLOAD_MAXSIZE (announced and not announced),
a ``data:`` URI with bad base64, and a label that tries to be a path.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crawler_testkit import encode, picture, png_bomb
from http_testkit import HttpServer, Request

REPO = Path(__file__).resolve().parents[2]
_SCRAPY = Path(sys.executable).with_name("scrapy")
SCRAPY = [str(_SCRAPY)] if _SCRAPY.exists() else [sys.executable, "-m", "scrapy"]
MAX_SIZE = 200_000  # DOWNLOAD_MAXSIZE for the crawl, bytes

GOOD = encode(picture(1, (200, 150)), "JPEG", quality=90)
BIG = encode(picture(2, (900, 900)), "PNG") + b"\x00" * MAX_SIZE  # over the limit, still a PNG
# (path, expected catalog status, expected reason); reason None for a stored image.
CASES = {
    "/good.jpg": ("stored", None),
    "/slow.jpg": ("rejected", "timeout"),
    "/loop-a.jpg": ("rejected", "too_many_redirects"),
    "/big-announced.png": ("rejected", "too_large"),
    "/big-chunked.png": ("rejected", "too_large"),
    "/bomb.png": ("rejected", "too_many_pixels"),
    "/empty.jpg": ("rejected", "empty"),
}
BAD_DATA_URI = "data:image/png;base64,iVBORw0KGgo%%%not*base64!!!"


def answer(request: Request) -> None:
    path = request.path.split("?")[0]
    if path == "/page":
        imgs = "".join(f'<img src="{p}">' for p in CASES) + f'<img src="{BAD_DATA_URI}">'
        return request.reply(200, "text/html", f"<html><body>{imgs}</body></html>".encode())
    if path == "/robots.txt":
        return request.reply(200, "text/plain", b"User-agent: *\nAllow: /\n")
    if path == "/good.jpg":
        return request.reply(200, "image/jpeg", GOOD)
    if path == "/slow.jpg":
        time.sleep(8)  # well past the crawl's DOWNLOAD_TIMEOUT of 3 s, which a loaded machine still meets for the rest
        return request.reply(200, "image/jpeg", GOOD)
    if path in ("/loop-a.jpg", "/loop-b.jpg"):
        request.send_response(302)
        request.send_header("Location", "/loop-b.jpg" if path == "/loop-a.jpg" else "/loop-a.jpg")
        request.send_header("Content-Length", "0")
        request.end_headers()
        return None
    if path == "/big-announced.png":
        return request.reply(200, "image/png", BIG)
    if path == "/big-chunked.png":  # no Content-Length: the limit must hold while reading
        request.send_response(200)
        request.send_header("Content-Type", "image/png")
        request.send_header("Connection", "close")
        request.end_headers()
        for start in range(0, len(BIG), 16384):
            request.wfile.write(BIG[start : start + 16384])
        return None
    if path == "/bomb.png":
        return request.reply(200, "image/png", png_bomb(20000, 20000))
    if path == "/empty.jpg":
        return request.reply(200, "image/jpeg", b"")
    return request.reply(404, "text/html", b"not found")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with HttpServer(answer) as running:
        yield running.base


@pytest.fixture(scope="module")
def crawled(server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[sqlite3.Row], str]:
    dataset = tmp_path_factory.mktemp("hostile") / "dataset"
    done = subprocess.run(
        [
            *SCRAPY, "crawl", "gallery", "-a", "label=../../etc", "-a", f"start_urls={server}/page",
            "-s", f"DATASET_DIR={dataset}", "-s", "AUTOTHROTTLE_ENABLED=0", "-s", "RETRY_ENABLED=0",
            "-s", "DOWNLOAD_TIMEOUT=3", "-s", f"DOWNLOAD_MAXSIZE={MAX_SIZE}", "-s", "LOG_LEVEL=INFO",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    conn = sqlite3.connect(dataset / "catalog.sqlite")
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM images ORDER BY id").fetchall()
    conn.close()
    return dataset, rows, done.stdout + done.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", list(CASES))
def test_each_download_gets_its_outcome(crawled, server: str, path: str) -> None:
    _, rows, log = crawled
    status, reason = CASES[path]
    (row,) = [r for r in rows if r["url"] == server + path]
    assert (row["status"], row["reason"]) == (status, reason), log[-2000:]


@pytest.mark.timeout(180)
def test_bad_base64_data_uri_is_a_recorded_rejection(crawled) -> None:
    _, rows, _ = crawled
    (row,) = [r for r in rows if r["url"].startswith("data:")]
    assert (row["status"], row["reason"]) == ("rejected", "bad_data_uri")


@pytest.mark.timeout(180)
def test_a_path_like_label_stays_inside_the_dataset(crawled) -> None:
    dataset, rows, log = crawled
    assert "Traceback" not in log
    (stored,) = [r for r in rows if r["status"] == "stored"]
    label = stored["label"]
    assert "/" not in label and label not in (".", "..") and not label.startswith(".")
    target = (dataset / stored["path"]).resolve()
    assert target.is_file() and target.parent.parent == dataset.resolve()
    assert not (dataset.parent.parent / "etc").exists()


@pytest.mark.parametrize("label", ["a/b", "..", "../../etc", ".hidden", "a\\b", "x\x00y"])
def test_path_like_labels_are_sanitised(label: str) -> None:
    from crawler.labels import sanitize_label

    try:
        clean = sanitize_label(label)
    except ValueError:
        return  # refusing a label that is nothing but a path is fine too
    assert clean and "/" not in clean and "\\" not in clean and "\x00" not in clean
    assert clean not in (".", "..") and not clean.startswith(".")
