"""Progress lines, the end-of-crawl summary, and crawls that collect nothing reported as failures."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from crawler_testkit import make_item
from crawls import catalog_rows, gallery_command, run_crawl
from local_sites import LocalSite, forbidding_site
from scrapy.exceptions import CloseSpider

from crawler.progress import CrawlProgress
from demo.site import DemoSite

PROGRESS_LINE = re.compile(
    r"progress (\w+): stored (\d+), duplicate (\d+), rejected (\d+) \(([\d.]+) images/min; (\d+) pages\)"
)


@pytest.mark.timeout(240)
def test_progress_lines_and_summary_of_a_slow_crawl(tmp_path) -> None:
    with DemoSite(seed=0, per_label=36, latency=0.8) as site:
        label = site.labels[0]
        result = run_crawl(
            gallery_command(site.results_url(label), label, tmp_path / "dataset", "-s", "PROGRESS_INTERVAL=1")
        )
        expected = site.expected[label]
    assert result.returncode == 0, result.stdout[-3000:]
    lines = [m.groups() for m in PROGRESS_LINE.finditer(result.stdout)]
    assert len(lines) >= 2, result.stdout[-3000:]
    assert {g[0] for g in lines} == {label}
    stored_counts = [int(g[1]) for g in lines]
    assert stored_counts == sorted(stored_counts)  # counts only grow
    assert any(float(g[4]) > 0 for g in lines)
    assert "crawl summary (finish reason: finished;" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.strip().startswith(f"{label} |")]
    cells = [cell.strip() for cell in row.split("|")]
    # Every rejection reason of the site, with its count.
    rejected = expected["rejected"]
    assert cells[3] == f"{sum(rejected.values())} (" + ", ".join(
        f"{reason} {count}" for reason, count in sorted(rejected.items())
    ) + ")"
    assert int(cells[1]) + int(cells[2].split()[0]) == expected["stored"] + expected["duplicate"]
    # The table tells what the catalog holds.
    rows = catalog_rows(tmp_path / "dataset")
    assert int(cells[1]) == sum(r["status"] == "stored" for r in rows)
    duplicates = Counter(r["reason"] for r in rows if r["status"] == "duplicate")
    assert cells[2] == f"{duplicates.total()} (" + ", ".join(f"{k} {n}" for k, n in sorted(duplicates.items())) + ")"


@pytest.mark.timeout(120)
def test_robots_txt_refusal_is_reported_as_a_failure(tmp_path) -> None:
    with forbidding_site() as site:
        result = run_crawl(gallery_command(f"{site.url}/gallery", "pics", tmp_path / "dataset"))
        requested = list(site.requests)
    assert requested == ["/robots.txt"]
    out = result.stdout
    assert f"robots.txt disallows {site.url}/gallery: nothing crawled" in out
    assert "ERROR: robots.txt disallows" in out
    assert "'finish_reason': 'robots_denied'" in out
    assert "Spider closed (robots_denied)" in out
    assert result.returncode == 1
    assert "crawl failed: the spider closed with finish reason 'robots_denied'" in out


@pytest.mark.timeout(120)
def test_a_crawl_that_parses_no_page_is_a_failure(tmp_path) -> None:
    with LocalSite({"/robots.txt": ("text/plain", b"")}) as site:
        result = run_crawl(gallery_command(f"{site.url}/missing", "pics", tmp_path / "dataset"))
    assert "Spider closed (nothing_crawled)" in result.stdout
    assert "ERROR: no page was crawled" in result.stdout
    assert result.returncode == 1


def test_summary_counts_reasons_and_lists_label_conflicts(make_crawler, build) -> None:
    crawler = make_crawler(PROGRESS_INTERVAL=0)
    progress = build(CrawlProgress, crawler)
    progress.item_scraped(make_item("cats", status="stored"))
    progress.item_scraped(make_item("cats", status="stored"))
    progress.item_scraped(make_item("cats", status="stored", replaces=[("cats/small.jpg", 2)]))
    for reason in ("exact", "near", "near"):
        progress.item_dropped(make_item("cats", status="duplicate", reason=reason), Exception(reason))
    conflict = make_item(
        "dogs", url="http://127.0.0.1/dog.jpg", status="duplicate", reason="label_conflict",
        duplicate_of="cats/abc.jpg",
    )
    progress.item_dropped(conflict, Exception("label_conflict"))
    progress.item_dropped(make_item("dogs", status="rejected", reason="too_small"), Exception("too_small"))
    progress.item_dropped(make_item("dogs"), Exception("max_images"))  # never judged
    progress.pages = 3
    crawler.stats.set_value("verify/resized", 2)
    text = progress.summary("finished")
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in text.splitlines() if "|" in line}
    assert rows["cats"][1:] == ["2", "4 (exact 1, near 3)", "0"]
    assert rows["dogs"][1:] == ["0", "1 (label_conflict 1)", "1 (too_small 1)"]
    assert "label conflict (dogs): http://127.0.0.1/dog.jpg is the same picture as cats/abc.jpg" in text
    assert "1 image(s) found past max_images" in text
    assert "2 image(s) larger than VERIFY_MAX_SIDE resized" in text
    with pytest.raises(CloseSpider):
        CrawlProgress(crawler, 0).spider_idle()
    progress.spider_idle()  # pages were parsed: no objection to closing
