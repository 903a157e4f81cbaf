"""Store stage: write the image to ``<DATASET_DIR>/<label>/<sha256>.<ext>`` and its catalog row.

The write is atomic: bytes go to a temporary file in ``DATASET_DIR/.tmp/`` (same filesystem),
are fsynced, then renamed into the label folder with ``os.replace``; the catalog row is committed
after the rename, so a killed crawl can leave at worst an uncatalogued file, never a row without
its file or half an image under a label.

The rename and the insert happen inside one ``BEGIN IMMEDIATE`` catalog transaction that first
re-checks the rows stored since the item's dedupe decision (``catalog_seen_id``): two copies of
one picture in flight at once, in this process or another, cannot both be stored.

Group commit: one thread (``catalog-commit``, ``crawler.threads.BatchThread``) takes every item
ready at the same moment and stores them in one transaction, in arrival order (so ids still
follow commit order): one ``BEGIN IMMEDIATE``/``COMMIT`` (and with ``STORE_FSYNC`` one fsync
per folder) for the batch. Each item is re-checked against the rows stored since its own
decision, the batch's earlier items included; the thread keeps those rows from batch to batch
and reads them again only when another connection has committed (SQLite's ``data_version``;
always with PostgreSQL). The file <-> row protocol is unchanged: every file is renamed before
the commit that catalogues it (the renames come last, after the batch's rows, just before the
``COMMIT``), so a kill mid-batch leaves uncatalogued files (as many as the batch renamed),
never a row without its file; a crawl of the same URLs stores them again under the same name.
Measured on 2000 images (``benchmarks/pipeline_throughput``, 2 cores shared with other work,
six alternating runs): the store's catalog work went from 0.9-1.1 CPU s (a thread-pool task, a
re-check query and a transaction per image) to 0.53-0.62 (1.4-1.9 images per batch).

Durability (``STORE_FSYNC``, default off). A killed process cannot leave half an image under a
label whether or not anything is fsynced: the kernel finishes a ``write`` that returned, and
``rename`` is atomic, so other processes (and ``check``) see either the old name or the complete
new file; the catalog (SQLite WAL, ``synchronous=NORMAL``) is likewise safe against kills. That
is the default: crash-safe, like SQLite's own WAL default, Scrapy's ``FilesPipeline`` and the
download tools this project is compared with. Power loss or a kernel crash can then lose the last
files or rows; ``python -m crawler.dataset check --repair`` afterwards brings the dataset back to
a consistent state. ``-s STORE_FSYNC=1`` makes it durable instead: each image and its folder entry
are fsynced before the catalog row that names them, and the store's catalog commits with
``synchronous=FULL``. It cost 10-25% of the crawl's throughput in ``benchmarks/pipeline_throughput``.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem, NotConfigured
from scrapy.utils.defer import deferred_from_coro

from crawler.catalog import Catalog
from crawler.labels import sanitize_label
from crawler.images.files import TMP_DIR, fsync_dir, image_path, move_to_trash, write_tmp
from crawler.images.matching import DedupeRule, Match, find_in_rows, mark_duplicate, source_pixels
from crawler.images.pdq import DIHEDRAL_KINDS
from crawler.setting_values import dedupe_rule, get_bool
from crawler.threads import BatchThread, sha256_hex

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["StorePipeline"]

_FULL = "max_images"
_REPLACED = "replaced"


def _full_picture(row: dict[str, Any]) -> dict[str, Any] | None:
    """The item's full-picture PDQ hashes as ``pdq_pair_match`` takes them, or ``None``
    without pdq (the dedupe stage set ``pdq_dihedral``, ``pdq_quality`` and ``look``)."""
    dihedral = row.get("pdq_dihedral")
    if not dihedral:
        return None
    return {
        **dict(zip(DIHEDRAL_KINDS, dihedral, strict=True)),
        "pdq_quality": row.get("pdq_quality") or 0,
        "look": row.get("look") or b"",
    }


# A task of the catalog-commit thread: the bytes or their temporary file, the row, max_images.
_Task = tuple["bytes | str", dict[str, Any], "int | None"]
# Columns of ``Catalog.stored_since`` rows, for the rows a batch adds itself.
_RECHECK_COLUMNS = (
    "label", "status", "path", "sha256", "phash", "pdq", "pdq_quality", "width", "height",
    "source_width", "source_height",
)


class _RolledBack(Exception):  # noqa: N818 (not an error a caller sees)
    """A batch's transaction failed before its commit and was rolled back."""


