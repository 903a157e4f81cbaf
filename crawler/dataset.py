"""Check, repair and export a dataset folder against its catalog (docs/dataset.md).

Usage::

    python -m crawler.dataset check <dir> [--repair]   # exit 1 when anything is wrong
    python -m crawler.dataset export <dir> [--output catalog.csv]
    python -m crawler.dataset rehash <dir>             # recompute perceptual hashes from files
    python -m crawler.dataset summary <dir> [--contact-sheet sheet.png]   # crawler/summary.py

Each takes ``--catalog-url postgresql://...`` for a dataset whose catalog is in PostgreSQL (the
crawl's ``CATALOG_URL``); the folder still holds the images.

``check`` finds: stored rows whose file is missing (``missing_file``), image files under a
label folder with no stored row (``orphan_file``), files whose SHA-256 is not their name
(``hash_mismatch``), files Pillow cannot fully decode (``undecodable``), and stored files in the
wrong label folder (``wrong_label``); and dedupe's promises (issue 13): a ``duplicate`` row whose
``duplicate_of`` names no stored image (``dangling_duplicate``), a stored file that is also
under ``.trash/`` (``stored_and_trashed``), and two stored images within the duplicate
threshold of each other (``near_duplicate_stored``: full-picture hashes within the recorded
hash's ``DEDUPE_MAX_DISTANCE`` default, both of PDQ quality ``DEDUPE_MIN_QUALITY`` or more;
the dihedral variants are not stored, so only the identity orientation is compared). Leftovers of killed crawls in ``.tmp/`` are reported but are
not inconsistencies: no reader looks there.

``--repair`` fixes what it safely can, never deleting an image: bad or orphan files are moved to
``.trash/`` (keeping their relative path); rows of missing or trashed files become ``rejected``
with reason ``missing_file``/``hash_mismatch``/``undecodable``, and so do the ``duplicate`` rows
that named them (one transaction: no row is left naming a lost image); a dangling ``duplicate_of`` is
re-pointed to the stored image its target was replaced by, when the catalog still tells which;
``.tmp/`` is emptied. ``stored_and_trashed`` and ``near_duplicate_stored`` are only reported:
which copy to keep is a person's call (``python -m crawler.review``).

``rehash [--hash NAME]`` recomputes every stored image's perceptual hashes with the current
recipe (``crawler.images.hashing.hash_recipe``), with the hash the catalog records or NAME. A crawl does this by itself when it opens a dataset
made with another recipe; the command does it ahead of time.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from crawler.catalog import CATALOG_NAME, Catalog, has_catalog
from crawler.images.decode import Rejected, verify_image
from crawler.images.files import TMP_DIR, TRASH_DIR
from crawler.images.hashing import DEFAULT_HASH, HASH_NAMES, hash_recipe
from crawler.images.rehash import rehash_catalog

logger = logging.getLogger(__name__)

__all__ = ["Problem", "check", "main", "repair"]

# Only the consistency rules apply here, not the crawl's acceptance limits: a stored file that
# decodes is fine whatever its size.
_NO_LIMITS = {"min_side": 1, "max_pixels": 2**62, "max_bytes": 2**62}


@dataclass(frozen=True)
class Problem:
    """One inconsistency: ``kind`` (see module docstring), ``path`` relative to the dataset
    (POSIX separators), ``detail`` for humans, ``row_id`` of the catalog row if any."""

    kind: str
    path: str
    detail: str = ""
    row_id: int | None = None


def _label_files(root: Path) -> list[str]:
    files = []
    for label_dir in sorted(root.iterdir()):
        if not label_dir.is_dir() or label_dir.name.startswith("."):
            continue
        for path in sorted(label_dir.rglob("*")):
            if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts):
                files.append(path.relative_to(root).as_posix())
    return files


def check(root: Path, catalog_url: str | None = None) -> tuple[list[Problem], list[str]]:
    """Problems of the dataset at ``root``, and its stale temporary files (relative paths);
    ``catalog_url``: its PostgreSQL catalog, else ``root/catalog.sqlite`` if there is one.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"not a dataset folder: {root}")
    problems: list[Problem] = []
    stored: dict[str, tuple[int, str]] = {}
    catalogued = has_catalog(root, catalog_url)
    if catalogued:
        with Catalog(root, url=catalog_url) as catalog:
            for row in catalog.rows("status = 'stored'"):
                stored[row["path"]] = (row["id"], row["label"])
    else:
        logger.info("%s has no catalog: checking files only", root)
    files = set(_label_files(root))
    for path, (row_id, label) in sorted(stored.items()):
        if path not in files:
            problems.append(Problem("missing_file", path, "catalog row without its file", row_id))
        elif path.split("/", 1)[0] != label:
            problems.append(Problem("wrong_label", path, f"row label is {label!r}", row_id))
    for path in sorted(files):
        row_id = stored.get(path, (None, ""))[0]
        if catalogued and row_id is None:
            problems.append(Problem("orphan_file", path, "file without a stored catalog row"))
            continue
        data = (root / path).read_bytes()
        stem = Path(path).stem
        if len(stem) == 64 and hashlib.sha256(data).hexdigest() != stem:
            problems.append(Problem("hash_mismatch", path, "SHA-256 differs from the name", row_id))
            continue
        try:
            verify_image(data, **_NO_LIMITS)
        except Rejected as exc:
            problems.append(Problem("undecodable", path, str(exc), row_id))
    if catalogued:
        problems += _dedupe_problems(root, stored, catalog_url)
    tmp_dir = root / TMP_DIR
    stale = sorted(p.relative_to(root).as_posix() for p in tmp_dir.iterdir()) if tmp_dir.is_dir() else []
    return problems, stale


