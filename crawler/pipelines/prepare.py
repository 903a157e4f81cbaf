"""Prepare stage: verify, normalise and hash each downloaded image and stage the bytes to store.

A thin Scrapy adapter around ``crawler.images.prepare.prepare_image``: it reads the settings,
sends each item's bytes to the function (in a worker process, ``crawler.workers``, or without
one in a pipeline thread: the same function, the same result) and writes the result on the
item. Nothing about the URL or the Content-Type header is trusted (``crawler.images.decode``).
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.exceptions import DropItem

from crawler.errors import UserError
from crawler.images.decode import EXTENSIONS, FORMATS, Rejected
from crawler.images.files import TMP_DIR, discard
from crawler.images.prepare import PreparedImage, prepare_image
from crawler.setting_values import dedupe_rule, get_bool, get_int, get_list, get_raw
from crawler.threads import run_in_thread
from crawler.workers import WorkerCrashed, WorkerPool, acquire_pool, default_process_count, release_pool

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["PreparePipeline", "discard_staged"]


def discard_staged(item: Any) -> None:
    """Remove the temporary file of an item's ``staged`` bytes unless it is gone already
    (stored: renamed into its label folder)."""
    staged = ItemAdapter(item).get("staged")
    if staged:
        discard(staged[0])


class PreparePipeline:
    """Reject what is not a usable image; normalise, hash and stage what is.

    Settings (defaults and reasons in ``crawler/settings.py``):
        VERIFY_MIN_SIDE, VERIFY_MAX_PIXELS, VERIFY_MAX_BYTES: the smallest side (pixels), the
            largest width x height (pixels) and the largest download (bytes) accepted.
        VERIFY_FORMATS: Pillow formats accepted.
        VERIFY_MAX_SIDE, VERIFY_JPEG_QUALITY: resize images whose longest side is above this
            many pixels before storing (0: keep every original byte for byte); quality (1-95)
            of resized JPEG sources.
        DEDUPE_HASH, DEDUPE_VARIANT_DISTANCE: which hash to take, and whether the windows are
            hashed too (distance > 0).
        DATASET_DIR, STORE_FSYNC: where the bytes to store are staged (``DATASET_DIR/.tmp/``),
            and whether fsynced.
        PIPELINE_PROCESSES: worker processes for the per-image work (``None``: one per CPU but
            one, at least 1; 0: none, work in a pipeline thread); shared by the crawls of one
            process.

    On success sets ``width``, ``height``, ``source_width``, ``source_height``, ``format``,
    ``ext``, ``image_hashes`` (``{kind: hex}``, ``crawler.images.hashing.hashes_of``) and, with
    a dataset, ``staged`` (``(temporary file, SHA-256 hex)`` of the bytes to store, which
    replace ``body``); without one, ``body`` becomes the bytes to store. A staged file whose
    item is dropped, fails or is not stored is removed (signals ``item_dropped``,
    ``item_error``, ``item_scraped``). Stats: ``verify/ok``, ``verify/reencoded``,
    ``verify/resized``, ``verify/rejected/<reason>``; ``worker_crashed`` is the reason when the
    worker process died on the image (a crash in a native decoder, the OOM killer).

    Raises:
        UserError: on a setting out of range or of the wrong type (the crawl does not start: a
            disabled stage would let every item through unchecked).
        DropItem: with the ``Rejected`` reason (the item gets ``status = "rejected"``).
    """

    def __init__(
        self,
        crawler: Crawler,
        *,
        limits: dict[str, Any],
        hash_name: str,
        variants: bool,
        tmp_dir: Path | None,
        fsync: bool,
        processes: int,
    ) -> None:
        self.crawler = crawler
        self.limits = limits
        self.hash_name = hash_name
        self.variants = variants
        self.tmp_dir = tmp_dir
        self.fsync = fsync
        self.processes = processes
        self.pool: WorkerPool | None = None
        for signal in (signals.item_dropped, signals.item_error, signals.item_scraped):
            crawler.signals.connect(discard_staged, signal=signal)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        formats = frozenset(f.upper() for f in get_list(settings, "VERIFY_FORMATS"))
        if not formats or formats - FORMATS:
            raise UserError(
                f"VERIFY_FORMATS must be Pillow formats among {', '.join(sorted(FORMATS))}, got "
                f"{get_raw(settings, 'VERIFY_FORMATS')!r} (e.g. -s VERIFY_FORMATS=JPEG,PNG)"
            )
        limits = {
            "min_side": get_int(settings, "VERIFY_MIN_SIDE", unit="pixels", minimum=1, example=64),
            "max_pixels": get_int(settings, "VERIFY_MAX_PIXELS", unit="pixels", minimum=1, example=50_000_000),
            "max_bytes": get_int(settings, "VERIFY_MAX_BYTES", unit="bytes", minimum=1, example=33554432),
            "formats": formats,
            "max_side": get_int(
                settings, "VERIFY_MAX_SIDE", unit="pixels", minimum=0, example=512, note="0: no resize"
            ),
            "jpeg_quality": get_int(settings, "VERIFY_JPEG_QUALITY", minimum=1, maximum=95, example=90),
        }
        rule = dedupe_rule(settings)
        processes = get_raw(settings, "PIPELINE_PROCESSES")
        if processes not in (None, ""):
            processes = get_int(
                settings, "PIPELINE_PROCESSES", minimum=0, example=1, note="0: no worker processes"
            )
        dataset_dir = settings.get("DATASET_DIR")
        return cls(
            crawler,
            limits=limits,
            hash_name=rule.hash_name,
            variants=rule.variant_distance > 0,
            tmp_dir=Path(dataset_dir) / TMP_DIR if dataset_dir else None,
            fsync=get_bool(settings, "STORE_FSYNC"),
            processes=default_process_count(processes),
        )

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        stats = self.crawler.stats
        assert stats is not None
        args = (
            adapter.get("body") or b"", self.limits, self.hash_name, self.variants,
            None if self.tmp_dir is None else str(self.tmp_dir), self.fsync,
        )
        try:
            if self.pool is None:
                result: PreparedImage = await run_in_thread(prepare_image, *args)
            else:
                result = await self.pool.run(prepare_image, *args)
        except (Rejected, WorkerCrashed) as exc:
            crashed = isinstance(exc, WorkerCrashed)
            reason = "worker_crashed" if crashed else exc.reason
            adapter["status"] = "rejected"
            adapter["reason"] = reason
            adapter.pop("body", None)
            stats.inc_value(f"verify/rejected/{reason}")
            (logger.warning if crashed else logger.info)("rejected %s: %s", adapter.get("url", "")[:100], exc)
            raise DropItem(reason) from exc
        adapter["width"] = result.width
        adapter["height"] = result.height
        adapter["source_width"] = result.source_width
        adapter["source_height"] = result.source_height
        adapter["format"] = result.format
        adapter["ext"] = EXTENSIONS[result.format]
        adapter["image_hashes"] = result.hashes
        if result.staged is not None:
            adapter["staged"] = (result.staged, result.sha256)
            adapter.pop("body", None)
        elif result.body is not None:
            adapter["body"] = result.body
        stats.inc_value("verify/ok")
        if result.reencoded:
            stats.inc_value("verify/reencoded")
        if result.resized:
            stats.inc_value("verify/resized")
        return item

    def open_spider(self) -> None:
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.pool = acquire_pool(self.processes)

    def close_spider(self) -> Coroutine[Any, Any, None] | None:
        """Release the worker pool: a coroutine for Scrapy to await, or ``None`` without one."""
        if self.pool is None:
            return None
        self.pool = None
        return release_pool()
