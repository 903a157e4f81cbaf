"""`python -m crawler.dataset summary`: a crawled dataset's counts, sizes, sources, rejections and
label conflicts, its contact sheet; the folder fallback on the real hymenoptera photos. Also the
crawl's one log line per dropped item."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from crawls import REPO, catalog_rows, gallery_command, run_crawl
from PIL import Image

from crawler.summary import contact_sheet, quantiles, summarize

from demo.site import DemoSite

HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera_data"


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    """Two labels of the demo site crawled into one dataset, then one label's page crawled again
    under a third label: every picture of it is a label conflict. ``(dataset, logs, site)``."""
    dataset = tmp_path_factory.mktemp("summary") / "dataset"
    logs = []
    with DemoSite(seed=3, per_label=8) as site:
        first, second = site.labels[:2]
        for label, url in ((first, site.results_url(first)), (second, site.results_url(second)),
                           ("mixed", site.results_url(first))):
            result = run_crawl(gallery_command(url, label, dataset, "-s", "PIPELINE_PROCESSES=0"))
            assert result.returncode == 0, result.stdout[-3000:]
            logs.append(result.stdout)
        yield dataset, logs, site


def run_summary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crawler.dataset", "summary", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(300)
def test_summary_of_a_crawled_dataset(crawled, tmp_path) -> None:
    dataset, _, site = crawled
    rows = catalog_rows(dataset)
    stored = Counter(r["label"] for r in rows if r["status"] == "stored")
    rejected = Counter(r["reason"] for r in rows if r["status"] == "rejected")
    conflicts = [r for r in rows if r["reason"] == "label_conflict"]
    assert conflicts and rejected  # the fixture made both

    summary = summarize(dataset)
    assert summary.source == "catalog"
    assert summary.stored == stored
    assert summary.rejections == rejected
    assert len(summary.conflicts) == len(conflicts)
    data_uris = sum(r["status"] == "stored" and r["url"].startswith("data:") for r in rows)
    assert summary.domains == Counter({"127.0.0.1": sum(stored.values()) - data_uris, "(data: URI)": data_uris}) - Counter()
    assert sum(summary.formats.values()) == sum(stored.values())

    result = run_summary(str(dataset), "--contact-sheet", str(tmp_path / "sheet.png"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label, count in stored.items():
        assert any(line.split()[:2] == [label, str(count)] for line in out.splitlines()), out
    for reason, count in rejected.items():
        assert f"{reason} {count} (" in out, out
    assert f"label conflicts: {len(conflicts)}" in out
    assert f"{conflicts[0]['url']} is the same picture as {conflicts[0]['duplicate_of']}" in out
    assert "sources: 127.0.0.1" in out and "licences: (none recorded)" in out
    widths = sorted(r["width"] for r in rows if r["status"] == "stored")
    assert f"width px: min {widths[0]}," in out and f"max {widths[-1]}" in out
    assert f"contact sheet: {tmp_path / 'sheet.png'}" in out


@pytest.mark.timeout(300)
def test_contact_sheet_has_a_row_per_label_and_is_deterministic(crawled, tmp_path) -> None:
    dataset, _, _ = crawled
    summary = summarize(dataset)
    first = contact_sheet(summary, tmp_path / "a.png", per_label=4, thumb=64)
    again = contact_sheet(summarize(dataset), tmp_path / "b.png", per_label=4, thumb=64)
    assert first.read_bytes() == again.read_bytes()
    with Image.open(first) as sheet:
        assert sheet.height == len(summary.images) * (64 + 4) + 4
        # Each row's first cell holds a picture, not the blank background.
        pixels = sheet.convert("RGB")
        for row in range(len(summary.images)):
            top = 4 + row * 68
            cell = pixels.crop((sheet.width - 4 * 68, top, sheet.width - 3 * 68 - 4, top + 64))
            low, high = cell.convert("L").getextrema()
            assert high - low > 40
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.timeout(300)
def test_a_dropped_item_is_one_line_with_its_url_and_reason(crawled) -> None:
    _, logs, site = crawled
    dropped = [line for line in logs[0].splitlines() if "Dropped" in line]
    label = site.labels[0]
    reasons = {line.rsplit(": ", 1)[1] for line in dropped}
    assert {"truncated", "not_an_image", "http_404"} <= reasons, dropped
    for line in dropped:
        assert f"Dropped {label} http://127.0.0.1:" in line, line
    assert "'hashes'" not in logs[0] and "'sha256'" not in logs[0]  # no item dumps


def test_quantiles_are_nearest_rank() -> None:
    assert quantiles([]) == []
    assert quantiles(list(range(1, 11)), (0.0, 0.25, 0.5, 1.0)) == [1, 3, 5, 10]


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="no ../shared/data/hymenoptera_data")
def test_summary_of_split_folders_without_a_catalog(tmp_path) -> None:
    result = run_summary(str(HYMENOPTERA), "--contact-sheet", str(tmp_path / "sheet.png"), "--per-label", "3")
    assert result.returncode == 0, result.stderr
    counts = {label: sum(1 for p in (HYMENOPTERA / label).iterdir() if p.is_file())
              for label in ("train/ants", "train/bees", "val/ants", "val/bees")}
    for label, count in counts.items():
        assert any(line.split()[:2] == [label, str(count)] for line in result.stdout.splitlines()), result.stdout
    assert "from the folders" in result.stdout and "JPEG" in result.stdout
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.height == 4 * (96 + 4) + 4