def _dedupe_problems(root: Path, stored: dict[str, tuple[int, str]], catalog_url: str | None = None) -> list[Problem]:
    """``dangling_duplicate``, ``stored_and_trashed`` and ``near_duplicate_stored`` (module
    docstring) of the catalogued dataset at ``root``; ``stored`` maps stored paths to rows."""
    from crawler import settings as defaults
    from crawler.catalog import REVIEW_DELETE
    from crawler.hashindex import MultiIndexHashIndex, WordsHashIndex
    from crawler.images.hashing import PDQ

    problems = []
    with Catalog(root, url=catalog_url) as catalog:
        deleted = {row["path"] for row in catalog.rows("status = 'rejected' AND reason = ?", (REVIEW_DELETE,))}
        for row in catalog.rows("status = 'duplicate'"):
            target = row["duplicate_of"]
            if target not in stored and target not in deleted:
                problems.append(Problem("dangling_duplicate", target or "", "duplicate_of names no stored image", row["id"]))
        for path, (row_id, _) in sorted(stored.items()):
            if (root / TRASH_DIR / path).is_file():
                problems.append(Problem("stored_and_trashed", path, f"also in {TRASH_DIR}/", row_id))
        hash_name = catalog.meta().get("hash", PDQ)
        rule = defaults.DEDUPE_DEFAULTS.get(hash_name, defaults.DEDUPE_DEFAULTS[PDQ])
        limit = rule["DEDUPE_MAX_DISTANCE"]
        rows = catalog.rows("status = 'stored'")
    column, bits = ("pdq", 256) if hash_name == PDQ else ("phash", 64)
    usable = [
        row for row in rows
        if row[column] and (column != "pdq" or (row["pdq_quality"] or 0) >= rule["DEDUPE_MIN_QUALITY"])
    ]
    index: WordsHashIndex | MultiIndexHashIndex
    if bits == 256:
        index = WordsHashIndex(limit, expected=len(usable))
    else:
        index = MultiIndexHashIndex.for_size(limit, len(usable))
    for n, row in enumerate(usable):
        index.add(int(row[column], 16), n)
    found = index.query_batch([int(row[column], 16) for row in usable], limit)
    for n, hits in enumerate(found):
        for distance, other in hits:
            if other < n:  # each pair once, reported on the later row
                problems.append(Problem(
                    "near_duplicate_stored", usable[n]["path"],
                    f"{distance} bits ({hash_name}) from {usable[other]['path']}", usable[n]["id"],
                ))
    return problems


def _repoint(catalog: Catalog, problem: Problem) -> bool:
    """Re-point a ``dangling_duplicate`` row to the image its target was replaced by: the
    demoted row whose bytes named the target's file (``<label>/<sha256>.<ext>``). Returns
    whether the row now names a stored image."""
    sha = Path(problem.path).stem
    for row in catalog.rows("status = 'duplicate' AND path IS NULL AND sha256 = ?", (sha,)):
        target = catalog.find_stored_path(row["duplicate_of"] or "")
        if target is not None:
            with catalog.transaction() as tx:
                tx.execute("UPDATE images SET duplicate_of = ? WHERE id = ?", (target["path"], problem.row_id))
            return True
    return False


def repair(root: Path, problems: list[Problem], stale: list[str], catalog_url: str | None = None) -> int:
    """Apply the safe fixes described in the module docstring; return how many were made."""
    fixed = 0
    for name in stale:
        (root / name).unlink(missing_ok=True)
        fixed += 1
    catalog = Catalog(root, url=catalog_url) if has_catalog(root, catalog_url) else None
    try:
        for problem in problems:
            if problem.kind in ("stored_and_trashed", "near_duplicate_stored"):
                continue  # reported only: a person's call
            if problem.kind == "dangling_duplicate":
                if catalog is not None and _repoint(catalog, problem):
                    fixed += 1
                    logger.info("repaired %s: row %s", problem.kind, problem.row_id)
                continue
            if problem.kind in ("orphan_file", "hash_mismatch", "undecodable", "wrong_label"):
                target = root / TRASH_DIR / problem.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(root / problem.path, target)
            if catalog is not None and problem.row_id is not None:
                with catalog.transaction() as tx:
                    tx.execute(
                        "UPDATE images SET status = 'rejected', reason = ?, path = NULL WHERE id = ?",
                        (problem.kind, problem.row_id),
                    )
                    # Its duplicates follow it: no row may name an image the dataset no longer
                    # has, and the next crawl of their URLs judges them afresh.
                    tx.execute(
                        "UPDATE images SET status = 'rejected', reason = ? WHERE status = 'duplicate' AND duplicate_of = ?",
                        (problem.kind, problem.path),
                    )
            fixed += 1
            logger.info("repaired %s: %s", problem.kind, problem.path)
        if catalog is not None:
            catalog.export_csv()
    finally:
        if catalog is not None:
            catalog.close()
    return fixed


