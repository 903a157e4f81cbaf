"""``python -m demo``: the whole job on the built-in default input, as a user would run it.

1. Serve the demo gallery site (:mod:`demo.site`) on 127.0.0.1: generated shapes, or the label
   subfolders of ``--images``.
2. ``scrapy crawl gallery -a label=<category> -a start_urls=<results page> -s DATASET_DIR=<dir>``
   once per category, all at once into one dataset (the catalog is built for concurrent crawls).
3. ``python -m trainer -m experiment=<model>,... data.root=<dir> ...``: one run per model.
4. Print the crawl summary from the catalog and the trainer's comparison table.

Everything is written under ``--out`` (default ``demo-output/``), which is emptied first; the
folder is only ever emptied when it carries the marker file this command leaves in it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from demo.site import DemoSite

logger = logging.getLogger("demo")

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = ".demo-output"


def _prepare_out(out: Path) -> None:
    """Empty ``out`` if this command made it; refuse to touch a folder it did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by python -m demo; emptied by its next run\n")


def _show(cmd: list[str]) -> str:
    """The command as a user would type it (``scrapy``/``python`` instead of full paths)."""
    shown = list(cmd)
    if shown[:3] == [sys.executable, "-m", "scrapy"]:
        shown[:3] = ["scrapy"]
    elif shown[:1] == [sys.executable]:
        shown[:1] = ["python"]
    return shlex.join(shown)


def crawl(site: DemoSite, dataset: Path, logs: Path, extra_settings: list[str]) -> None:
    """Run one ``scrapy crawl gallery`` per category, in parallel, into ``dataset``."""
    env = {**os.environ, "SCRAPY_SETTINGS_MODULE": "crawler.settings", "PYTHONUNBUFFERED": "1"}
    procs = []
    for label in site.labels:
        cmd = [
            sys.executable, "-m", "scrapy", "crawl", "gallery",
            "-a", f"label={label}", "-a", f"start_urls={site.results_url(label)}",
            "-s", f"DATASET_DIR={dataset}", *(a for s in extra_settings for a in ("-s", s)),
        ]  # fmt: skip
        log = logs / f"crawl-{label}.log"
        logger.info("$ %s   > %s", _show(cmd), log)
        with log.open("wb") as fh:
            procs.append((label, subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)))
    failed = [label for label, p in procs if p.wait() != 0]
    if failed:
        raise SystemExit(f"crawl failed for {', '.join(failed)}; see {logs}")


def crawl_summary(dataset: Path) -> str:
    """A Markdown table per label from the catalog: stored, duplicates, rejections by reason."""
    with sqlite3.connect(f"file:{dataset / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT label, status, COALESCE(reason, ''), COUNT(*) FROM images GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
    per_label: dict[str, dict] = {}
    for label, status, reason, n in rows:
        entry = per_label.setdefault(label, {"stored": 0, "duplicate": 0, "rejected": {}})
        if status == "rejected":
            entry["rejected"][reason] = n
        else:
            entry[status] = entry.get(status, 0) + n
    lines = ["| label | stored | duplicates | rejected (reason: count) |", "|---|---:|---:|---|"]
    for label, e in per_label.items():
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(e["rejected"].items())) or "-"
        lines.append(f"| {label} | {e['stored']} | {e['duplicate']} | {reasons} |")
    return "\n".join(lines)


def train(dataset: Path, runs: Path, logs: Path, models: str, epochs: int, image_size: int, extra: list[str]) -> Path:
    """Run the trainer's sweep over ``models``; return the sweep folder."""
    cmd = [
        sys.executable, "-m", "trainer", "-m", f"experiment={models}",
        f"data.root={dataset}", f"data.image_size={image_size}", f"trainer.max_epochs={epochs}",
        f"hydra.sweep.dir={runs}", *extra,
    ]  # fmt: skip
    log = logs / "train.log"
    logger.info("$ %s   > %s", _show(cmd), log)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as fh:
        code = subprocess.call(cmd, cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"training failed (exit {code}); see {log}")
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="folder of label subfolders to serve instead of generated shapes")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo-output", help="where the dataset, runs and logs go")
    parser.add_argument("--models", default="baseline_cnn,resnet18", help="comma-separated experiment names")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64, help="pixels, the side images are resized to")
    parser.add_argument("--per-label", type=int, default=100, help="generated images per category")
    parser.add_argument("--crawl-setting", action="append", default=[], metavar="NAME=VALUE", help="extra -s for scrapy")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the trainer (e.g. data.batch_size=16)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    out = args.out.resolve()
    _prepare_out(out)
    dataset, runs, logs = out / "dataset", out / "runs", out / "logs"
    logs.mkdir()
    t0 = time.perf_counter()
    # Locally there is no server to be polite to: the demo lifts AutoThrottle's start delay.
    crawl_settings = ["AUTOTHROTTLE_ENABLED=False", "LOG_LEVEL=INFO", *args.crawl_setting]
    with DemoSite(args.images, per_label=args.per_label) as site:
        logger.info("Demo site: %s (%d categories: %s)", site.url, len(site.labels), ", ".join(site.labels))
        crawl(site, dataset, logs, crawl_settings)
    t_crawl = time.perf_counter() - t0
    logger.info("\nCrawled in %.1f s into %s\n\n%s\n", t_crawl, dataset, crawl_summary(dataset))

    t1 = time.perf_counter()
    # A few hundred images make few steps an epoch: smaller batches give the one-cycle schedule
    # more steps, and a longer patience keeps early stopping from ending its warm-up phase.
    overrides = ["data.batch_size=16", "callbacks.early_stopping.patience=10", *args.overrides]
    train(dataset, runs, logs, args.models, args.epochs, args.image_size, overrides)
    t_train = time.perf_counter() - t1
    table = runs / "comparison.md"
    logger.info("\nTrained in %.1f s. Comparison (%s):\n\n%s", t_train, table, table.read_text() if table.exists() else "(missing)")
    logger.info("Dataset: %s\nRuns:    %s\nLogs:    %s", dataset, runs, logs)


if __name__ == "__main__":
    main()
