"""The optional resize before storing (``VERIFY_MAX_SIDE``), the catalog's record of both sizes,
the hash recipe (JPEGs hashed from a reduced-size decode), and what happens to datasets made
before: schema migration and rehashing."""

from __future__ import annotations

import hashlib
import io
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from crawler_testkit import encode, make_item, picture, run
from PIL import Image
from scrapy.exceptions import DropItem

from crawler.errors import UserError
from crawler.catalog import COLUMNS, SCHEMA_VERSION, Catalog
from crawler.images.decode import verify_image
from crawler.images.hashing import (
    CANONICAL_SIDE,
    HASH_RECIPE,
    canonical_size,
    decode_canonical_jpeg,
    hash_recipe,
    hashes_of,
    VARIANTS,
    image_hashes,
)
from crawler.images.pdq import LOOK_HEADER, UNCAPTIONED, WINDOWS
from crawler.pipelines.dedupe import DedupePipeline
from crawler.pipelines.prepare import PreparePipeline
from crawler.pipelines.store import StorePipeline

REPO = Path(__file__).resolve().parents[2]


def stored_chain(crawler: Any, build: Any) -> list[Any]:
    stages = [build(cls, crawler) for cls in (PreparePipeline, DedupePipeline, StorePipeline)]
    for stage in stages:
        if hasattr(stage, "open_spider"):
            stage.open_spider()
    return stages


