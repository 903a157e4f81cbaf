"""Review a dataset with a model's scores: keep, delete or relabel images, then apply.

Usage::

    python -m trainer.predict EXPORT_DIR DATASET_DIR --out scores.csv   # the trainer scores
    python -m crawler.review DATASET_DIR --scores scores.csv [--port 8001]
    python -m crawler.review restore DATASET_DIR [PATH ...]            # undo deletions

The review page (``http://127.0.0.1:8001/``) lists the stored images of one label at a time,
highest loss first (the images the model finds least like their label), a page at a time. A
person marks each ``keep``, ``delete`` or ``move`` (to another label, existing or new). Every
mark is written at once to the catalog's ``review`` table (one row per image), so marks survive
page reloads, class switches and restarts.

"Apply" carries out the pending marks in one catalog transaction:

- ``delete``: the file moves to ``.trash/<label>/<name>`` (never removed); its row becomes
  ``rejected`` with reason ``review_delete`` and no path.
- ``move``: the file moves to ``<new label>/<name>`` (label sanitised as in crawls); its row
  gets the new label and path.
- ``keep``: nothing changes on disk.

The file moves are ``os.replace`` renames inside the dataset folder. A plan of them is written to
``.review-apply.json`` before the first rename and removed after the commit: if anything fails,
the renames done so far are undone and the transaction rolled back; if the process dies midway,
the next ``review`` or ``restore`` finds the plan and puts back the files of the rows that were
not committed. Either way ``python -m crawler.dataset check`` passes afterwards.

``restore`` moves deleted images back from ``.trash/`` and makes their rows ``stored`` again
(all of them, or the given dataset-relative paths).

The scores file is CSV with at least ``path`` (relative to the dataset folder) and ``loss``;
``predicted`` and ``probability`` are shown when present. Rows are matched to images by path,
or by content id (the file name's SHA-256) for images moved since scoring.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from crawler.catalog import CATALOG_NAME, REVIEW_DELETE, Catalog
from crawler.images.files import TRASH_DIR
from crawler.labels import sanitize_label

logger = logging.getLogger(__name__)

__all__ = ["ACTIONS", "ReviewError", "Score", "apply_decisions", "create_app", "decide", "load_scores", "main", "restore"]

ACTIONS = ("keep", "delete", "move")
#: The plan of an apply in progress, at the dataset root (a dot-file: never a label or image).
JOURNAL_NAME = ".review-apply.json"
DELETE_REASON = REVIEW_DELETE
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ReviewError(ValueError):
    """A decision that cannot be recorded or carried out; the message says why."""


@dataclass(frozen=True)
class Score:
    """One scores-file row: the model's loss on the image's label, its prediction and probability."""

    loss: float | None
    predicted: str = ""
    probability: float | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def load_scores(path: str | Path) -> dict[str, Score]:
    """Read a scores CSV (``trainer.predict`` output) into ``{key: Score}``.

    Keys are the ``path`` column and, for content-id file names, the SHA-256 stem too.

    Raises:
        ReviewError: the file has no ``path`` or ``loss`` column.
    """
    scores: dict[str, Score] = {}
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "loss"} <= set(reader.fieldnames):
            raise ReviewError(f"{path}: a scores file needs 'path' and 'loss' columns (python -m trainer.predict ... --out)")
        for row in reader:
            score = Score(_float(row.get("loss")), row.get("predicted") or "", _float(row.get("probability")))
            rel = row["path"].replace("\\", "/")
            scores[rel] = score
            stem = Path(rel).stem.lower()
            if _SHA256_HEX.fullmatch(stem):
                scores[stem] = score
    return scores


def _score_of(scores: dict[str, Score], path: str) -> Score | None:
    return scores.get(path) or scores.get(Path(path).stem.lower())


def open_catalog(root: Path) -> Catalog:
    """The dataset's catalog, after finishing any interrupted apply.

    Raises:
        ReviewError: ``root`` has no catalog (review works on crawled, catalogued datasets).
    """
    if not (root / CATALOG_NAME).is_file():
        raise ReviewError(f"{root} has no {CATALOG_NAME}: review needs a catalogued dataset (docs/dataset.md)")
    catalog = Catalog(root)
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
            "INSERT OR REPLACE INTO review (image_id, action, target_label, path, decided_at, applied_at) "
            "VALUES (?, ?, ?, ?, ?, NULL)",
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


def restore(root: str | Path, paths: list[str] | None = None) -> list[str]:
    """Move images deleted by review back from ``.trash/`` and make their rows ``stored`` again.

    Args:
        root: the dataset folder.
        paths: dataset-relative paths the images had (``label/<sha256>.jpg``); ``None``: all.

    Returns:
        The restored paths. Images whose trash file is gone or whose place is taken are skipped
        with a warning.
    """
    root = Path(root)
    with open_catalog(root) as catalog:
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


# -- listing ------------------------------------------------------------------------------


def label_counts(catalog: Catalog) -> list[dict[str, Any]]:
    """Per label of stored images: ``{"label", "count", "pending"}``, by label."""
    with catalog.transaction() as tx:
        rows = tx.execute(
            "SELECT i.label, COUNT(*) AS count, COUNT(r.image_id) AS pending FROM images i "
            "LEFT JOIN review r ON r.image_id = i.id AND r.applied_at IS NULL "
            "WHERE i.status = 'stored' GROUP BY i.label ORDER BY i.label"
        ).fetchall()
    return [dict(row) for row in rows]


def list_images(catalog: Catalog, scores: dict[str, Score], label: str, page: int = 1, per_page: int = 24) -> dict[str, Any]:
    """One page of the stored images of ``label``, highest loss first (unscored last)."""
    with catalog.transaction() as tx:
        rows = tx.execute(
            "SELECT i.id, i.path, i.width, i.height, r.action, r.target_label FROM images i "
            "LEFT JOIN review r ON r.image_id = i.id AND r.applied_at IS NULL "
            "WHERE i.status = 'stored' AND i.label = ?",
            (label,),
        ).fetchall()
    items = []
    for row in rows:
        score = _score_of(scores, row["path"])
        items.append(
            {
                "id": row["id"],
                "path": row["path"],
                "loss": score.loss if score else None,
                "predicted": score.predicted if score else "",
                "probability": score.probability if score else None,
                "decision": {"action": row["action"], "label": row["target_label"]} if row["action"] else None,
            }
        )
    items.sort(key=lambda item: (item["loss"] is None, -(item["loss"] or 0.0), item["path"]))
    pages = max(1, math.ceil(len(items) / per_page))
    page = min(max(1, page), pages)
    return {
        "label": label,
        "page": page,
        "pages": pages,
        "total": len(items),
        "images": items[(page - 1) * per_page : page * per_page],
    }


# -- web app --------------------------------------------------------------------------------


def create_app(root: str | Path, scores: dict[str, Score], *, per_page: int = 24):
    """The review web app (FastAPI) over dataset ``root`` (see module doc).

    Routes: ``GET /`` the page; ``GET /api/labels``; ``GET /api/images?label=&page=``;
    ``GET /image/{id}`` a stored image's bytes; ``PUT /api/decisions/{id}`` with JSON
    ``{"action": "keep"|"delete"|"move", "label": "..."}``; ``DELETE /api/decisions/{id}``;
    ``POST /api/apply``. Errors are 4xx with ``{"detail": "<why>"}``.

    Raises:
        ReviewError: ``root`` has no catalog.
    """
    from fastapi import Body, FastAPI, HTTPException, Query
    from fastapi.responses import FileResponse, HTMLResponse

    root = Path(root).resolve()
    catalog = open_catalog(root)
    page_html = resources.files("crawler").joinpath("templates/review.html").read_text(encoding="utf-8")
    app = FastAPI(title=f"Review {root.name}")
    app.router.on_shutdown.append(catalog.close)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page_html.replace("{{dataset}}", html.escape(root.name))

    @app.get("/api/labels")
    def labels() -> dict[str, Any]:
        counts = label_counts(catalog)
        return {"dataset": root.name, "labels": counts, "pending": sum(c["pending"] for c in counts)}

    @app.get("/api/images")
    def images(label: str, page: int = Query(1, ge=1)) -> dict[str, Any]:
        return list_images(catalog, scores, label, page, per_page)

    @app.get("/image/{image_id}")
    def image(image_id: int) -> FileResponse:
        row = catalog.get(image_id)
        if row is None or row["status"] != "stored" or not row["path"]:
            raise HTTPException(404, f"no stored image with id {image_id}")
        path = (root / row["path"]).resolve()
        if root not in path.parents or not path.is_file():  # a path from the catalog, still checked
            raise HTTPException(404, f"file of image {image_id} not found")
        return FileResponse(path)

    @app.put("/api/decisions/{image_id}")
    def put_decision(image_id: int, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        try:
            return {"decision": decide(catalog, image_id, body.get("action"), body.get("label"))}
        except ReviewError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.delete("/api/decisions/{image_id}")
    def delete_decision(image_id: int) -> dict[str, Any]:
        try:
            return {"decision": decide(catalog, image_id, None)}
        except ReviewError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/api/apply")
    def apply() -> dict[str, Any]:
        try:
            return apply_decisions(root, catalog)
        except OSError as exc:
            raise HTTPException(409, f"apply failed and was rolled back: {exc}") from None

    return app


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; 0 done, 2 bad dataset or scores file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["restore"]:
        parser = argparse.ArgumentParser(prog="python -m crawler.review restore", description="undo review deletions")
        parser.add_argument("dataset", type=Path)
        parser.add_argument("paths", nargs="*", help="dataset-relative paths the images had (default: all)")
        args = parser.parse_args(argv[1:])
        try:
            restored = restore(args.dataset, args.paths or None)
        except ReviewError as exc:
            logger.error("%s", exc)
            return 2
        for path in restored:
            print(path)
        return 0

    parser = argparse.ArgumentParser(prog="python -m crawler.review", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path, help="the dataset folder (with catalog.sqlite)")
    parser.add_argument("--scores", type=Path, required=True, help="CSV from `python -m trainer.predict ... --out`")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--per-page", type=int, default=24, help="images per page")
    args = parser.parse_args(argv)
    try:
        app = create_app(args.dataset, load_scores(args.scores), per_page=args.per_page)
    except (ReviewError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    import uvicorn

    logger.info("review %s at http://%s:%d/", args.dataset, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
