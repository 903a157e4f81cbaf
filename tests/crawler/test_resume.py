"""A crawl killed with SIGKILL and run again with the same JOBDIR ends with the same dataset as
an uninterrupted crawl: the same stored images per label, nothing lost, nothing twice."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from crawls import REPO, catalog_rows, gallery_command, run_crawl, stored_paths

from demo.site import DemoSite

LABEL = "circle"


@pytest.fixture(scope="module")
def site():
    # Latency stretches the crawl over several seconds, so there is a "mid-crawl" to kill in.
    with DemoSite(seed=0, latency=0.5) as running:
        yield running


@pytest.fixture(scope="module")
def reference(site, tmp_path_factory) -> set[str]:
    """The stored images of one uninterrupted crawl (no JOBDIR)."""
    dataset = tmp_path_factory.mktemp("reference") / "dataset"
    result = run_crawl(gallery_command(site.results_url(LABEL), LABEL, dataset))
    assert result.returncode == 0, result.stdout[-3000:]
    paths = stored_paths(dataset)
    assert len(paths) == site.expected[LABEL]["stored"]
    return paths


def kill_when_stored(command: list[str], dataset: Path, threshold: int, deadline_s: float = 150) -> bool:
    """Run ``command`` and SIGKILL it once the catalog holds ``threshold`` stored images.
    Returns whether it was killed (``False``: it finished first)."""
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + deadline_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if len(stored_paths(dataset)) >= threshold:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.1)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def crawl_with_kills(site, tmp_path: Path, thresholds: list[int]) -> tuple[Path, subprocess.CompletedProcess]:
    dataset, jobdir = tmp_path / "dataset", tmp_path / "job"
    command = gallery_command(site.results_url(LABEL), LABEL, dataset, "-s", f"JOBDIR={jobdir}")
    killed = [kill_when_stored(command, dataset, threshold) for threshold in thresholds]
    assert any(killed), "every crawl finished before its kill moment"
    result = run_crawl(command)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    assert "resuming job" in result.stdout
    return dataset, result


def assert_same_dataset(dataset: Path, reference: set[str]) -> None:
    rows = catalog_rows(dataset)
    stored = [r["path"] for r in rows if r["status"] == "stored"]
    assert len(stored) == len(set(stored))  # nothing stored twice
    assert set(stored) == reference  # nothing lost
    on_disk = {p.relative_to(dataset).as_posix() for p in (dataset / LABEL).iterdir()}
    assert on_disk == reference
    # The resumed run skipped what the killed runs had judged: one row per image URL.
    # (data: URIs are catalogued truncated, so they are judged again, as exact duplicates.)
    urls = Counter(r["url"] for r in rows if not r["url"].startswith("data:"))
    assert max(urls.values()) == 1, [u for u, n in urls.items() if n > 1]
    checked = subprocess.run(
        [sys.executable, "-m", "crawler.dataset", "check", str(dataset)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.timeout(300)
def test_sigkill_then_resume_gives_the_uninterrupted_dataset(site, reference, tmp_path) -> None:
    dataset, _ = crawl_with_kills(site, tmp_path, [20])
    assert_same_dataset(dataset, reference)


@pytest.mark.timeout(300)
def test_a_queue_file_a_kill_left_without_its_header_does_not_stop_the_resume(site, reference, tmp_path) -> None:
    """A SIGKILL just after Scrapy created a disk-queue file leaves it empty (no size header),
    and Scrapy's own start then fails reading it. Made deterministic: a graceful stop persists
    the queue (``active.json`` names its files), then a run "killed" after truncating them
    leaves its running mark. The next start drops the queue and resumes from the catalog; a
    graceful stop removes the mark."""
    dataset, jobdir = tmp_path / "dataset", tmp_path / "job"
    command = gallery_command(site.results_url(LABEL), LABEL, dataset, "-s", f"JOBDIR={jobdir}")
    first = run_crawl([*command, "-s", "CLOSESPIDER_ITEMCOUNT=3"])
    assert first.returncode == 0, first.stdout[-3000:]
    assert not (jobdir / "crawl-running").exists()
    files = [p for p in (jobdir / "requests.queue").rglob("*") if p.is_file() and p.name != "active.json"]
    assert files, "the graceful stop persisted no disk-queue file"
    for path in files:  # as if a resumed run was killed just after creating each
        path.write_bytes(b"")
    (jobdir / "crawl-running").write_text("0\n")
    result = run_crawl(command)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    assert "request queue is discarded" in result.stdout
    assert not (jobdir / "crawl-running").exists()
    assert_same_dataset(dataset, reference)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moments_then_resume(site, reference, tmp_path, seed) -> None:
    rng = random.Random(seed)
    # One to two kills, each once a random share of the images is stored.
    thresholds = sorted(rng.randint(1, 55) for _ in range(rng.randint(1, 2)))
    dataset, _ = crawl_with_kills(site, tmp_path, thresholds)
    assert_same_dataset(dataset, reference)


@pytest.mark.timeout(300)
def test_rerunning_a_finished_job_adds_nothing(site, reference, tmp_path) -> None:
    dataset, jobdir = tmp_path / "dataset", tmp_path / "job"
    command = gallery_command(site.results_url(LABEL), LABEL, dataset, "-s", f"JOBDIR={jobdir}")
    first = run_crawl(command)
    assert first.returncode == 0, first.stdout[-3000:]
    rows_before = len(catalog_rows(dataset))
    again = run_crawl(command)
    assert again.returncode == 0, again.stdout[-3000:]
    assert stored_paths(dataset) == reference
    new = catalog_rows(dataset)[rows_before:]
    # Only the data: URIs are judged again; every page was walked again to find that out.
    assert all(r["url"].startswith("data:") and r["status"] == "duplicate" for r in new)
    assert "page 5:" in again.stdout
