"""Review decisions on a dataset: marks per image, and carrying them out on folder and catalog.

A person marks each stored image ``keep``, ``delete`` or ``move`` (to another label, existing or
new) with :func:`decide`. Every mark is written at once to the catalog's ``review`` table (one
row per image), so marks survive page reloads, class switches and restarts.

:func:`apply_decisions` carries out the pending marks in one catalog transaction:

- ``delete``: the file moves to ``.trash/<label>/<name>`` (never removed); its row becomes
  ``rejected`` with reason ``review_delete`` and no path.
- ``move``: the file moves to ``<new label>/<name>`` (label sanitised as in crawls); its row
  gets the new label and path.
- ``keep``: nothing changes on disk.

The file moves are ``os.replace`` renames inside the dataset folder. A plan of them is written to
``.review-apply.json`` before the first rename and removed after the commit: if anything fails,
the renames done so far are undone and the transaction rolled back; if the process dies midway,
the next ``review`` or ``restore`` finds the plan and puts back the files of the rows that were
not committed (:func:`recover`). Either way ``python -m crawler.dataset check`` passes afterwards.

:func:`restore` moves deleted images back from ``.trash/`` and makes their rows ``stored`` again
(all of them, or the given dataset-relative paths).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crawler.catalog import CATALOG_NAME, REVIEW_DELETE, Catalog
from crawler.errors import UserError
from crawler.images.files import TRASH_DIR
from crawler.labels import sanitize_label

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIONS", "JOURNAL_NAME", "ReviewError", "apply_decisions", "decide", "open_catalog", "pending", "recover",
    "restore",
]

ACTIONS = ("keep", "delete", "move")
#: The plan of an apply in progress, at the dataset root (a dot-file: never a label or image).
JOURNAL_NAME = ".review-apply.json"
DELETE_REASON = REVIEW_DELETE


class ReviewError(ValueError):
    """A decision that cannot be recorded or carried out; the message says why."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def open_catalog(root: Path, catalog_url: str | None = None) -> Catalog:
    """The dataset's catalog (the PostgreSQL one at ``catalog_url`` when given), after
    finishing any interrupted apply.

    Raises:
        UserError: ``root`` is not a folder or has no catalog (review works on crawled,
            catalogued datasets).
    """
    if not root.is_dir():
        raise UserError(f"no dataset folder {root} (give the folder a crawl wrote with -s DATASET_DIR=...)")
    if not catalog_url and not (root / CATALOG_NAME).is_file():
        raise UserError(
            f"{root} has no {CATALOG_NAME}: review needs a crawled, catalogued dataset "
            "(docs/dataset.md; --catalog-url URL for a PostgreSQL catalog)"
        )
    catalog = Catalog(root, url=catalog_url)
    recover(root, catalog)
    return catalog


# -- decisions ------------------------------------------------------------------------------


def decide(catalog: Catalog, image_id: int, action: str | None, label: str | None = None) -> dict[str, Any] | None:
    """Record (or with ``action=None`` clear) the pending decision for stored image ``image_id``.

    Returns the decision as ``{"action", "label"}`` (``None`` when cleared).

    Raises:
        ReviewError: unknown image or action, or a move without a usable label.
    """
    if action is not None and action not in ACTIONS:
        raise ReviewError(f"unknown action {action!r}; valid: {', '.join(ACTIONS)}")
    with catalog.transaction() as tx:
        row = tx.execute("SELECT label, path FROM images WHERE id = ? AND status = 'stored'", (image_id,)).fetchone()
        if row is None:
            raise ReviewError(f"no stored image with id {image_id}")
        if action is None:
            tx.execute("DELETE FROM review WHERE image_id = ? AND applied_at IS NULL", (image_id,))
            return None
        target = None
        if action == "move":
            try:
                target = sanitize_label(label or "")
            except ValueError as exc:
                raise ReviewError(str(exc)) from None
            if target == row["label"]:
                action, target = "keep", None
        tx.execute(
            "INSERT INTO review (image_id, action, target_label, path, decided_at, applied_at) "
            "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (image_id) DO UPDATE SET action = excluded.action, "
            "target_label = excluded.target_label, path = excluded.path, decided_at = excluded.decided_at, "
            "applied_at = NULL",
            (image_id, action, target, row["path"], _now()),
        )
    return {"action": action, "label": target}


def pending(catalog: Catalog) -> list[dict[str, Any]]:
    """Pending decisions of stored images: image id, action, target label, label, path."""
    with catalog.transaction() as tx:
        rows = tx.execute(
            "SELECT r.image_id, r.action, r.target_label, i.label, i.path FROM review r "
            "JOIN images i ON i.id = r.image_id WHERE r.applied_at IS NULL AND i.status = 'stored' ORDER BY r.image_id"
        ).fetchall()
    return [dict(row) for row in rows]


# -- apply, recover, restore --------------------------------------------------------------


def _write_journal(root: Path, steps: list[dict[str, Any]]) -> None:
    tmp = root / (JOURNAL_NAME + ".tmp")
    tmp.write_text(json.dumps({"created_at": _now(), "steps": steps}, indent=1), encoding="utf-8")
    os.replace(tmp, root / JOURNAL_NAME)


def _rename(root: Path, src: str, dst: str) -> None:
    target = root / dst
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(root / src, target)


def _undo(root: Path, done: list[dict[str, Any]]) -> bool:
    """Rename ``done`` steps back, last first; return whether every one was undone."""
    undone = True
    for step in reversed(done):
        try:
            _rename(root, step["dst"], step["src"])
        except OSError:  # keep undoing the rest; recover() retries from the journal
            logger.exception("could not move %s back to %s", step["dst"], step["src"])
            undone = False
    return undone