class _RowsSince:
    """The ``stored`` rows newer than ``since`` (``Catalog.stored_since``, read once per
    batch), plus the rows the batch has stored so far, and the in-transaction re-check of an
    item over the ones newer than its own dedupe decision.

    ``find_in_rows`` compares every row it is given (~13 us a row with pdq); rows here first
    pass a necessary condition read off its rule, on integers parsed once per batch: the same
    bytes, or (pdq) some flip or rotation of the item within ``max(DEDUPE_MAX_DISTANCE,
    DEDUPE_LOOK_DISTANCE)`` bits of the row's full-picture hash (the rows carry no window
    hashes, so nothing else can match), or (64-bit hashes) the phash within
    ``DEDUPE_MAX_DISTANCE``."""

    def __init__(self, catalog: Catalog, since: int, rule: DedupeRule) -> None:
        self.since = since
        self.rule = rule
        self.rows: list[Any] = list(catalog.stored_since(since))
        self.ids = [row["id"] for row in self.rows]  # ascending
        self.sha256s = [row["sha256"] for row in self.rows]
        self.codes = [self._code(row) for row in self.rows]

    def _code(self, row: Any) -> int | None:
        value = row["pdq"] if self.rule.pdq else row["phash"]
        return int(value, 16) if value else None

    def trim(self, since: int) -> None:
        """Forget the rows with ``id <= since`` (no pending item's decision is older)."""
        start = bisect.bisect_right(self.ids, since)
        if start:
            del self.rows[:start], self.ids[:start], self.sha256s[:start], self.codes[:start]
        self.since = since

    def add(self, row_id: int, row: dict[str, Any]) -> None:
        stored = {"id": row_id, **{key: row.get(key) for key in _RECHECK_COLUMNS}}
        self.rows.append(stored)
        self.ids.append(row_id)
        self.sha256s.append(stored["sha256"])
        self.codes.append(self._code(stored))

    def find(self, row: dict[str, Any], seen_id: int, look_of: Any) -> Match | None:
        rule = self.rule
        full = _full_picture(row)
        sha256 = row["sha256"]
        if rule.pdq and full:
            queries = [int(full[kind], 16) for kind in DIHEDRAL_KINDS]
            reach = max(rule.max_distance, rule.look_distance)
        else:
            phash = None if rule.pdq else row.get("phash")
            queries = [int(phash, 16)] if phash else []
            reach = rule.max_distance
        candidates = []
        codes, sha256s = self.codes, self.sha256s
        for i in range(bisect.bisect_right(self.ids, seen_id), len(self.ids)):
            code = codes[i]
            if sha256s[i] == sha256:
                candidates.append(self.rows[i])
            elif code is not None:
                for query in queries:
                    if (code ^ query).bit_count() <= reach:
                        candidates.append(self.rows[i])
                        break
        if not candidates:
            return None
        return find_in_rows(candidates, sha256, row.get("phash"), rule.max_distance, rule, full, look_of)


