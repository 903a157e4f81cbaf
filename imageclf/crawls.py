"""One ``scrapy crawl`` per label, all at once into one dataset, with per-label progress.

The crawls log a progress line per label every ``PROGRESS_INTERVAL`` seconds (the crawler's
``CrawlProgress`` extension: ``progress <label>: stored N, duplicate N, rejected N (...)``);
each one is forwarded to the console as it arrives. When a crawl ends, its label's counts are
read from the dataset's catalog (the documented contract, docs/dataset.md), so the last line per
label is exact even when the crawl was quicker than one progress interval.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from imageclf.processes import Child, last_error, python_command, scrapy_env, shown

__all__ = ["CrawlResult", "crawl_labels", "label_counts"]

PROGRESS_LINE = re.compile(r"progress (?P<label>.+?): stored (?P<stored>\d+), duplicate (?P<duplicate>\d+), rejected (?P<rejected>\d+)")


@dataclass
class CrawlResult:
    """How one label's crawl ended: its exit status (0 = success) and its log file."""

    label: str
    returncode: int
    log: Path
    seconds: float
    error: str | None = None


class Console:
    """Lines from several reader threads, one whole line at a time, labels aligned."""

    def __init__(self, labels: list[str]) -> None:
        self.width = max(len(label) for label in labels)
        self.lock = threading.Lock()

    def line(self, label: str, text: str) -> None:
        with self.lock:
            print(f"  crawl {label:<{self.width}}  {text}", flush=True)  # noqa: T201


def crawl_command(spider: str, label: str, query: str, spider_args: list[str], settings: list[str], dataset: Path) -> list[str]:
    """``scrapy crawl <spider> -a label=<label> -a query=<query> ... -s DATASET_DIR=<dataset>``.

    ``{label}`` and ``{query}`` in the values of ``spider_args`` are replaced by this crawl's
    label and query (``-a start_urls=https://example.org/search/{label}``).
    """
    cmd = python_command("scrapy", "crawl", spider, "-a", f"label={label}", "-a", f"query={query}")
    for arg in spider_args:
        cmd += ["-a", arg.replace("{label}", label).replace("{query}", query)]
    for setting in [*settings, f"DATASET_DIR={dataset}"]:
        cmd += ["-s", setting]
    return cmd


def label_counts(dataset: Path, label: str) -> dict[str, int]:
    """Catalog rows of ``label`` by status (``stored``, ``duplicate``, ``rejected``); zeros when
    the catalog is missing or holds none."""
    counts = {"stored": 0, "duplicate": 0, "rejected": 0}
    path = dataset / "catalog.sqlite"
    if not path.exists():
        return counts
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        for status, n in db.execute("SELECT status, COUNT(*) FROM images WHERE label = ? GROUP BY status", (label,)):
            counts[status] = n
    return counts


def crawl_labels(
    spider: str,
    labels: dict[str, str],
    spider_args: list[str],
    settings: list[str],
    dataset: Path,
    logs: Path,
) -> list[CrawlResult]:
    """Crawl every label (``{label: query}``) at once; return one result per label, in order.

    Each crawl's output goes to ``logs/crawl-<label>.log``; progress lines reach the console.
    Ctrl-C stops every crawl (each resumes where it left off when run again into the dataset).
    """
    console = Console(list(labels))
    started = time.monotonic()
    children: dict[str, Child] = {}

    def forward(label: str):
        def on_line(line: str) -> None:
            match = PROGRESS_LINE.search(line)
            if match:
                console.line(
                    match["label"],
                    f"stored {match['stored']}, duplicate {match['duplicate']}, rejected {match['rejected']}"
                    f"  ({time.monotonic() - started:.0f} s)",
                )

        return on_line

    try:
        for label, query in labels.items():
            cmd = crawl_command(spider, label, query, spider_args, settings, dataset)
            log = logs / f"crawl-{_file_safe(label)}.log"
            print(f"  $ {shown(cmd)}", flush=True)  # noqa: T201
            # Scrapy logs to stderr; one merged stream keeps the log file in order.
            children[label] = Child(cmd, log, on_stdout=forward(label), merge=True, env=scrapy_env())
        results = []
        pending = dict(children)
        while pending:
            for label, child in list(pending.items()):
                if child.process.poll() is None:
                    continue
                code = child.wait()
                del pending[label]
                seconds = time.monotonic() - started
                if code == 0:
                    c = label_counts(dataset, label)
                    console.line(
                        label,
                        f"done in {seconds:.0f} s: stored {c['stored']}, duplicate {c['duplicate']}, rejected {c['rejected']}",
                    )
                    results.append(CrawlResult(label, code, child.log, seconds))
                else:
                    error = last_error(child.log)
                    console.line(label, f"FAILED (exit {code}) after {seconds:.0f} s: see {child.log}")
                    if error:
                        console.line(label, f"  {error}")
                    results.append(CrawlResult(label, code, child.log, seconds, error))
            time.sleep(0.2)
    finally:
        for child in children.values():
            child.stop()
    order = list(labels)
    return sorted(results, key=lambda r: order.index(r.label))


def _file_safe(label: str) -> str:
    return re.sub(r"[^\w.-]+", "_", label) or "label"