def recover(root: Path, catalog: Catalog) -> int:
    """Finish an apply or restore that died midway (see module doc); return files put back."""
    journal = root / JOURNAL_NAME
    if not journal.is_file():
        return 0
    steps = json.loads(journal.read_text(encoding="utf-8"))["steps"]
    put_back = 0
    for step in steps:
        row = catalog.get(step["image_id"])
        committed = row is not None and row["status"] == step["status"] and row["path"] == step["path"]
        if not committed and (root / step["dst"]).is_file() and not (root / step["src"]).exists():
            _rename(root, step["dst"], step["src"])
            put_back += 1
    journal.unlink()
    logger.warning("recovered an interrupted review apply in %s: %d files put back", root, put_back)
    return put_back


def _carry_out(root: Path, catalog: Catalog, steps: list[dict[str, Any]], decisions: list[tuple[str, int]]) -> None:
    """Rename the files of ``steps`` and update their rows in one transaction, or undo all.

    Each step: ``image_id``, ``src``/``dst`` (dataset-relative), and the row's new ``status``,
    ``reason``, ``label`` and ``path``. ``decisions``: ``(review action, image_id)`` to mark applied.
    """
    _write_journal(root, steps)
    done: list[dict[str, Any]] = []
    try:
        with catalog.transaction() as tx:
            for step in steps:
                _rename(root, step["src"], step["dst"])
                done.append(step)
                tx.execute(
                    "UPDATE images SET status = ?, reason = ?, label = ?, path = ? WHERE id = ?",
                    (step["status"], step["reason"], step["label"], step["path"], step["image_id"]),
                )
            now = _now()
            for action, image_id in decisions:
                tx.execute("UPDATE review SET action = ?, applied_at = ? WHERE image_id = ?", (action, now, image_id))
    except BaseException:
        if _undo(root, done):  # else the plan stays for recover() to finish the undo
            (root / JOURNAL_NAME).unlink(missing_ok=True)
        raise
    (root / JOURNAL_NAME).unlink(missing_ok=True)
    catalog.export_csv()


def apply_decisions(root: str | Path, catalog: Catalog | None = None) -> dict[str, Any]:
    """Carry out every pending decision (see module doc); return counts and skipped images.

    A move whose destination file already exists (the same bytes are already stored under the
    target label) is skipped and stays pending, reported under ``conflicts``.
    """
    root = Path(root)
    own = catalog is None
    catalog = catalog or open_catalog(root)
    try:
        steps, decisions, conflicts = [], [], []
        counts = {"kept": 0, "deleted": 0, "moved": 0}
        for decision in pending(catalog):
            image_id, path, action = decision["image_id"], decision["path"], decision["action"]
            name = path.rsplit("/", 1)[-1]
            if action == "keep":
                decisions.append(("keep", image_id))
                counts["kept"] += 1
                continue
            if action == "delete":
                step = {"dst": f"{TRASH_DIR}/{path}", "status": "rejected", "reason": DELETE_REASON,
                        "label": decision["label"], "path": None}
                counts["deleted"] += 1
            else:
                dst = f"{decision['target_label']}/{name}"
                if (root / dst).exists():
                    conflicts.append({"path": path, "reason": f"{dst} already exists"})
                    continue
                step = {"dst": dst, "status": "stored", "reason": None, "label": decision["target_label"], "path": dst}
                counts["moved"] += 1
            steps.append({"image_id": image_id, "src": path, **step})
            decisions.append((action, image_id))
        if decisions:
            _carry_out(root, catalog, steps, decisions)
        logger.info("review applied in %s: %s; %d conflicts", root, counts, len(conflicts))
        return {**counts, "conflicts": conflicts}
    finally:
        if own:
            catalog.close()


def restore(root: str | Path, paths: list[str] | None = None, catalog_url: str | None = None) -> list[str]:
    """Move images deleted by review back from ``.trash/`` and make their rows ``stored`` again.

    Args:
        root: the dataset folder.
        paths: dataset-relative paths the images had (``label/<sha256>.jpg``); ``None``: all.

    Returns:
        The restored paths. Images whose trash file is gone or whose place is taken are skipped
        with a warning.
    """
    root = Path(root)
    with open_catalog(root, catalog_url) as catalog:
        with catalog.transaction() as tx:
            rows = tx.execute(
                "SELECT r.image_id, r.path FROM review r JOIN images i ON i.id = r.image_id "
                "WHERE r.action = 'delete' AND r.applied_at IS NOT NULL AND i.status = 'rejected' AND i.reason = ? "
                "ORDER BY r.image_id",
                (DELETE_REASON,),
            ).fetchall()
        wanted = set(paths) if paths is not None else None
        steps = []
        for image_id, path in rows:
            if wanted is not None and path not in wanted:
                continue
            trash = f"{TRASH_DIR}/{path}"
            if not (root / trash).is_file() or (root / path).exists():
                logger.warning("cannot restore %s: %s", path, "not in the trash" if not (root / trash).is_file() else "its place is taken")
                continue
            steps.append({"image_id": image_id, "src": trash, "dst": path, "status": "stored", "reason": None,
                          "label": path.split("/", 1)[0], "path": path})
        if steps:
            _carry_out(root, catalog, steps, [("keep", step["image_id"]) for step in steps])
    restored = [step["path"] for step in steps]
    logger.info("restored %d images in %s", len(restored), root)
    return restored


