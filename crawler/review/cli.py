"""``python -m crawler.review``: serve the review page, or restore what review deleted.

Usage::

    python -m trainer.predict EXPORT_DIR DATASET_DIR --out scores.csv   # the trainer scores
    python -m crawler.review DATASET_DIR --scores scores.csv [--port 8001]   # = serve ...
    python -m crawler.review restore DATASET_DIR [PATH ...]                  # undo deletions

Both take ``--catalog-url URL`` for a dataset whose catalog is in PostgreSQL (the crawl's
``CATALOG_URL``).

Exit status: 0 done, 2 for a user's mistake (no such dataset, no catalog, a bad scores file),
reported as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from crawler.errors import UserError, report

__all__ = ["COMMANDS", "main", "parser"]

COMMANDS = ("serve", "restore")


def parser() -> argparse.ArgumentParser:
    """The command line: subcommands ``serve`` (the default) and ``restore``."""
    top = argparse.ArgumentParser(
        prog="python -m crawler.review",
        description="Review a dataset with a model's scores: keep, delete or relabel images, then apply. "
        "`python -m crawler.review DATASET --scores scores.csv` is short for `serve`.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="{serve,restore}")
    serve = commands.add_parser("serve", help="the review page on http://127.0.0.1:PORT/ (the default command)")
    serve.add_argument("dataset", type=Path, help="the dataset folder (with catalog.sqlite)")
    serve.add_argument("--scores", type=Path, required=True, help="CSV from `python -m trainer.predict ... --out`")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default: this machine only); open the page by this name")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--per-page", type=int, default=24, help="images per page")
    restore = commands.add_parser("restore", help="move images deleted in review back from .trash/")
    restore.add_argument("dataset", type=Path)
    restore.add_argument("paths", nargs="*", help="dataset-relative paths the images had (default: all)")
    for command in (serve, restore):
        command.add_argument("--catalog-url", default=None, metavar="URL",
                             help="the dataset's PostgreSQL catalog (the crawl's CATALOG_URL); default: DATASET/catalog.sqlite")
    return top


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 2 a user's mistake)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "serve")  # the documented short form
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _restore(args) if args.command == "restore" else _serve(args)
    except UserError as exc:
        return report(exc)


def _restore(args: argparse.Namespace) -> int:
    from crawler.review.decisions import restore

    for path in restore(args.dataset, args.paths or None, args.catalog_url):
        print(path)  # noqa: T201 (the command's output)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from crawler.review.app import create_app
    from crawler.review.scores import load_scores

    app = create_app(
        args.dataset, load_scores(args.scores), per_page=args.per_page, allowed_hosts=(args.host,),
        catalog_url=args.catalog_url,
    )
    logging.getLogger(__name__).info("review %s at http://%s:%d/", args.dataset, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
