"""Crawls and dataset commands on a PostgreSQL catalog (``-s CATALOG_URL=postgresql://...``).

Real ``scrapy crawl urls`` processes against a local image server, each test on a new database
of a throwaway PostgreSQL cluster (skipped where PostgreSQL is not installed: ``make test``
installs it); the images go to the dataset folder, the rows to PostgreSQL only.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from crawler_testkit import encode, picture
from crawls import REPO, SCRAPY, catalog_rows, run_crawl
from fixture_server import finish, start_crawl
from image_site import ImageSite, generated_images

from crawler.catalog import Catalog
from crawler.review.decisions import apply_decisions, decide


def dataset_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def url_list(path: Path, urls: list[str]) -> Path:
    path.write_text("\n".join(urls) + "\n")
    return path


def test_a_crawl_catalogues_into_postgresql_and_the_dataset_commands_read_it(tmp_path: Path, postgres_url: str) -> None:
    images = generated_images(8)
    images["copy.jpg"] = images["g0.jpg"]  # the same bytes at another URL: an exact duplicate
    with ImageSite(images) as site:
        urls = [site.url(name) for name in images]
        dataset = tmp_path / "data"
        result = run_crawl([*SCRAPY, "crawl", "urls", "-a", f"file={url_list(tmp_path / 'urls.txt', urls)}",
                            "-a", "label=things", "-s", f"DATASET_DIR={dataset}", "-s", f"CATALOG_URL={postgres_url}",
                            "-s", "LOG_LEVEL=INFO"])
        assert result.returncode == 0, result.stdout[-3000:]
    rows = catalog_rows(dataset, postgres_url)
    assert sorted(row["url"] for row in rows) == sorted(urls)
    assert Counter(row["status"] for row in rows) == {"stored": 8, "duplicate": 1}
    assert not (dataset / "catalog.sqlite").exists()  # the catalog is the database only
    stored = {row["path"] for row in rows if row["status"] == "stored"}
    assert {p.relative_to(dataset).as_posix() for p in dataset.glob("things/*")} == stored

    check = dataset_command("crawler.dataset", "check", str(dataset), "--catalog-url", postgres_url)
    assert check.returncode == 0, check.stderr
    assert "consistent" in check.stderr
    summary = dataset_command("crawler.dataset", "summary", str(dataset), "--catalog-url", postgres_url)
    assert summary.returncode == 0, summary.stderr
    assert "things" in summary.stdout and "8" in summary.stdout
    exported = dataset_command("crawler.dataset", "export", str(dataset), "--catalog-url", postgres_url,
                               "--output", str(tmp_path / "rows.csv"))
    assert exported.returncode == 0, exported.stderr
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 1 + len(urls)
    rehashed = dataset_command("crawler.dataset", "rehash", str(dataset), "--catalog-url", postgres_url, "--hash", "phash")
    assert rehashed.returncode == 0 and "rehashed 8 images with phash" in rehashed.stderr, rehashed.stderr
    with Catalog(dataset, url=postgres_url) as catalog:
        assert catalog.meta()["hash"] == "phash"
        assert all(row["phash"] and not row["pdq"] for row in catalog.rows("status = 'stored'"))
    # Without the URL, the folder has no catalog: its files are all orphans.
    orphans = dataset_command("crawler.dataset", "check", str(dataset))
    assert orphans.returncode == 0, orphans.stderr  # files only: nothing to compare them with

    # A review deletion, then `crawler.review restore --catalog-url` puts it back.
    path = sorted(stored)[0]
    with Catalog(dataset, url=postgres_url) as catalog:
        row_id = catalog.find_stored_path(path)["id"]
        decide(catalog, row_id, "delete")
        apply_decisions(dataset, catalog)
        assert catalog.get(row_id)["status"] == "rejected"
    assert not (dataset / path).exists()
    restored = dataset_command("crawler.review", "restore", str(dataset), "--catalog-url", postgres_url)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.split() == [path]
    assert (dataset / path).is_file()
    with Catalog(dataset, url=postgres_url) as catalog:
        assert catalog.get(row_id)["status"] == "stored"
    check = dataset_command("crawler.dataset", "check", str(dataset), "--catalog-url", postgres_url)
    assert check.returncode == 0, check.stderr

    # A lost file (one no duplicate row names): check finds it, --repair marks its row.
    named = {row["duplicate_of"] for row in rows}
    path = next(p for p in sorted(stored) if p not in named)
    with Catalog(dataset, url=postgres_url) as catalog:
        row_id = catalog.find_stored_path(path)["id"]
    (dataset / path).unlink()
    check = dataset_command("crawler.dataset", "check", str(dataset), "--catalog-url", postgres_url)
    assert check.returncode == 1 and f"missing_file {path}" in check.stderr, check.stderr
    repaired = dataset_command("crawler.dataset", "check", str(dataset), "--repair", "--catalog-url", postgres_url)
    assert repaired.returncode == 0, repaired.stderr
    with Catalog(dataset, url=postgres_url) as catalog:
        assert (catalog.get(row_id)["status"], catalog.get(row_id)["reason"]) == ("rejected", "missing_file")


def test_two_crawl_processes_dedupe_across_one_postgresql_catalog(tmp_path: Path, postgres_url: str) -> None:
    """Two crawls at once, without a shared frontier, each with its own list: one has the
    originals, the other exact copies (same bytes) and near copies (70% size, re-encoded) of
    them at other URLs. Each image ends up stored once, whichever process saw it first."""
    originals = {f"o{i}.jpg": encode(picture(500 + i, size=(320, 240)), "JPEG", quality=92) for i in range(12)}
    copies = {}
    for i in range(12):
        copies[f"x{i}.jpg"] = originals[f"o{i}.jpg"]
        copies[f"n{i}.jpg"] = encode(picture(500 + i, size=(224, 168)), "JPEG", quality=75)
    with ImageSite({**originals, **copies}, latency=0.02) as site:
        first = url_list(tmp_path / "first.txt", [site.url(name) for name in originals])
        second = url_list(tmp_path / "second.txt", [site.url(name) for name in copies])
        dataset = tmp_path / "data"
        procs = [start_crawl("urls", dataset, "-a", f"file={urls}", "-a", "label=things",
                             "-s", f"CATALOG_URL={postgres_url}", "-s", "CONCURRENT_REQUESTS=4")
                 for urls in (first, second)]
        results = [finish(proc) for proc in procs]
        for result in results:
            assert result.returncode == 0, result.stdout[-3000:]
    rows = catalog_rows(dataset, postgres_url)
    assert len(rows) == 36
    group = {row["id"]: row["url"].rsplit("/", 1)[1][1:].split(".")[0] for row in rows}
    stored = Counter(group[row["id"]] for row in rows if row["status"] == "stored")
    assert stored == Counter({str(i): 1 for i in range(12)}), stored  # one image per group
    duplicates = [row for row in rows if row["status"] == "duplicate"]
    assert len(duplicates) == 24
    paths = {row["path"] for row in rows if row["status"] == "stored"}
    assert all(row["duplicate_of"] in paths for row in duplicates)  # each names a stored image
    assert {p.relative_to(dataset).as_posix() for p in dataset.glob("things/*")} == paths
    check = dataset_command("crawler.dataset", "check", str(dataset), "--catalog-url", postgres_url)
    assert check.returncode == 0, check.stderr


def test_an_unreachable_catalog_url_is_a_one_line_error(tmp_path: Path) -> None:
    urls = url_list(tmp_path / "urls.txt", ["http://127.0.0.1:9/a.jpg"])
    result = subprocess.run(
        [*SCRAPY, "crawl", "urls", "-a", f"file={urls}", "-a", "label=x", "-s", f"DATASET_DIR={tmp_path / 'data'}",
         "-s", "CATALOG_URL=postgresql://crawler:hunter2@127.0.0.1:1/catalog"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "cannot open the catalog database postgresql://crawler:***@127.0.0.1:1/catalog" in errors[0]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_dataset_commands_with_a_bad_catalog_url_are_one_line_errors(tmp_path: Path) -> None:
    for command in (
        ("crawler.dataset", "check", str(tmp_path), "--catalog-url", "postgresql://u:hunter2@127.0.0.1:1/x"),
        ("crawler.dataset", "summary", str(tmp_path), "--catalog-url", "postgresql://127.0.0.1:1/x"),
        ("crawler.dataset", "export", str(tmp_path), "--catalog-url", "mysql://h/x"),
        ("crawler.review", "restore", str(tmp_path), "--catalog-url", "postgresql://127.0.0.1:1/x"),
    ):
        result = dataset_command(*command)
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, result.stderr)
        assert "hunter2" not in result.stderr


def test_the_review_page_works_on_a_postgresql_catalog(tmp_path: Path, postgres_url: str) -> None:
    import hashlib
    import json
    import re

    from uvicorn_thread import live_server, request

    from crawler.review import create_app, load_scores

    root = tmp_path / "data"
    paths = []
    with Catalog(root, url=postgres_url) as catalog:
        for i, label in enumerate(["cats", "cats", "dogs", "dogs"]):
            data = encode(picture(900 + i, size=(48, 48)), "PNG")
            path = f"{label}/{hashlib.sha256(data).hexdigest()}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
            catalog.insert({"label": label, "status": "stored", "path": path, "sha256": Path(path).stem,
                            "width": 48, "height": 48})
            paths.append(path)
        image_id = catalog.find_stored_path(paths[0])["id"]
    (tmp_path / "scores.csv").write_text("path,label,predicted,probability,loss\n"
                                         + "".join(f"{p},{p.split('/')[0]},x,0.5,{n}\n" for n, p in enumerate(paths)))
    app = create_app(root, load_scores(tmp_path / "scores.csv"), catalog_url=postgres_url)
    with live_server(app) as url:
        status, page = request(url)
        token = re.search(r'name="review-token" content="([^"]+)"', page).group(1)
        status, labels = request(f"{url}api/labels")
        assert status == 200 and [(x["label"], x["count"]) for x in json.loads(labels)["labels"]] == [("cats", 2), ("dogs", 2)]
        own = {"Origin": url.rstrip("/"), "X-Review-Token": token}
        status, _ = request(f"{url}api/decisions/{image_id}", "PUT", {**own, "Content-Type": "application/json"},
                         json.dumps({"action": "move", "label": "dogs"}).encode())
        assert status == 200
        status, answer = request(f"{url}api/apply", "POST", own, b"")
        assert status == 200, answer
    moved = f"dogs/{Path(paths[0]).name}"
    assert (root / moved).is_file() and not (root / paths[0]).exists()
    with Catalog(root, url=postgres_url) as catalog:
        assert (catalog.get(image_id)["label"], catalog.get(image_id)["path"]) == ("dogs", moved)
    check = dataset_command("crawler.dataset", "check", str(root), "--catalog-url", postgres_url)
    assert check.returncode == 0, check.stderr
