"""The gallery spider on static mirrors of real sites (``../shared/real/sites``), against their
ground truth: full-size images from detail pages, no site chrome, an honest ``max_images``,
and no request leaving 127.0.0.1. Skipped when the material is absent."""

from __future__ import annotations

import json
import re
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from crawls import REPO, catalog_rows, gallery_command, run_crawl

SITES = REPO.parent / "shared" / "real" / "sites"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SITES / "bid" / "ground_truth.json").exists(), reason="../shared/real is absent"),
]
FULL_SIZE_SHARE = 0.95


class _Handler(SimpleHTTPRequestHandler):
    def log_request(self, code: object = "-", size: object = "-") -> None:
        self.server.hits.append((self.path, int(getattr(code, "value", code))))  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


class MirrorServer:
    """A threaded ``http.server`` on 127.0.0.1 serving one mirror's ``site/``, logging each hit."""

    def __init__(self, root: Path) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.server.hits = []  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def hits(self) -> list[tuple[str, int]]:
        """``(path with query, HTTP status)`` of every request answered."""
        return self.server.hits  # type: ignore[attr-defined]

    def __enter__(self) -> MirrorServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _path(url: str | None) -> str:
    return urlsplit(url or "").path


def _hosts_requested(log: str) -> set[str]:
    return {urlsplit(url).hostname or "" for url in re.findall(r"<GET (\S+?)>", log)}


def full_size_stored(item: dict[str, Any], rows: list[Any]) -> bool:
    """Whether the dataset holds the item's picture at its full size: a stored row taken from
    its detail page (or, without one, from its full-size file) with the full size's pixels."""
    want = tuple(item["full_size_image_px"])
    stored = {r["path"]: r for r in rows if r["status"] == "stored"}
    for row in rows:
        if item.get("detail_page"):
            if _path(row["page_url"]) != item["detail_page"]:
                continue
        elif _path(row["url"]) != item["full_size_image"]:
            continue
        # A product listed under two labels is stored once; the second is a label_conflict.
        if row["status"] == "duplicate" and row["reason"] == "label_conflict":
            row = stored.get(row["duplicate_of"], row)
        if row["status"] == "stored" and (row["width"], row["height"]) == want:
            return True
    return False


def chrome_stored(category: dict[str, Any], rows: list[Any]) -> list[str]:
    chrome = {entry["path"] for entry in category["non_content_images"]}
    return [r["url"] for r in rows if r["status"] == "stored" and _path(r["url"]) in chrome]


@pytest.mark.parametrize("site", ["bid", "gaa"])
def test_mirror_full_size_no_chrome_offline(site: str, tmp_path: Path) -> None:
    truth = json.loads((SITES / site / "ground_truth.json").read_text())
    dataset = tmp_path / "ds"
    report, total, full = [], 0, 0
    with MirrorServer(SITES / site / "site") as server:
        for label, category in truth["categories"].items():
            start = time.monotonic()
            result = run_crawl(gallery_command(
                server.url + category["start_url_path"], label, dataset, "-s", "LOG_LEVEL=DEBUG",
            ), timeout=600)
            wall = time.monotonic() - start
            assert result.returncode == 0, result.stdout[-3000:]
            assert _hosts_requested(result.stdout) <= {"127.0.0.1"}
            assert "Traceback" not in result.stdout
            rows = catalog_rows(dataset)
            got = sum(full_size_stored(item, rows) for item in category["items"])
            total += len(category["items"])
            full += got
            report.append((label, len(category["items"]), got, chrome_stored(category, rows), round(wall, 1)))
            assert chrome_stored(category, rows) == [], report
    print(site, report)  # shown with -s: the figures the issue note asks for
    assert full >= FULL_SIZE_SHARE * total, report


@pytest.mark.parametrize("site", ["bid", "gaa"])
def test_mirror_max_images_downloads_only_what_it_stores(site: str, tmp_path: Path) -> None:
    truth = json.loads((SITES / site / "ground_truth.json").read_text())
    label, category = next(iter(truth["categories"].items()))
    dataset = tmp_path / "ds"
    with MirrorServer(SITES / site / "site") as server:
        result = run_crawl(gallery_command(
            server.url + category["start_url_path"], label, dataset, "-a", "max_images=5",
        ), timeout=600)
        hits = list(server.hits)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = catalog_rows(dataset)
    assert sum(r["status"] == "stored" for r in rows) == 5
    # Every image the server sent (a 200 for an image file) has its catalog row; a candidate
    # that answered 404 before its fallback was sent no image.
    sent = [path for path, status in hits if status == 200 and _is_image(path)]
    assert len(sent) == len(rows), (sent, [dict(r) for r in rows])
    # The summary says what the server saw: 5 stored, nothing else judged, the rest unfetched.
    assert re.search(rf"^\s+{label}\s+\|\s+5\s+\|\s+0\s+\|\s+0\s*$", result.stdout, re.M), result.stdout[-3000:]
    found = int(re.search(r"'gallery/images': (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    if found > len(rows):
        assert f"{found - len(rows)} image(s) found past max_images were not fetched" in result.stdout
    assert chrome_stored(category, rows) == []


def _is_image(path: str) -> bool:
    return urlsplit(path).path.lower().endswith((".jpg", ".jpeg", ".png", ".gif", ".webp"))
