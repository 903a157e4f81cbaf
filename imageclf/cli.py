"""``python -m imageclf``: from category names to compared models in one command.

    python -m imageclf SPIDER LABEL[=QUERY]... [--max-images N] [--models M1,M2] [--out DIR]
                       [-a KEY=VALUE]... [-s NAME=VALUE]... [-- TRAINER_OVERRIDE...]

1. ``scrapy crawl SPIDER -a label=LABEL -a query=QUERY ...`` once per label, all at once into
   ``DIR/dataset`` (the catalog is built for concurrent crawls), a progress line per label.
2. ``python -m crawler.dataset summary DIR/dataset --contact-sheet DIR/contact-sheet.png``.
3. ``python -m trainer -m experiment=M1,M2 data.root=DIR/dataset hydra.sweep.dir=DIR/runs ...``:
   one run per model, its per-epoch lines on the console.
4. The comparison table (``DIR/runs/comparison.md``).

Every child's whole output is in ``DIR/logs/``. Exit status: 0 when every step succeeded, 2 for
a mistake in the command line (one ``error:`` line on stderr), 1 when a crawl or the training
failed (the label or step and its log are named).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imageclf.crawls import crawl_labels
from imageclf.processes import last_error, python_command, scrapy_env
from imageclf.steps import check_overrides, dataset_summary, train_sweep

__all__ = ["UsageError", "main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO_ROOT / "conf" / "experiment"
DEFAULT_MODELS = "baseline_cnn,resnet18"
# The driver's crawls report more often than a lone crawl's default (10 s): short crawls of a
# few hundred images would otherwise end before their first progress line.
PROGRESS_INTERVAL = "3"
# Set by the driver itself from the labels, --max-images and --out.
RESERVED_ARGS = {"label": "give labels as LABEL or LABEL=QUERY", "query": "give labels as LABEL=QUERY",
                 "max_images": "use --max-images N"}  # fmt: skip
RESERVED_SETTINGS = {"DATASET_DIR": "use --out DIR; the dataset is DIR/dataset"}


class UsageError(Exception):
    """A mistake in the command line: ``<what is wrong> (<how to fix it>)``."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see python -m imageclf --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m imageclf",
        description="Crawl one image category per label in parallel into one dataset, summarise it, "
        "train and compare models on it. Arguments after -- go to the trainer as Hydra overrides.",
        epilog="example: python -m imageclf wikimedia ants='formica ant' bees --max-images 300 "
        "--models baseline_cnn,resnet18 -- data.image_size=128 trainer.max_epochs=20",
    )
    parser.add_argument("spider", help="the spider every label is crawled with (scrapy list shows them)")
    parser.add_argument("labels", nargs="*", metavar="LABEL[=QUERY]", help="categories; the query defaults to the label")
    parser.add_argument("--max-images", type=_positive_int, metavar="N", help="stop each label's crawl at N stored images")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated experiment names (default {DEFAULT_MODELS})")
    parser.add_argument("--out", type=Path, default=Path("imageclf-output"),
                        help="folder for dataset/, runs/, logs/ and the contact sheet (default ./imageclf-output)")  # fmt: skip
    parser.add_argument("-a", dest="spider_args", action="append", default=[], metavar="KEY=VALUE",
                        help="spider argument for every label's crawl; {label} and {query} in VALUE are replaced "
                        "(-a start_urls=https://example.org/search/{label})")  # fmt: skip
    parser.add_argument("-s", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="Scrapy setting for every crawl (-s VERIFY_MAX_SIDE=512)")  # fmt: skip
    return parser


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """The driver's own arguments and the trainer overrides after the first ``--``."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def parse_labels(words: list[str]) -> dict[str, str]:
    """``LABEL`` or ``LABEL=QUERY`` words as ``{label: query}``, in order."""
    if not words:
        raise UsageError("no labels given (name one category or more after the spider: python -m imageclf gallery ants bees)")
    labels: dict[str, str] = {}
    for word in words:
        label, _, query = word.partition("=")
        label, query = label.strip(), query.strip()
        if not label:
            raise UsageError(f"empty label in {word!r} (write LABEL or LABEL=QUERY)")
        if label in labels:
            raise UsageError(f"label {label!r} given twice (give each category once)")
        labels[label] = query or label
    return labels


def check_pairs(pairs: list[str], option: str, reserved: dict[str, str]) -> None:
    for pair in pairs:
        key, eq, _ = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"{option} {pair!r} is not KEY=VALUE (write {option} KEY=VALUE)")
        if key in reserved:
            raise UsageError(f"{option} {key} is set by the driver ({reserved[key]})")


def known_models() -> list[str]:
    """Experiments that train one model: ``conf/experiment/*.yaml`` minus sweeps (``compare``)."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if "mode: MULTIRUN" not in p.read_text(encoding="utf-8"))


def parse_models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    valid = known_models()
    if not models:
        raise UsageError(f"--models is empty (choose from: {', '.join(valid)})")
    for model in models:
        if model not in valid:
            raise UsageError(f"unknown model {model!r} (choose from: {', '.join(valid)})")
    return models


def known_spiders() -> list[str]:
    """``scrapy list``, as a user would ask."""
    proc = subprocess.run(python_command("scrapy", "list"), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=scrapy_env(), check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"`scrapy list` failed (exit {proc.returncode}):\n{proc.stderr}")
    return proc.stdout.split()


def prepare_out(out: Path) -> tuple[Path, Path, Path]:
    """``out/dataset`` (a crawl adds to it), ``out/runs`` (must be new) and ``out/logs``."""
    dataset, runs, logs = out / "dataset", out / "runs", out / "logs"
    if runs.exists() and any(runs.iterdir()):
        raise UsageError(f"{runs} already holds runs (choose another --out, or move that folder away)")
    logs.mkdir(parents=True, exist_ok=True)
    return dataset, runs, logs


def _heading(text: str) -> None:
    print(f"\n== {text}", flush=True)  # noqa: T201


def run_all(args: argparse.Namespace, labels: dict[str, str], models: list[str], overrides: list[str]) -> int:
    out = args.out.resolve()
    dataset, runs, logs = prepare_out(out)
    settings = list(args.settings)
    if not any(s.startswith("PROGRESS_INTERVAL=") for s in settings):
        settings.append(f"PROGRESS_INTERVAL={PROGRESS_INTERVAL}")
    spider_args = list(args.spider_args)
    if args.max_images:
        spider_args.append(f"max_images={args.max_images}")
    t0 = time.monotonic()

    _heading(f"1/3 crawl: {args.spider}, {len(labels)} label(s) in parallel into {dataset}")
    results = crawl_labels(args.spider, labels, spider_args, settings, dataset, logs)
    failed = [r for r in results if r.returncode != 0]
    if failed:
        # A crawl exits 2 for a mistake in its arguments or settings, the same for every label
        # as they all got them from this command line: its one error line is the whole story.
        mistakes = {r.error for r in failed if r.returncode == EXIT_USAGE and r.error and r.error.startswith("error:")}
        if len(mistakes) == 1 and all(r.returncode == EXIT_USAGE for r in failed):
            print(mistakes.pop(), file=sys.stderr)  # noqa: T201
            return EXIT_USAGE
        for r in failed:
            print(f"error: the crawl of {r.label!r} failed (exit {r.returncode}; its log: {r.log})", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE if all(r.returncode == EXIT_USAGE for r in failed) else EXIT_FAILED

    t_crawl = time.monotonic() - t0
    _heading("2/3 dataset summary")
    sheet = out / "contact-sheet.png"
    code, note = dataset_summary(dataset, sheet, logs / "summary.log")
    if note:
        print(f"  {note}", flush=True)  # noqa: T201
    elif code != 0:
        print(f"  dataset summary failed (exit {code}; see {logs / 'summary.log'}); training goes on", flush=True)  # noqa: T201
    # The summary itself names the contact sheet it wrote.

    _heading(f"3/3 train and compare: {', '.join(models)}")
    t1 = time.monotonic()
    code = train_sweep(models, dataset, runs, overrides, logs / "train.log")
    if code != 0:
        # The trainer's stderr went only to the log: bring its error line to the console.
        error = last_error(logs / "train.log")
        if code == EXIT_USAGE and error and error.startswith("error:"):
            print(error, file=sys.stderr)  # noqa: T201
            return EXIT_USAGE
        if error:
            print(f"  {error}", flush=True)  # noqa: T201
        print(f"error: training failed (exit {code}; its log: {logs / 'train.log'})", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE if code == EXIT_USAGE else EXIT_FAILED

    # The sweep printed the table as it ended (streamed above); point at its files.
    table = runs / "comparison.md"
    _heading(f"comparison: {table}" if table.exists() else "comparison: no table was written (see the log)")
    print(f"crawled in {t_crawl:.0f} s, trained in {time.monotonic() - t1:.0f} s\n"  # noqa: T201
          f"dataset: {dataset}\nruns:    {runs}\nlogs:    {logs}", flush=True)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    own, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(own)
        labels = parse_labels(args.labels)
        models = parse_models(args.models)
        check_pairs(args.spider_args, "-a", RESERVED_ARGS)
        check_pairs(args.settings, "-s", RESERVED_SETTINGS)
        # Both checks start an interpreter that imports a framework: run them side by side.
        with ThreadPoolExecutor(max_workers=2) as pool:
            spiders_future = pool.submit(known_spiders)
            problem_future = pool.submit(check_overrides, models[0], args.out.resolve() / "dataset", overrides)
            spiders, problem = spiders_future.result(), problem_future.result()
        if args.spider not in spiders:
            raise UsageError(f"unknown spider {args.spider!r} (choose one of: {', '.join(spiders)})")
        if problem:
            raise UsageError(f"the trainer rejects the overrides after --: {problem} (see python -m trainer --help)")
        return run_all(args, labels, models, overrides)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130
