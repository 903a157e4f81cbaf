"""``python -m imageclf``: category names to compared models, run as a user runs it.

Real crawls (``scrapy crawl gallery`` subprocesses) of the demo site on 127.0.0.1, real SQLite,
real training steps on 32 px images."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from demo.site import DemoSite
from imageclf.cli import parse_labels
from imageclf.crawls import crawl_command
from test_end_to_end import assert_dataset_matches_catalog, catalog_counts


def imageclf(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imageclf", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def has_summary_command(repo_root: Path) -> bool:
    proc = subprocess.run([sys.executable, "-m", "crawler.dataset", "summary", "--help"], cwd=repo_root, capture_output=True)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def slow_site():
    # Responses wait 0.3 s, so each crawl lasts a few progress intervals of 0.5 s.
    with DemoSite(per_label=8, latency=0.3) as site:
        yield site


@pytest.mark.slow
def test_category_names_to_a_comparison(repo_root, tmp_path, slow_site):
    out = tmp_path / "out"
    proc = imageclf(
        repo_root, "gallery", *slow_site.labels, "--models", "baseline_cnn", "--out", str(out),
        "-a", f"start_urls={slow_site.url}/search/{{label}}",
        "-s", "PROGRESS_INTERVAL=0.5", "-s", "AUTOTHROTTLE_ENABLED=False",
        "--", "data.image_size=32", "debug=fdr",
    )  # fmt: skip
    console = proc.stdout
    assert proc.returncode == 0, console[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in console + proc.stderr

    dataset = out / "dataset"
    counts = catalog_counts(dataset)
    for label, expected in slow_site.expected.items():
        assert counts[(label, "stored")] == expected["stored"] == 8
        rejected = sum(expected["rejected"].values())
        # the crawl's own line per label: live counts while it runs, exact counts at its end
        assert re.search(rf"crawl {label} +stored \d+, duplicate \d+, rejected \d+ +\(\d+ s\)", console), label
        assert re.search(rf"crawl {label} +done in \d+ s: stored 8, duplicate 1, rejected {rejected}$", console, re.M)
        assert (out / "logs" / f"crawl-{label}.log").read_text().count("progress ") >= 1
    assert_dataset_matches_catalog(dataset)

    if has_summary_command(repo_root):
        assert f"contact sheet: {out / 'contact-sheet.png'}" in console
        assert (out / "contact-sheet.png").stat().st_size > 0
    else:
        assert "skipped: this version of crawler.dataset has no `summary` subcommand" in console

    with (out / "runs" / "comparison.csv").open() as fh:
        assert [row["model"] for row in csv.DictReader(fh)] == ["baseline_cnn"]
    table = console[console.index("Model comparison") :]  # printed once, as the sweep ends
    assert "| baseline_cnn |" in table and console.count("| baseline_cnn |") == 1
    closing = console[console.index("== comparison") :]
    assert str(out / "runs" / "comparison.md") in closing and f"runs:    {out / 'runs'}" in closing
    assert "Trainable params" in console  # the trainer's stdout reached the console
    train_log = (out / "logs" / "train.log").read_text()
    assert "Trainable params" in train_log and "Seed set to" in train_log  # stdout and stderr logged


def test_a_failed_crawl_is_named_and_stops_the_job(repo_root, tmp_path, slow_site):
    out = (tmp_path / "out").resolve()
    # No results page for "unicorn": its crawl parses no page and exits 1. Run from another
    # folder than the repository's, with a relative --out.
    proc = imageclf(
        tmp_path, "gallery", slow_site.labels[0], "unicorn", "--out", "out",
        "-a", f"start_urls={slow_site.url}/search/{{label}}", "-s", "AUTOTHROTTLE_ENABLED=False",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = out / "logs" / "crawl-unicorn.log"
    assert f"error: the crawl of 'unicorn' failed (exit 1; its log: {log})" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(rf"crawl unicorn +FAILED \(exit 1\) after \d+ s: see {re.escape(str(log))}", proc.stdout)
    assert "== 3/3" not in proc.stdout and not (out / "runs").exists()
    assert catalog_counts(out / "dataset")[(slow_site.labels[0], "stored")] == 8  # the other label's crawl is kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gallery"], "error: no labels given ("),
        (["nosuch", "ants"], "error: unknown spider 'nosuch' (choose one of: bing, duckduckgo, gallery, openverse, urls, wikimedia)"),
        (["gallery", "ants", "--models", "baseline_cnn,resnet9"], "error: unknown model 'resnet9' (choose from: alexnet,"),
        (["gallery", "ants", "--max-images", "lots"], "error: argument --max-images: must be a positive integer, got 'lots'"),
        (["gallery", "ants", "-a", "label=bees"], "error: -a label is set by the driver (give labels as LABEL or LABEL=QUERY)"),
        (["gallery", "ants", "-a", "start_urls"], "error: -a 'start_urls' is not KEY=VALUE ("),
        (["gallery", "ants", "-s", "DATASET_DIR=x"], "error: -s DATASET_DIR is set by the driver (use --out DIR"),
        (["gallery", "ants", "ants"], "error: label 'ants' given twice ("),
        (["gallery", "ants", "--", "data.imagesize=32"], "error: the trainer rejects the overrides after --: Could not override 'data.imagesize'."),
    ],
)  # fmt: skip
def test_user_mistakes_get_one_line_and_exit_2(tmp_path, repo_root, args, message):
    proc = imageclf(tmp_path, *args)  # from another folder than the repository's
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "imageclf-output").exists()  # nothing was started


def test_runs_already_there_is_a_user_mistake(tmp_path):
    (tmp_path / "out" / "runs" / "0_baseline_cnn").mkdir(parents=True)
    proc = imageclf(tmp_path, "gallery", "ants", "--out", "out", "-a", "start_urls=http://127.0.0.1:9/{label}")
    assert proc.returncode == 2
    assert proc.stderr == f"error: {tmp_path / 'out' / 'runs'} already holds runs (choose another --out, or move that folder away)\n"


def test_labels_and_per_label_spider_arguments():
    assert parse_labels(["ants=formica ant", "bees"]) == {"ants": "formica ant", "bees": "bees"}
    cmd = crawl_command(
        "gallery", "red things", "red paint", ["start_urls=http://site/search/{label}", "note={query}!{x}"],
        ["LOG_LEVEL=INFO"], Path("/data"),
    )  # fmt: skip
    assert cmd[cmd.index("crawl") :] == [
        "crawl", "gallery", "-a", "label=red things", "-a", "query=red paint",
        "-a", "start_urls=http://site/search/red things", "-a", "note=red paint!{x}",
        "-s", "LOG_LEVEL=INFO", "-s", "DATASET_DIR=/data",
    ]  # fmt: skip
