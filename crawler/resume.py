"""What a resumed ``JOBDIR`` job has already done, read back from the catalog.

Scrapy persists a job's scheduler queue, dupefilter and ``spider.state`` only when the crawl
stops gracefully. After a SIGKILL (or a power cut) ``JOBDIR`` holds an empty queue folder and a
dupefilter file whose buffered fingerprints never reached the disk, so a resumed crawl cannot
rely on them. The catalog is what survives: every stored image and every judged drop is a
committed row. A job therefore remembers, on its first start, where the catalog stood
(``JOBDIR/catalog-mark.json``: the last row id per ``<spider>/<label>``), and a resumed run
skips the image URLs this job already wrote a row for. Images that were in flight at the kill
have no row and are simply fetched again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from crawler.catalog import Catalog

logger = logging.getLogger(__name__)

__all__ = ["MARK_NAME", "judged_urls"]

MARK_NAME = "catalog-mark.json"


def judged_urls(
    dataset_dir: str | os.PathLike[str], jobdir: str | os.PathLike[str], spider: str, label: str,
    catalog_url: str | None = None,
) -> set[str]:
    """Image URLs the job in ``jobdir`` already recorded in the catalog for ``label`` (blocking;
    ``catalog_url``: CATALOG_URL).

    On the job's first start this records the catalog's last row id in ``jobdir`` and returns
    an empty set. ``data:`` URIs are kept truncated in the catalog, so they never match and are
    judged again (as ``exact`` duplicates when they were stored).
    """
    mark_path = Path(jobdir) / MARK_NAME
    marks: dict[str, int] = {}
    if mark_path.exists():
        try:
            marks = json.loads(mark_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("unreadable %s: treating the job as new", mark_path)
            marks = {}
    key = f"{spider}/{label}"
    catalog = Catalog(dataset_dir, url=catalog_url)
    try:
        if key in marks:
            rows = catalog.rows("label = ? AND spider = ? AND id > ?", (label, spider, int(marks[key])))
            urls = {row["url"] for row in rows if row["url"] and not row["url"].startswith("data:")}
            logger.info(
                "resuming job %s: %d image URLs of label %r already in the catalog are skipped",
                jobdir, len(urls), label,
            )
            return urls
        last = catalog.rows("id = (SELECT MAX(id) FROM images)")
        marks[key] = int(last[0]["id"]) if last else 0
    finally:
        catalog.close()
    _write_json(mark_path, marks)
    return set()


def _write_json(path: Path, data: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mark-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
