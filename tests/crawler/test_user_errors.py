"""A user's mistake ends a command with one line, ``error: <what> (<how to fix>)``, on stderr,
exit status 2 and no traceback: ``scrapy crawl``, ``python -m crawler.dataset`` and
``python -m crawler.review`` run as subprocesses, as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from crawls import REPO, SCRAPY
from http_testkit import HttpServer

HERE = Path(__file__).resolve().parent


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=environ)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The ``error:`` line of ``result`` after checking status 2, no traceback and ``fragments``."""
    everything = result.stdout + result.stderr
    assert result.returncode == 2, everything[-3000:]
    assert "Traceback" not in everything, everything[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    line = errors[0]
    assert line.endswith(")") and " (" in line, line  # what is wrong (how to fix it)
    for fragment in fragments:
        assert fragment in line, line
    return line


class CountingServer(HttpServer):
    """Answers every GET with 404 and counts the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def on_get(self, request) -> None:
        self.hits.append(request.path)
        request.reply(404, "text/plain", b"no")


@pytest.fixture()
def server():
    with CountingServer() as running:
        yield running


def crawl(*args: str) -> list[str]:
    return [*SCRAPY, "crawl", *args, "-s", "AUTOTHROTTLE_ENABLED=0"]


def test_missing_label(tmp_path, server) -> None:
    result = run(crawl("gallery", "-a", f"start_urls={server.base}/", "-s", f"DATASET_DIR={tmp_path / 'd'}"))
    assert_one_line_error(result, "needs a label", "-a label=")
    assert server.hits == []


def test_missing_dataset_dir(server) -> None:
    result = run(crawl("gallery", "-a", "label=ants", "-a", f"start_urls={server.base}/"))
    assert_one_line_error(result, "DATASET_DIR is not set", "-s DATASET_DIR=")
    assert server.hits == []


def test_urls_spider_with_a_missing_file(tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    result = run(crawl("urls", "-a", "label=ants", "-a", f"file={missing}", "-s", f"DATASET_DIR={tmp_path / 'd'}"))
    assert_one_line_error(result, f"cannot read -a file={missing}", "No such file")


def test_urls_spider_with_an_unreadable_file(tmp_path) -> None:
    folder = tmp_path / "urls"  # a folder: unreadable as a file, even for root
    folder.mkdir()
    result = run(crawl("urls", "-a", "label=ants", "-a", f"file={folder}", "-s", f"DATASET_DIR={tmp_path / 'd'}"))
    assert_one_line_error(result, f"cannot read -a file={folder}", "Is a directory")
    binary = tmp_path / "urls.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    result = run(crawl("urls", "-a", "label=ants", "-a", f"file={binary}", "-s", f"DATASET_DIR={tmp_path / 'd'}"))
    assert_one_line_error(result, "a text file of URLs")


def test_urls_spider_without_a_file(tmp_path) -> None:
    result = run(crawl("urls", "-a", "label=ants", "-s", f"DATASET_DIR={tmp_path / 'd'}"))
    assert_one_line_error(result, "needs a URL list", "-a file=")


@pytest.mark.parametrize(
    ("spider", "args", "valid"),
    [
        ("gallery", ["start_urls={base}/"], ["start_urls", "max_pages", "next_selector", "render"]),
        ("urls", ["file={file}"], ["file"]),
        ("wikimedia", ["query=ant"], ["max_pages", "width"]),
    ],
)
def test_a_misspelt_spider_argument_fails_before_any_request(tmp_path, server, spider, args, valid) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{server.base}/a.jpg\n")
    dataset = tmp_path / "dataset"
    filled = [arg.format(base=server.base, file=urls) for arg in args]
    result = run(crawl(
        spider, "-a", "label=ants", "-a", "max_image=3", *[x for arg in filled for x in ("-a", arg)],
        "-s", f"DATASET_DIR={dataset}", "-s", f"WIKIMEDIA_API_URL={server.base}/w/api.php",
    ))
    line = assert_one_line_error(result, "no argument -a max_image", "did you mean -a max_images?")
    for name in ["label", "query", "max_images", *valid]:
        assert name in line.split("valid: ", 1)[1], line
    assert server.hits == []  # not even robots.txt
    assert not (dataset / "catalog.sqlite").exists()


def test_a_bad_spider_argument_value(tmp_path, server) -> None:
    result = run(crawl(
        "gallery", "-a", "label=ants", "-a", f"start_urls={server.base}/", "-a", "max_images=many",
        "-s", f"DATASET_DIR={tmp_path / 'd'}",
    ))
    assert_one_line_error(result, "-a max_images must be a positive integer, got 'many'")
    assert server.hits == []


def test_a_components_bad_setting_is_one_line_and_debug_shows_the_traceback(tmp_path, server) -> None:
    command = crawl(
        "gallery", "-a", "label=ants", "-a", f"start_urls={server.base}/", "-s", f"DATASET_DIR={tmp_path / 'd'}",
        "-s", "ITEM_PIPELINES=" + json.dumps({"stand_in_components.PickyPipeline": 100}), "-s", "PICKY_SIDE=abc",
    )
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    result = run(command, **env)
    assert_one_line_error(result, "PICKY_SIDE must be a whole number of pixels, got 'abc'", "-s PICKY_SIDE=64")
    assert server.hits == []

    debug = run([*command, "-s", "LOG_LEVEL=DEBUG"], **env)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "error: PICKY_SIDE must be" in debug.stderr


def test_a_bug_keeps_its_traceback_and_exit_status_1(tmp_path, server) -> None:
    # Not a user's mistake: a component that cannot be imported.
    result = run(crawl(
        "gallery", "-a", "label=ants", "-a", f"start_urls={server.base}/", "-s", f"DATASET_DIR={tmp_path / 'd'}",
        "-s", "ITEM_PIPELINES=" + json.dumps({"no_such_module.Pipeline": 100}),
    ))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "no_such_module" in result.stderr
    assert "error: " not in result.stderr


@pytest.mark.parametrize("command", ["check", "export", "rehash", "summary"])
def test_dataset_commands_on_a_missing_folder(tmp_path, command) -> None:
    missing = tmp_path / "nowhere"
    result = run([sys.executable, "-m", "crawler.dataset", command, str(missing)])
    assert_one_line_error(result, f"no dataset folder {missing}")


@pytest.mark.parametrize("command", ["export", "rehash"])
def test_dataset_commands_that_need_a_catalog(tmp_path, command) -> None:
    (tmp_path / "ants").mkdir()
    result = run([sys.executable, "-m", "crawler.dataset", command, str(tmp_path)])
    assert_one_line_error(result, f"{tmp_path} has no catalog.sqlite")


def test_summary_of_a_folder_that_is_not_a_dataset(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = run([sys.executable, "-m", "crawler.dataset", "summary", str(tmp_path)])
    assert_one_line_error(result, f"{tmp_path} is not a dataset")


def test_review_on_a_missing_folder_or_a_folder_without_catalog(tmp_path) -> None:
    scores = tmp_path / "scores.csv"
    scores.write_text("path,loss\nants/a.jpg,1.0\n")
    result = run([sys.executable, "-m", "crawler.review", str(tmp_path / "nowhere"), "--scores", str(scores)])
    assert_one_line_error(result, "no dataset folder")
    result = run([sys.executable, "-m", "crawler.review", str(tmp_path), "--scores", str(scores)])
    assert_one_line_error(result, "has no catalog.sqlite")
    result = run([sys.executable, "-m", "crawler.review", "restore", str(tmp_path / "nowhere")])
    assert_one_line_error(result, "no dataset folder")


def test_review_with_a_missing_or_bad_scores_file(tmp_path) -> None:
    from crawler.catalog import Catalog

    Catalog(tmp_path).close()
    result = run([sys.executable, "-m", "crawler.review", str(tmp_path), "--scores", str(tmp_path / "none.csv")])
    assert_one_line_error(result, "none.csv", "trainer.predict")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,score\nx,1\n")
    result = run([sys.executable, "-m", "crawler.review", str(tmp_path), "--scores", str(bad)])
    assert_one_line_error(result, "'path' and 'loss' columns")


def test_an_unknown_spider_name() -> None:
    result = run(crawl("gallary", "-a", "label=ants"))
    assert_one_line_error(result, "no spider named 'gallary'", "did you mean gallery?", "urls", "wikimedia")


def test_scrapys_twisted_crawler_process_reports_the_same(tmp_path, server) -> None:
    # FORCE_CRAWLER_PROCESS: Scrapy runs the crawl as a Deferred instead of an asyncio task.
    result = run(crawl(
        "gallery", "-a", "label=ants", "-a", f"start_urls={server.base}/", "-a", "max_image=3",
        "-s", f"DATASET_DIR={tmp_path / 'd'}", "-s", "FORCE_CRAWLER_PROCESS=1",
    ))
    assert_one_line_error(result, "no argument -a max_image")
    assert server.hits == []
