"""Whole `scrapy crawl gallery` runs, as a user types them, against the demo site on 127.0.0.1."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from crawls import REPO, SCRAPY, catalog_rows, gallery_command

from demo.site import DemoSite


def crawl_command(site: DemoSite, label: str, dataset: Path, *extra: str) -> list[str]:
    return gallery_command(site.results_url(label), label, dataset, *extra)


def run_crawls(commands: list[list[str]], timeout: float = 150) -> list[subprocess.CompletedProcess]:
    """Start every crawl at once (one process each, one shared dataset) and wait for all."""
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    results = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, _ = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out))
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:]
        assert "Traceback" not in result.stdout, result.stdout[-3000:]
    return results


@pytest.fixture(scope="module")
def site():
    with DemoSite(seed=0) as running:
        yield running


@pytest.fixture(scope="module")
def crawled(site, tmp_path_factory):
    """Every label crawled at once into one dataset."""
    dataset = tmp_path_factory.mktemp("crawl") / "dataset"
    run_crawls([crawl_command(site, label, dataset) for label in site.labels])
    return dataset


@pytest.mark.timeout(240)
def test_counts_per_label_match_the_site(site, crawled) -> None:
    rows = catalog_rows(crawled)
    assert rows, "no catalog rows"
    for label in site.labels:
        expected = site.expected[label]
        mine = [r for r in rows if r["label"] == label]
        assert sum(r["status"] == "stored" for r in mine) == expected["stored"], label
        assert sum(r["status"] == "duplicate" for r in mine) == expected["duplicate"], label
        rejected = Counter(r["reason"] for r in mine if r["status"] == "rejected")
        assert rejected == Counter(expected["rejected"]), label


@pytest.mark.timeout(240)
def test_rejections_and_duplicates_carry_their_evidence(crawled) -> None:
    rows = catalog_rows(crawled)
    stored_paths = {r["path"] for r in rows if r["status"] == "stored"}
    for row in rows:
        assert row["url"] and row["page_url"] and row["spider"] == "gallery" and row["created_at"]
        if row["status"] == "duplicate":
            assert row["reason"] in ("exact", "near")
            assert row["duplicate_of"] in stored_paths
            assert 0 <= row["hash_distance"] <= 6
            assert row["duplicate_of"].split("/")[0] == row["label"]
        if row["status"] == "rejected":
            assert row["path"] is None
            if row["reason"] == "http_404":
                assert row["url"].endswith(".jpg")
            if row["reason"] in ("not_an_image", "truncated", "too_small"):
                assert row["sha256"] and row["bytes"] > 0


@pytest.mark.timeout(240)
def test_files_on_disk_match_the_catalog(site, crawled) -> None:
    rows = catalog_rows(crawled)
    stored = {r["path"]: r for r in rows if r["status"] == "stored"}
    on_disk = {
        p.relative_to(crawled).as_posix()
        for p in crawled.rglob("*")
        if p.is_file() and not p.relative_to(crawled).parts[0].startswith(".")
        and p.parent != crawled
    }
    assert on_disk == set(stored)
    for path, row in stored.items():
        data = (crawled / path).read_bytes()
        label, name = path.split("/")
        assert label == row["label"] and label in site.labels
        assert name == f"{hashlib.sha256(data).hexdigest()}.{name.rsplit('.', 1)[1]}"
        assert row["phash"] and len(row["phash"]) == 16
        assert row["width"] >= 32 and row["height"] >= 32
    assert list((crawled / ".tmp").iterdir()) == []
    top_files = {p.name for p in crawled.iterdir() if p.is_file()}
    assert {"catalog.csv", "catalog.sqlite"} <= top_files
    assert top_files <= {"catalog.csv", "catalog.sqlite", "catalog.sqlite-shm", "catalog.sqlite-wal"}
    checked = subprocess.run(
        [sys.executable, "-m", "crawler.dataset", "check", str(crawled)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    csv_lines = (crawled / "catalog.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(csv_lines) == len(rows) + 1


@pytest.mark.timeout(240)
def test_a_second_crawl_stores_nothing_new(site, crawled, tmp_path) -> None:
    label = site.labels[0]
    before = catalog_rows(crawled)
    run_crawls([crawl_command(site, label, crawled)])
    new = catalog_rows(crawled)[len(before):]
    assert new, "the second crawl recorded nothing"
    assert not [r for r in new if r["status"] == "stored"]
    duplicates = [r for r in new if r["status"] == "duplicate"]
    assert len(duplicates) == site.expected[label]["stored"] + site.expected[label]["duplicate"]
    assert Counter(r["reason"] for r in new if r["status"] == "rejected") == Counter(site.expected[label]["rejected"])


@pytest.mark.timeout(240)
def test_max_images_counts_what_was_stored(site, tmp_path) -> None:
    dataset = tmp_path / "dataset"
    label = site.labels[1]
    (result,) = run_crawls([crawl_command(site, label, dataset, "-a", "max_images=5")])
    rows = catalog_rows(dataset)
    assert sum(r["status"] == "stored" for r in rows) == 5
    assert len(list((dataset / label).iterdir())) == 5
    assert "max_images" in result.stdout


@pytest.mark.timeout(60)
def test_missing_label_or_dataset_dir_fails_clearly(site, tmp_path) -> None:
    url = site.results_url(site.labels[0])
    no_label = subprocess.run(
        [*SCRAPY, "crawl", "gallery", "-a", f"start_urls={url}", "-s", f"DATASET_DIR={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert no_label.returncode != 0 and "needs a label" in no_label.stdout + no_label.stderr
    no_dir = subprocess.run(
        [*SCRAPY, "crawl", "gallery", "-a", "label=x", "-a", f"start_urls={url}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert no_dir.returncode != 0 and "DATASET_DIR" in no_dir.stdout + no_dir.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_leaves_a_consistent_dataset(site, tmp_path) -> None:
    """Kill crawls mid-flight (several times, two labels at once), then finish normally:
    `check` finds the dataset consistent and no half-written file sits under a label."""
    import random
    import signal
    import time

    dataset = tmp_path / "dataset"
    rng = random.Random(0)
    labels = site.labels[:2]
    for _ in range(4):
        procs = [
            subprocess.Popen(crawl_command(site, label, dataset), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for label in labels
        ]
        time.sleep(rng.uniform(1.0, 3.0))
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    run_crawls([crawl_command(site, label, dataset) for label in labels])
    checked = subprocess.run(
        [sys.executable, "-m", "crawler.dataset", "check", str(dataset)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    rows = catalog_rows(dataset)
    for label in labels:
        stored = [r for r in rows if r["label"] == label and r["status"] == "stored"]
        assert len(stored) == site.expected[label]["stored"]