def feed(stages: list[Any], body: bytes, label: str = "cats") -> Any:
    async def go() -> Any:
        item = make_item(label=label, body=body, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
        for stage in stages:
            item = await stage.process_item(item)
        return item

    return run(go())


def close(stages: list[Any]) -> None:
    for stage in stages:
        if hasattr(stage, "close_spider"):
            stage.close_spider()


# -- resize ------------------------------------------------------------------------------------


def test_max_side_resizes_a_jpeg_and_keeps_it_jpeg() -> None:
    body = encode(picture(1, (600, 400)), "JPEG", quality=92)
    result = verify_image(body, max_side=300, jpeg_quality=85)
    assert (result.width, result.height, result.source_width, result.source_height) == (300, 200, 600, 400)
    assert (result.format, result.reencoded, result.resized) == ("JPEG", True, True)
    with Image.open(io.BytesIO(result.body)) as stored:
        assert (stored.format, stored.size) == ("JPEG", (300, 200))
    assert len(result.body) < len(body)


def test_max_side_resizes_a_png_losslessly_and_leaves_small_images_alone() -> None:
    large = encode(picture(2, (500, 250)), "PNG")
    result = verify_image(large, max_side=200)
    assert (result.format, result.width, result.height, result.resized) == ("PNG", 200, 100, True)
    small = encode(picture(3, (150, 100)), "JPEG")
    kept = verify_image(small, max_side=200)
    assert (kept.body, kept.resized, kept.reencoded) == (small, False, False)
    assert (kept.width, kept.source_width) == (150, 150)


def test_max_side_applies_after_exif_orientation() -> None:
    image = picture(4, (400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display: 200 wide, 400 high
    body = encode(image, "JPEG", exif=exif.tobytes())
    result = verify_image(body, max_side=100)
    assert (result.width, result.height, result.source_width, result.source_height) == (50, 100, 200, 400)


@pytest.mark.parametrize("settings", [{"VERIFY_MAX_SIDE": -1}, {"VERIFY_JPEG_QUALITY": 0}, {"VERIFY_JPEG_QUALITY": 101}])
def test_bad_resize_settings_stop_the_crawl(make_crawler, build, settings) -> None:
    with pytest.raises(UserError, match=next(iter(settings))):
        build(PreparePipeline, make_crawler(**settings))


def test_resized_crawl_states_both_sizes_in_the_catalog(make_crawler, build, dataset_dir: Path) -> None:
    stages = stored_chain(make_crawler(VERIFY_MAX_SIDE=256), build)
    try:
        item = feed(stages, encode(picture(5, (640, 480)), "JPEG", quality=90))
    finally:
        close(stages)
    with Catalog(dataset_dir) as catalog:
        (row,) = catalog.rows("status = 'stored'")
    assert (row["width"], row["height"], row["source_width"], row["source_height"]) == (256, 192, 640, 480)
    assert row["path"] == item["path"]
    stored = (dataset_dir / row["path"]).read_bytes()
    assert row["path"].endswith(f"/{hashlib.sha256(stored).hexdigest()}.jpg")
    with Image.open(dataset_dir / row["path"]) as image:
        assert image.size == (256, 192)


def test_a_copy_replaces_a_resized_image_by_its_downloaded_size(make_crawler, build, dataset_dir: Path) -> None:
    """With VERIFY_MAX_SIDE both copies are stored at the same size; the larger download wins."""
    stages = stored_chain(make_crawler(VERIFY_MAX_SIDE=200), build)
    try:
        first = feed(stages, encode(picture(6, (480, 360)), "JPEG", quality=90))
        with pytest.raises(DropItem, match="near"):  # a smaller download of the same picture
            feed(stages, encode(picture(6, (400, 300)), "JPEG", quality=90))
        larger = feed(stages, encode(picture(6, (640, 480)), "JPEG", quality=90))
    finally:
        close(stages)
    with Catalog(dataset_dir) as catalog:
        (row,) = catalog.rows("status = 'stored'")
    assert row["path"] == larger["path"] != first["path"]
    assert (row["width"], row["source_width"]) == (200, 640)


# -- the hash recipe ---------------------------------------------------------------------------


def test_a_jpeg_is_hashed_from_its_reduced_size_decode() -> None:
    body = encode(picture(7, (1000, 750)), "JPEG", quality=90)
    result = verify_image(body)
    assert result.body == body and (result.width, result.height) == (1000, 750)
    assert result.image.size == canonical_size((1000, 750)) == (CANONICAL_SIDE, 120)
    assert image_hashes(result.image) == image_hashes(decode_canonical_jpeg(body))


def test_hashes_made_at_crawl_time_are_what_a_rehash_of_the_stored_file_gives() -> None:
    """Hashes follow the stored bytes (resized or not), so rehashing a dataset is exact."""
    for body, max_side in [
        (encode(picture(8, (900, 600)), "JPEG"), 0),
        (encode(picture(8, (900, 600)), "JPEG"), 300),
        (encode(picture(9, (700, 500)), "PNG"), 300),
        (encode(picture(10, (300, 200), mode="RGBA"), "PNG"), 0),  # re-encoded (alpha)
    ]:
        crawled = verify_image(body, max_side=max_side)
        again = verify_image(crawled.body)
        assert image_hashes(crawled.image) == image_hashes(again.image)


def test_truncated_and_corrupt_jpegs_are_caught_by_the_reduced_size_decode() -> None:
    from crawler.images.decode import Rejected

    body = encode(picture(11, (800, 600)), "JPEG", quality=90)
    with pytest.raises(Rejected) as truncated:
        verify_image(body[: len(body) * 2 // 3])
    assert truncated.value.reason == "truncated"
    # Random bytes in the entropy-coded data after the start of scan: a full-size decode
    # fails on them ("broken data stream"), and so does the reduced one.
    scan = body.index(b"\xff\xda")
    noise = random.Random(0).randbytes(len(body) - scan - 402)
    with pytest.raises(Rejected):
        verify_image(body[: scan + 400] + noise + body[-2:])


# -- datasets made before ----------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE images (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, label TEXT NOT NULL,
    status TEXT NOT NULL, path TEXT, reason TEXT, duplicate_of TEXT, hash_distance INTEGER,
    sha256 TEXT, phash TEXT, width INTEGER, height INTEGER, bytes INTEGER, format TEXT, url TEXT,
    page_url TEXT, spider TEXT, query TEXT, licence TEXT, author TEXT);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE image_hashes (image_id INTEGER NOT NULL, kind TEXT NOT NULL, hash TEXT NOT NULL,
    PRIMARY KEY (image_id, kind));
INSERT INTO meta VALUES ('schema_version', '1'), ('hash', 'phash'), ('hash_size', '8');
"""


def v1_dataset(root: Path, bodies: list[bytes]) -> None:
    """A dataset as the first release wrote it: schema 1, full-size phashes, no recipe."""
    root.mkdir(parents=True)
    conn = sqlite3.connect(root / "catalog.sqlite")
    conn.executescript(V1_SCHEMA)
    for n, body in enumerate(bodies):
        sha = hashlib.sha256(body).hexdigest()
        (root / "cats").mkdir(exist_ok=True)
        (root / "cats" / f"{sha}.jpg").write_bytes(body)
        conn.execute(
            "INSERT INTO images (created_at, label, status, path, sha256, phash, width, height) "
            "VALUES ('2026-01-01', 'cats', 'stored', ?, ?, ?, 300, 200)",
            (f"cats/{sha}.jpg", sha, f"{n:016x}"),  # hashes no current recipe would give
        )
    conn.commit()
    conn.close()


def test_a_version_1_catalog_gets_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    v1_dataset(tmp_path / "old", [encode(picture(12, (300, 200)), "JPEG")])
    with Catalog(tmp_path / "old") as catalog:
        assert catalog.meta()["schema_version"] == SCHEMA_VERSION == "3"
        (row,) = catalog.rows()
        assert tuple(row.keys()) == COLUMNS
        assert (row["width"], row["source_width"], row["pdq"]) == (300, None, None)
        assert catalog.look(row["id"]) is None
    with Catalog(tmp_path / "old") as catalog:  # opening again changes nothing
        assert len(catalog.rows()) == 1


def test_a_crawl_rehashes_a_dataset_made_with_another_recipe(make_crawler, build, dataset_dir: Path) -> None:
    bodies = [encode(picture(seed, (300, 200)), "JPEG", quality=90) for seed in (13, 14)]
    v1_dataset(dataset_dir, bodies)
    stages = stored_chain(make_crawler(), build)
    try:
        with Catalog(dataset_dir) as catalog:
            assert catalog.meta()["hash_recipe"] == HASH_RECIPE
            rows = catalog.rows("status = 'stored'")
            kinds = {row[0] for row in catalog._conn.execute("SELECT DISTINCT kind FROM image_hashes")}
            looks = [catalog.look(row["id"]) for row in rows]
        for row, body in zip(rows, bodies, strict=True):
            hashes = hashes_of(verify_image(body).image)  # pdq, the default
            assert (row["phash"], row["pdq"], row["pdq_quality"]) == (hashes["phash"], hashes["pdq"], hashes["pdq_quality"])
        # PDQ's windows, imagehash's phash windows and the colour signature their pairs need
        assert {*WINDOWS, *VARIANTS, "colour"} <= kinds <= {*WINDOWS, UNCAPTIONED, *VARIANTS, "colour"}
        assert all(look is not None and len(look) == LOOK_HEADER + 64 * 64 for look in looks)
        # The old images are found again: a recompressed copy is a near duplicate.
        copy = encode(Image.open(io.BytesIO(bodies[1])).convert("RGB").resize((150, 100)), "JPEG", quality=60)
        with pytest.raises(DropItem, match="near"):
            feed(stages, copy)
    finally:
        close(stages)


# The PDQ recipe before its phashes were resampled in floating point (Pillow's 8-bit resample).
PREVIOUS_PDQ_RECIPE = f"pdq256-sq64-dihedral-pdqwin2-phash8win9-look64-canonical{CANONICAL_SIDE}-jpegdraft"


def test_a_crawl_rehashes_a_catalog_of_the_previous_pdq_recipe(make_crawler, build, dataset_dir: Path) -> None:
    """A catalog that records the previous PDQ recipe (its phashes resampled in 8 bits: a few
    differ by 2 bits) gets today's hashes when a crawl opens it. Its hashes stand in as
    today's with every bit inverted, so that any not recomputed shows."""
    assert HASH_RECIPE != PREVIOUS_PDQ_RECIPE
    bodies = [encode(picture(seed, (300, 200)), "JPEG", quality=90) for seed in (18, 19)]
    stages = stored_chain(make_crawler(), build)
    try:
        for body in bodies:
            feed(stages, body)
    finally:
        close(stages)
    today = [hashes_of(verify_image(body).image) for body in bodies]
    kinds = ("phash", *VARIANTS)
    conn = sqlite3.connect(dataset_dir / "catalog.sqlite")  # as the previous recipe left it
    for body, hashes in zip(bodies, today, strict=True):
        stale = {k: f"{int(hashes[k], 16) ^ (2**64 - 1):016x}" for k in kinds}
        (row_id,) = conn.execute("SELECT id FROM images WHERE sha256 = ?", (hashlib.sha256(body).hexdigest(),)).fetchone()
        conn.execute("UPDATE images SET phash = ? WHERE id = ?", (stale["phash"], row_id))
        conn.executemany("UPDATE image_hashes SET hash = ? WHERE image_id = ? AND kind = ?", [(stale[k], row_id, k) for k in VARIANTS])
    conn.execute("UPDATE meta SET value = ? WHERE key = 'hash_recipe'", (PREVIOUS_PDQ_RECIPE,))
    conn.commit()
    conn.close()
    close(stored_chain(make_crawler(), build))  # a crawl opens the dataset
    with Catalog(dataset_dir) as catalog:
        assert catalog.meta()["hash_recipe"] == HASH_RECIPE
        for body, hashes in zip(bodies, today, strict=True):
            (row,) = catalog.rows("sha256 = ?", (hashlib.sha256(body).hexdigest(),))
            stored = dict(catalog._conn.execute("SELECT kind, hash FROM image_hashes WHERE image_id = ?", (row["id"],)).fetchall())
            assert {"phash": row["phash"], **{k: stored[k] for k in VARIANTS}} == {k: hashes[k] for k in kinds}


def test_rehash_command(tmp_path: Path) -> None:
    root = tmp_path / "old"
    v1_dataset(root, [encode(picture(15, (300, 200)), "JPEG")])
    (root / "cats" / "gone.jpg").write_bytes(b"")  # not catalogued: not rehash's business
    done = subprocess.run(
        [sys.executable, "-m", "crawler.dataset", "rehash", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "rehashed 1 images" in done.stderr
    with Catalog(root) as catalog:  # the hash the catalog records (phash), today's recipe
        assert catalog.meta()["hash_recipe"] == hash_recipe("phash")
    done = subprocess.run(
        [sys.executable, "-m", "crawler.dataset", "rehash", str(root), "--hash", "pdq"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with Catalog(root) as catalog:
        assert catalog.meta()["hash_recipe"] == HASH_RECIPE
        (row,) = catalog.rows("status = 'stored'")
        assert len(row["pdq"]) == 64 and len(catalog.look(row["id"]) or b"") == LOOK_HEADER + 64 * 64


# -- DEDUPE_HASH -------------------------------------------------------------------------------


def test_dedupe_hash_is_configurable_and_a_switch_rehashes(make_crawler, build, dataset_dir: Path) -> None:
    bodies = [encode(picture(seed, (300, 200)), "JPEG", quality=90) for seed in (16, 17)]
    stages = stored_chain(make_crawler(), build)  # pdq, the default
    try:
        for body in bodies:
            feed(stages, body)
    finally:
        close(stages)
    stages = stored_chain(make_crawler(DEDUPE_HASH="dhash"), build)  # a later crawl switches
    try:
        with Catalog(dataset_dir) as catalog:
            meta = catalog.meta()
            stored = {row["sha256"]: row["phash"] for row in catalog.rows("status = 'stored'")}
        assert (meta["hash"], meta["hash_recipe"]) == ("dhash", hash_recipe("dhash"))
        for body in bodies:
            expected = image_hashes(verify_image(body).image, "dhash")["phash"]
            assert stored[hashlib.sha256(body).hexdigest()] == expected
            assert expected != image_hashes(verify_image(body).image)["phash"]
        copy = encode(Image.open(io.BytesIO(bodies[0])).convert("RGB").resize((150, 100)), "JPEG", quality=60)
        with pytest.raises(DropItem, match="near"):
            feed(stages, copy)
    finally:
        close(stages)


@pytest.mark.parametrize("stage", [PreparePipeline, DedupePipeline])
def test_an_unknown_dedupe_hash_stops_the_crawl(make_crawler, build, stage) -> None:
    """DEDUPE_HASH is read one way: every stage that hashes or compares refuses the same value."""
    with pytest.raises(UserError, match="DEDUPE_HASH must be one of pdq, phash, dhash, average_hash, whash, got 'md5'"):
        build(stage, make_crawler(DEDUPE_HASH="md5"))