def _catalogued(root: Path, catalog_url: str | None = None) -> Path:
    """``root``, checked to be a folder with a catalog (or given one at ``catalog_url``).

    Raises:
        UserError: it is not.
    """
    from crawler.errors import UserError

    if not root.is_dir():
        raise UserError(f"no dataset folder {root} (give the folder a crawl wrote with -s DATASET_DIR=...)")
    if not has_catalog(root, catalog_url):
        raise UserError(
            f"{root} has no {CATALOG_NAME}: not a crawled dataset "
            "(give the folder a crawl wrote; --catalog-url URL for a PostgreSQL catalog)"
        )
    return root


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 consistent, 1 problems, 2 usage)."""
    # Imported here, not at the top: the summary's drawing code is needed by one subcommand only.
    from crawler import summary
    from crawler.errors import UserError, report

    parser = argparse.ArgumentParser(prog="python -m crawler.dataset", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_cmd = commands.add_parser("check", help="check a dataset against its catalog")
    check_cmd.add_argument("dataset", type=Path)
    check_cmd.add_argument("--repair", action="store_true", help="fix what can be fixed safely")
    export_cmd = commands.add_parser("export", help="write the catalog as CSV")
    export_cmd.add_argument("dataset", type=Path)
    export_cmd.add_argument("--output", type=Path, default=None, help="default: <dataset>/catalog.csv")
    rehash_cmd = commands.add_parser("rehash", help="recompute perceptual hashes from the stored files")
    rehash_cmd.add_argument("dataset", type=Path)
    rehash_cmd.add_argument(
        "--hash", choices=HASH_NAMES, default=None,
        help="perceptual hash to use (default: the one the catalog records, else pdq)",
    )
    summary_cmd = commands.add_parser("summary", help="per-label counts, formats, sizes, sources; a contact sheet")
    summary_cmd.add_argument("dataset", type=Path)
    summary_cmd.add_argument("--contact-sheet", type=Path, default=None, metavar="PNG",
                             help="also draw sample images per label into this PNG file")
    summary_cmd.add_argument("--per-label", type=int, default=8, help="images per label on the sheet (default 8)")
    for command in (check_cmd, export_cmd, rehash_cmd, summary_cmd):
        command.add_argument("--catalog-url", default=None, metavar="URL",
                             help="the dataset's PostgreSQL catalog (the crawl's CATALOG_URL); default: <dataset>/catalog.sqlite")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return _run(args, summary)
    except UserError as exc:
        return report(exc)


def _run(args: argparse.Namespace, summary: ModuleType) -> int:
    if args.command == "summary":
        found = summary.summarize(args.dataset, args.catalog_url)
        print(summary.format_summary(found))  # noqa: T201 (the command's output)
        if args.contact_sheet is not None:
            path = summary.contact_sheet(found, args.contact_sheet, per_label=max(1, args.per_label))
            print(f"contact sheet: {path}")  # noqa: T201
        return 0

    if args.command == "rehash":
        _catalogued(args.dataset, args.catalog_url)
        with Catalog(args.dataset, url=args.catalog_url) as catalog:
            recorded = catalog.meta().get("hash")
            hash_name = args.hash or (recorded if recorded in HASH_NAMES else DEFAULT_HASH)
            rehashed, skipped = rehash_catalog(catalog, hash_name)
        logger.info("rehashed %d images with %s (%d skipped)", rehashed, hash_recipe(hash_name), skipped)
        return 1 if skipped else 0

    if args.command == "export":
        _catalogued(args.dataset, args.catalog_url)
        with Catalog(args.dataset, url=args.catalog_url) as catalog:
            path = catalog.export_csv(args.output)
        logger.info("exported %s", path)
        return 0

    if not args.dataset.is_dir():
        _catalogued(args.dataset)  # raises: no such folder
    problems, stale = check(args.dataset, args.catalog_url)
    for problem in problems:
        logger.warning("%s %s %s", problem.kind, problem.path, problem.detail)
    if stale:
        logger.info("%d leftover temporary files in %s/", len(stale), TMP_DIR)
    if args.repair and (problems or stale):
        logger.info("repaired %d problems", repair(args.dataset, problems, stale, args.catalog_url))
        problems, _ = check(args.dataset, args.catalog_url)
    logger.info("%s: %s", args.dataset, "consistent" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