class StorePipeline:
    """Store each surviving image once, folder by label, with a ``stored`` catalog row.

    Settings:
        DATASET_DIR: the dataset folder (required; created if missing).
        DEDUPE_*: shared with the dedupe stage (``dedupe_rule``), for the in-transaction
            re-check (same bytes, or the full-picture rule: flips and rotations within
            ``DEDUPE_MAX_DISTANCE``, the quality gate and the second look; windows are left to
            the dedupe stage).
        STORE_FSYNC: durability against power loss (default off: crash-safe only): fsync
            each image and its folder before its row commits, which commits with
            ``synchronous=FULL`` (see the module docstring).

    The spider's ``max_images`` attribute (if set) caps how many images this crawl stores:
    when reached, the spider is closed (reason ``max_images``) and later items are dropped
    without a catalog row (they were never judged). Stores ``staged`` (the temporary file
    the prepare stage wrote, renamed into place) or else ``body``. Sets ``path`` and
    ``status = "stored"`` and removes ``body``. Stats: ``store/stored``, ``dedupe/<reason>``
    for late duplicates.

    Raises:
        NotConfigured: without DATASET_DIR.
        DropItem: ``exact``/``near``/``label_conflict`` for a duplicate found at commit time,
            ``max_images`` once the cap is reached.
    """

    def __init__(self, crawler: Crawler, *, dataset_dir: Path, rule: DedupeRule, fsync: bool) -> None:
        self.crawler = crawler
        self.dataset_dir = dataset_dir
        self.tmp_dir = dataset_dir / TMP_DIR
        self.rule = rule
        self.fsync = fsync
        self.catalog: Catalog | None = None
        self.committer: BatchThread[_Task] | None = None
        # The commit thread's copy of the rows stored lately (see _rows_since).
        self._recent: _RowsSince | None = None
        self._recent_version: int | None = None
        self._labels: dict[str, str] = {}  # sanitize_label's answers (one per label, not per image)
        self.stored = 0
        self._closing: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        dataset_dir = settings.get("DATASET_DIR")
        if not dataset_dir:
            raise NotConfigured("DATASET_DIR is not set (the dataset folder to store images in)")
        fsync = get_bool(settings, "STORE_FSYNC")
        return cls(crawler, dataset_dir=Path(dataset_dir), rule=dedupe_rule(settings), fsync=fsync)

    def open_spider(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(self.dataset_dir, url=self.crawler.settings.get("CATALOG_URL"), durable=self.fsync)
        self.committer = BatchThread(self._commit_batch, name="catalog-commit")

    def close_spider(self) -> None:
        if self.committer is not None:
            self.committer.close()
        if self.catalog is not None:
            self.catalog.close()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        stats = self.crawler.stats
        assert stats is not None
        max_images = getattr(self.crawler.spider, "max_images", None)
        if max_images is not None and self.stored >= max_images:
            adapter.pop("body", None)
            raise DropItem("max_images", log_level="DEBUG")
        raw_label = adapter["label"]
        label = self._labels.get(raw_label) if isinstance(raw_label, str) else None
        if label is None:
            label = sanitize_label(raw_label)
            if isinstance(raw_label, str):
                self._labels[raw_label] = label
        adapter["label"] = label
        staged = adapter.pop("staged", None)
        if staged:  # the prepare stage already wrote the bytes to a temporary file
            source: bytes | str = os.fspath(staged[0])
            digest = staged[1]
        else:
            source = adapter.pop("body")
            digest = await sha256_hex(source)
        adapter["path"] = image_path(label, digest, adapter["ext"])
        adapter["status"] = "stored"
        assert self.committer is not None
        # dict(item): one copy of a Mapping item (Scrapy's Item), not a lookup per field
        # through the adapter.
        row = dict(item) if isinstance(item, Mapping) else adapter.asdict()
        outcome = await self.committer.run((source, row, max_images))
        if outcome == _FULL:
            for key in ("path", "status"):
                adapter.pop(key, None)
            raise DropItem("max_images", log_level="DEBUG")
        if isinstance(outcome, Match):
            adapter.pop("path", None)
            mark_duplicate(adapter, outcome)
            stats.inc_value(f"dedupe/{adapter['reason']}")
            raise DropItem(adapter["reason"])
        if isinstance(outcome, tuple):  # (_REPLACED, how many stored copies it replaced)
            stats.inc_value("store/replaced", outcome[1])
        else:
            stats.inc_value("store/stored")
        if max_images is not None and self.stored >= max_images and self._closing is None:
            logger.info("stored %d images (max_images): closing the spider", self.stored)
            self._closing = deferred_from_coro(
                self.crawler.engine.close_spider_async(reason="max_images")
            )
        return item

    def _commit_batch(self, tasks: list[_Task]) -> list[Any]:
        """Store the items ready at the same moment (``(source, row, max_images)`` each:
        ``source`` is the bytes or the temporary file holding them, renamed or removed) in one
        catalog transaction (blocking; run by the ``catalog-commit`` thread). Returns one outcome
        per task: ``None`` for a new image, ``("replaced", n)`` when it took the place of ``n``
        smaller stored copies, the ``Match`` of a late duplicate, ``"max_images"``, or the
        exception that failed it.

        When the batch's transaction fails before its commit, it is rolled back, the files it
        renamed go back to their temporary names, and each item is tried again in a
        transaction of its own, so a bad row fails only its own item."""
        assert self.catalog is not None
        items: list[tuple[str, dict[str, Any], int | None]] = []
        outcomes: list[Any] = []
        stored: list[Any] = []
        try:
            for source, row, max_images in tasks:
                try:
                    tmp = os.fspath(write_tmp(source, self.tmp_dir, fsync=self.fsync)) if isinstance(source, bytes) else source
                except OSError as exc:
                    outcomes.append(exc)
                    continue
                items.append((tmp, row, max_images))
                outcomes.append(len(items) - 1)  # filled in below
            try:
                stored = self._commit(items)
            except _RolledBack:
                logger.debug("a catalog batch of %d failed: committing its items one by one", len(items), exc_info=True)
                stored = [self._commit_alone(item) for item in items]
            except Exception as exc:  # noqa: BLE001 (one item alone, or the commit itself failed)
                stored = [exc] * len(items)
            return [stored[outcome] if isinstance(outcome, int) else outcome for outcome in outcomes]
        finally:
            for (tmp, _, _), outcome in itertools.zip_longest(items, stored, fillvalue=_FULL):
                if outcome is not None and not isinstance(outcome, tuple):  # not renamed into place
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)

    def _commit_alone(self, item: tuple[str, dict[str, Any], int | None]) -> Any:
        """``_commit`` of one item; its exception is its outcome."""
        try:
            return self._commit([item])[0]
        except Exception as exc:  # noqa: BLE001 (the item's outcome)
            return exc

    def _commit(self, items: list[tuple[str, dict[str, Any], int | None]]) -> list[Any]:
        """One transaction for ``items`` (temporary file, row, max_images): for each, in order,
        the re-check against rows stored since its dedupe decision (and the items before it)
        and its rows, unless a duplicate was stored meanwhile or ``max_images`` is reached;
        then the renames into the label folders, then the ``COMMIT``. Commits of this process are serialised by the catalog's
        lock, so the count checked here is exact. The ``stored`` count and the demoted files'
        move to ``.trash/`` follow the commit.

        Raises:
            _RolledBack: (several items) the transaction failed before its commit; it was
                rolled back and the renamed files are back at their temporary names.
            Exception: (one item) the same failure, or (any) the failed ``COMMIT``.
        """
        assert self.catalog is not None
        outcomes: list[Any] = []
        demoted_all: list[str] = []
        added = 0
        folders: set[str] = set()
        moves: list[tuple[str, str]] = []  # (temporary file, its place in the dataset)
        renamed: list[tuple[str, str]] = []
        since = min(row.get("catalog_seen_id") or 0 for _, row, _ in items)
        body_done = False
        try:
            with self.catalog.transaction() as tx:
                newer: _RowsSince | None = None
                for tmp, row, max_images in items:
                    if max_images is not None and self.stored + added >= max_images:
                        outcomes.append(_FULL)
                        continue
                    if newer is None:
                        newer = self._rows_since(since)
                    match = newer.find(row, row.get("catalog_seen_id") or 0, self.catalog.look)
                    if match is not None:
                        if not match.upgraded_by(row["label"], source_pixels(row)):
                            outcomes.append(match)
                            continue
                        row = {**row, "replaces": [*(row.get("replaces") or []), (match.path, match.distance)]}
                    moves.append((tmp, os.path.join(self.dataset_dir, row["path"])))
                    row_id = self.catalog.insert(row, conn=tx)
                    demoted = [
                        old_path
                        for old_path, distance in row.get("replaces") or []
                        if self._demote(tx, old_path, distance, new_path=row["path"])
                    ]
                    if demoted:
                        demoted_all.extend(demoted)
                        newer = self._recent = None  # rows changed status: read them again
                        outcomes.append((_REPLACED, len(demoted)))
                    else:
                        newer.add(row_id, row)
                        added += 1
                        outcomes.append(None)
                # The files go into place last, just before the COMMIT, so that a kill leaves
                # as few uncatalogued files as it can.
                for tmp, target in moves:
                    try:
                        os.replace(tmp, target)
                    except FileNotFoundError:  # the label's first image (or its folder was removed)
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        os.replace(tmp, target)
                    renamed.append((tmp, target))
                    folders.add(os.path.dirname(target))
                if self.fsync:
                    for folder in folders:
                        fsync_dir(Path(folder))
                body_done = True
        except Exception as exc:
            self._recent = None  # it may hold rows the rollback took back
            if body_done:
                raise  # the COMMIT failed: whether it happened is unknown, the files stay
            for tmp, target in reversed(renamed):
                with contextlib.suppress(OSError):
                    os.replace(target, tmp)
            if len(items) > 1:
                raise _RolledBack from exc
            raise
        # A larger copy that replaces a stored image adds no image to the label:
        # max_images and store/stored count images kept, not files written.
        self.stored += added
        for old_path in demoted_all:
            self._trash(old_path)
        return outcomes

    def _rows_since(self, since: int) -> _RowsSince:
        """The stored rows newer than ``since`` (inside the transaction): the ones kept from
        the previous batches when no other connection committed since (``others_version``)
        and none is older than ``since``, else read again."""
        assert self.catalog is not None
        version = self.catalog.others_version()
        recent = self._recent
        if recent is None or version is None or version != self._recent_version or since < recent.since:
            recent = _RowsSince(self.catalog, since, self.rule)
        else:
            recent.trim(since)
        self._recent, self._recent_version = recent, version
        return recent

    def _demote(self, tx: Any, old_path: str, distance: int, *, new_path: str) -> bool:
        """Turn the stored row of ``old_path`` into a duplicate of ``new_path`` and re-point the
        rows that named it (inside the caller's transaction; the file moves to ``.trash/``
        after the commit). Returns whether a stored row was demoted (``False`` if it is gone
        already).

        Re-pointing, rather than keeping the first copy and recording the larger one as a
        duplicate, keeps the dataset's promise that the largest copy is the one stored (search
        results and shops serve thumbnails first), while ``duplicate_of`` still always names a
        stored image (issue 13)."""
        if old_path == new_path:
            return False
        updated = tx.execute(
            "UPDATE images SET status = 'duplicate', reason = 'near', duplicate_of = ?, "
            "hash_distance = ?, path = NULL WHERE path = ? AND status = 'stored'",
            (new_path, distance, old_path),
        ).rowcount
        if updated:
            tx.execute(
                "UPDATE images SET duplicate_of = ? WHERE duplicate_of = ? AND status = 'duplicate'",
                (new_path, old_path),
            )
            logger.info("replaced %s by the larger copy %s", old_path, new_path)
        return bool(updated)

    def _trash(self, path: str) -> None:
        """Move a demoted image to ``.trash/`` (after its row's commit, so a kill in between
        leaves an orphan file for ``check --repair``, never a stored row without its file)."""
        try:
            move_to_trash(self.dataset_dir, path)
        except OSError as exc:  # its row is a duplicate now: `check` reports the file
            logger.warning("could not move the replaced image %s to .trash/: %s", path, exc)
