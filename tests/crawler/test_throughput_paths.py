"""The fast paths behind crawl throughput give the same answers as the plain ones: batched
phash (bit for bit imagehash's), batched index queries; and the store under concurrent items
and with ``STORE_FSYNC`` off."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pytest
import scipy.fftpack
from crawler_testkit import encode, make_item, picture
from PIL import Image, ImageOps, ImageStat
from scrapy.exceptions import DropItem

from crawler.catalog import Catalog
from crawler.hashindex import MultiIndexHashIndex
from crawler.images.hashing import (
    CANONICAL_SIDE,
    COLOUR_KIND,
    VARIANTS,
    hashes_of,
    image_hashes,
    _phash_rows,
    phash_many,
    phash_boxes,
    trim_borders,
)
from crawler.images.borders import trim_box
from crawler.images.pdq import _caption_box
from crawler.pipelines.dedupe import DedupePipeline
from crawler.pipelines.prepare import PreparePipeline
from crawler.pipelines.store import StorePipeline
from crawler.threads import INLINE_HASH_BYTES, sha256_hex


def reference_trim(image: Image.Image) -> Image.Image:
    """``trim_borders`` as first written: every row and column tested at once."""
    return image.crop(reference_trim_box(image))


def reference_trim_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The box ``reference_trim`` keeps, in pixels."""
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    top, left = 0, 0
    bottom, right = grey.shape
    for _ in range(3):
        changed = False
        for side in "tblr":
            window = grey[top:bottom, left:right]
            if min(window.shape) < 16:
                break
            edge = {"t": window[0], "b": window[-1], "l": window[:, 0], "r": window[:, -1]}[side]
            uniform = (np.abs(window - np.median(edge)) <= 40).mean(axis=1 if side in "tb" else 0) >= 0.97
            run = uniform if side in "tl" else uniform[::-1]
            count = len(run) if run.all() else int(np.argmin(run))
            if count == 0 or count > len(run) * 0.4:
                continue
            changed = True
            if side == "t":
                top += count
            elif side == "b":
                bottom -= count
            elif side == "l":
                left += count
            else:
                right -= count
        if not changed:
            break
    return left, top, right, bottom


def reference_hashes(image: Image.Image) -> dict[str, str]:
    """``image_hashes`` written the plain way: imagehash on the canonical image and on each RGB
    window of it (the recipe every catalogued hash is made with)."""
    canonical = image
    if max(image.size) > CANONICAL_SIDE:
        scale = CANONICAL_SIDE / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        canonical = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    hashes = {"phash": str(imagehash.phash(canonical, hash_size=8))}
    trimmed = reference_trim(canonical)
    w, h = trimmed.size
    stat = ImageStat.Stat(trimmed.crop((round(0.1 * w), round(0.1 * h), round(0.9 * w), round(0.9 * h))))
    hashes[COLOUR_KIND] = bytes(min(255, round(v)) for v in (*stat.mean, *stat.stddev)).hex()
    for kind, box in VARIANTS.items():
        source = trimmed if kind == "trim90" else canonical
        w, h = source.size
        window = source.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
        hashes[kind] = str(imagehash.phash(window, hash_size=8))
    return hashes


def photo_like(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    fine = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return Image.blend(coarse, fine, 0.35)


def reference_caption_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """``crawler.images.pdq._caption_box`` as first written: every row of each 30% band tested."""
    height, width = grey.shape
    limit = int(height * 0.3)
    values = grey.astype(np.int16)
    cut = []
    for rows in (values[:limit], values[::-1][:limit]):
        if not len(rows):
            cut.append(0)
            continue
        uniform = (np.abs(rows - np.median(rows[0])) <= 40).mean(axis=1) >= 0.75
        cut.append(len(rows) if uniform.all() else int(np.argmin(uniform)))
    return 0, cut[0], width, height - cut[1]


def edged(seed: int) -> np.ndarray:
    """A grey picture whose edges are uniform, nearly so or not at all, in every combination:
    bands of a flat level with a share of noisy pixels near the thresholds (75%, 97%)."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (int(rng.integers(4, 90)), int(rng.integers(4, 90)))).astype(np.uint8)
    for lines in (grey, grey[::-1], grey.T, grey.T[::-1]):  # views: writing a band writes grey
        if rng.random() < 0.6:
            band = lines[: int(rng.integers(1, max(2, len(lines) // 2)))]
            band[...] = rng.integers(0, 256)
            noisy = rng.random(band.shape) < rng.choice([0.0, 0.02, 0.03, 0.05, 0.25, 0.3])
            band[noisy] = rng.integers(0, 256, int(noisy.sum()))
    return grey


def test_trim_and_caption_boxes_equal_the_plain_ones() -> None:
    """The edge-first shortcuts of ``trim_box`` and ``_caption_box`` (and their medians by
    partition) give the boxes the plain row-by-row versions give."""
    trimmed = captioned = 0
    for seed in range(400):
        grey = edged(seed)
        full = (0, 0, grey.shape[1], grey.shape[0])
        assert trim_box(grey) == reference_trim_box(Image.fromarray(grey)), seed
        assert _caption_box(grey) == reference_caption_box(grey), seed
        trimmed += trim_box(grey) != full
        captioned += _caption_box(grey) != full
    assert trimmed > 100 and captioned > 100  # both paths taken, often


def test_phash_many_is_imagehash_phash_bit_for_bit() -> None:
    rng = random.Random(0)
    greys = [photo_like(n, (rng.randint(8, 400), rng.randint(8, 400))).convert("L") for n in range(150)]
    greys += [Image.new("L", (50, 40), 128), Image.new("L", (33, 90), 0)]  # flat: all-equal DCT
    assert phash_many(greys) == [str(imagehash.phash(g, hash_size=8)) for g in greys]


@pytest.mark.parametrize("seed", range(12))
def test_image_hashes_match_the_plain_recipe(seed: int) -> None:
    rng = random.Random(seed)
    image = photo_like(seed, (rng.randint(40, 700), rng.randint(40, 700)))
    copies = [
        image,
        ImageOps.pad(image, (max(image.size),) * 2, color="white"),  # letterbox
        ImageOps.expand(image, border=12, fill="black"),  # frame
        ImageOps.expand(ImageOps.pad(image, (max(image.size),) * 2, color="white"), border=9, fill="grey"),
        ImageOps.expand(image, border=(0, 0, 0, max(8, image.size[1] // 8)), fill="white"),  # caption bar
        image.rotate(3, expand=True, fillcolor="white"),
        image.convert("L").convert("RGB"),
    ]
    for copy in copies:
        assert trim_borders(copy).size == reference_trim(copy).size
        assert image_hashes(copy) == reference_hashes(copy)
        assert list(image_hashes(copy)) == list(reference_hashes(copy))


def float_phash(grey: Image.Image, box: tuple[float, float, float, float]) -> tuple[str, np.ndarray]:
    """imagehash's phash recipe of ``box`` of ``grey`` with Pillow resampling in floating point
    (mode ``F``) instead of 8 bits, and its 8x8 DCT coefficients."""
    window = np.asarray(grey.convert("F").resize((32, 32), Image.Resampling.LANCZOS, box=box), dtype=np.float64)
    low = scipy.fftpack.dct(scipy.fftpack.dct(window, axis=0), axis=1)[:8, :8]
    return np.packbits(low > np.median(low)).tobytes().hex(), low


def test_phash_boxes_are_phash_of_a_float_lanczos_resample() -> None:
    """``phash_boxes`` is Pillow's LANCZOS (its float path) and scipy's DCT as one linear map:
    the same coefficients, hence the same bits; imagehash's 8-bit resample moves a few."""
    rng = random.Random(2)
    differing = 0
    for n in range(60):
        grey = photo_like(n, (rng.randint(16, 160), rng.randint(16, 160))).convert("L")
        x0, y0 = rng.uniform(0, grey.width / 3), rng.uniform(0, grey.height / 3)
        boxes = [(0, 0, *grey.size), (x0, y0, rng.uniform(x0 + 4, grey.width), rng.uniform(y0 + 4, grey.height))]
        for box, value in zip(boxes, phash_boxes(np.asarray(grey), boxes), strict=True):
            assert value == float_phash(grey, box)[0]
            bits = bin(int(value, 16) ^ int(str(imagehash.phash(grey.resize((32, 32), Image.Resampling.LANCZOS, box=box))), 16))
            assert bits.count("1") <= 4
            differing += bits.count("1") > 0
    assert differing < 24  # of 120: mostly the same hash
    # The coefficients themselves, not only their order.
    grey = photo_like(7, (160, 107)).convert("L")
    box = (16.0, 10.7, 144.0, 96.3)
    ours = _phash_rows(box[1], box[3], grey.height) @ np.asarray(grey, dtype=np.float64) @ _phash_rows(box[0], box[2], grey.width).T
    assert np.allclose(ours, float_phash(grey, box)[1], rtol=0, atol=0.05)


@pytest.mark.parametrize("seed", range(6))
def test_pdq_recipe_phashes_are_the_phash_recipes_resampled_in_floating_point(seed: int) -> None:
    """Under PDQ the 64-bit kinds are the phash recipe's windows of the canonical image (the
    plain recipe's boxes) hashed by ``phash_boxes``: phash with a float resample. They are the
    phash recipe's hashes but for a few bits; the colour signature is the same."""
    rng = random.Random(seed)
    image = photo_like(seed, (rng.randint(40, 700), rng.randint(40, 700)))
    copies = [
        image,
        ImageOps.pad(image, (max(image.size),) * 2, color="white"),  # letterbox: trim90 differs
        ImageOps.expand(image, border=(0, 0, 0, max(8, image.size[1] // 8)), fill="white"),  # caption bar
    ]
    for copy in copies:
        hashes = hashes_of(copy, "pdq")
        plain = reference_hashes(copy)
        canonical = copy
        if max(copy.size) > CANONICAL_SIDE:
            scale = CANONICAL_SIDE / max(copy.size)
            canonical = copy.resize((round(copy.width * scale), round(copy.height * scale)), Image.Resampling.LANCZOS, reducing_gap=2.0)
        grey = canonical.convert("L")
        left, top, right, bottom = reference_trim_box(canonical)
        for kind, fractions in {"phash": (0.0, 0.0, 1.0, 1.0), **VARIANTS}.items():
            w, h = (right - left, bottom - top) if kind == "trim90" else canonical.size
            x0, y0 = (left, top) if kind == "trim90" else (0, 0)
            box = (round(fractions[0] * w) + x0, round(fractions[1] * h) + y0, round(fractions[2] * w) + x0, round(fractions[3] * h) + y0)
            assert hashes[kind] == float_phash(grey, box)[0], kind
        assert hashes[COLOUR_KIND] == plain[COLOUR_KIND]
        distances = [bin(int(hashes[k], 16) ^ int(plain[k], 16)).count("1") for k in ("phash", *VARIANTS)]
        assert max(distances) <= 4 and sum(distances) / len(distances) <= 2, distances
    assert hashes_of(image, "pdq", variants=False)["phash"] == hashes_of(image, "pdq")["phash"]


def test_query_batch_equals_single_queries_with_and_without_a_merge() -> None:
    rng = random.Random(3)
    index = MultiIndexHashIndex(8, substrings=5)
    stored = [rng.getrandbits(64) for _ in range(700)]
    for key, value in enumerate(stored):
        index.add(value, key)  # some merged, the last ones still in the buffer
    queries = [stored[n] ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for n in range(0, 700, 7)]
    queries += [rng.getrandbits(64) for _ in range(20)] + [stored[-1], stored[-1]]
    for radius in (0, 3, 8):
        assert index.query_batch(queries, radius) == [index.query(q, radius) for q in queries]
    assert index.query_batch([]) == []


def store_crawl(make_crawler: Any, build: Any, **settings: Any) -> tuple[PreparePipeline, DedupePipeline, StorePipeline]:
    crawler = make_crawler(**settings)
    stages = tuple(build(cls, crawler) for cls in (PreparePipeline, DedupePipeline, StorePipeline))
    for stage in stages[1:]:
        stage.open_spider()
    return stages  # type: ignore[return-value]


async def through(stages: Any, body: bytes, label: str = "cats") -> Any:
    item = make_item(label=label, body=body, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    for stage in stages:
        item = await stage.process_item(item)
    return item


def test_items_reaching_the_store_at_once_are_each_rechecked(make_crawler, build, dataset_dir: Path) -> None:
    """Many items reaching the store at once (worker threads): a copy of a picture among them
    is still caught, and every file has its row."""
    stages = store_crawl(make_crawler, build)
    bodies = [encode(picture(n), "PNG") for n in range(12)]
    bodies.append(encode(picture(3).resize((96, 96), Image.Resampling.LANCZOS), "JPEG", quality=70))

    async def all_at_once() -> list[Any]:
        verified = [await stages[1].process_item(await stages[0].process_item(
            make_item(body=b, bytes=len(b), sha256=hashlib.sha256(b).hexdigest()))) for b in bodies]
        return await asyncio.gather(*(stages[2].process_item(item) for item in verified), return_exceptions=True)

    results = asyncio.run(all_at_once())
    stored = [r for r in results if not isinstance(r, BaseException)]
    dropped = [str(r) for r in results if isinstance(r, DropItem)]
    assert len(stored) == 12 and dropped == ["near"]
    files = sorted(p.name for p in (dataset_dir / "cats").iterdir())
    with Catalog(dataset_dir) as catalog:
        rows = catalog.rows("status = 'stored'")
    assert sorted(Path(r["path"]).name for r in rows) == files and len(files) == 12
    assert list((dataset_dir / ".tmp").iterdir()) == []
    stages[1].close_spider()
    stages[2].close_spider()


def test_a_failing_item_rolls_back_alone(make_crawler, build, dataset_dir: Path, monkeypatch) -> None:
    stages = store_crawl(make_crawler, build)
    store = stages[2]
    insert = store.catalog.insert

    def failing_insert(row: dict[str, Any], **kwargs: Any) -> int:
        if row["sha256"] == bad_sha:
            raise OSError("disk full (test)")
        return insert(row, **kwargs)

    bad = encode(picture(21), "PNG")
    bad_sha = hashlib.sha256(bad).hexdigest()
    monkeypatch.setattr(store.catalog, "insert", failing_insert)

    async def both() -> list[Any]:
        return await asyncio.gather(
            through(stages, bad), through(stages, encode(picture(22), "PNG")), return_exceptions=True
        )

    failed, ok = asyncio.run(both())
    assert isinstance(failed, OSError) and ok["status"] == "stored"
    with Catalog(dataset_dir) as catalog:
        assert [r["sha256"] for r in catalog.rows()] == [ok["sha256"]]
    stages[1].close_spider()
    stages[2].close_spider()


def gate_commits(store: StorePipeline) -> tuple[threading.Event, list[int], list[int]]:
    """Hold the store's commit thread until the returned event is set; record each batch's
    size and count the catalog's COMMITs."""
    gate, sizes, commits = threading.Event(), [], []
    func, commit = store.committer.func, store.catalog._engine.commit

    def gated(tasks: list[Any]) -> list[Any]:
        assert gate.wait(30)
        sizes.append(len(tasks))
        return func(tasks)

    def counted() -> None:
        commits.append(1)
        commit()

    store.committer.func = gated
    store.catalog._engine.commit = counted
    return gate, sizes, commits


async def all_queued(stages: Any, bodies: list[bytes], gate: threading.Event) -> list[Any]:
    """Every body through prepare and dedupe, then all into the store at once; the gate opens
    once they all wait for the commit thread."""
    items = []
    for body in bodies:
        item = make_item(body=body, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
        items.append(await stages[1].process_item(await stages[0].process_item(item)))
    stored = [asyncio.ensure_future(stages[2].process_item(item)) for item in items]
    await asyncio.sleep(0.2)
    gate.set()
    return await asyncio.gather(*stored, return_exceptions=True)


def test_items_ready_at_once_are_stored_in_one_transaction_each_rechecked(make_crawler, build, dataset_dir: Path) -> None:
    """Group commit: the items waiting together go in one transaction (one COMMIT), their ids in
    arrival order; a copy of a picture stored earlier in the same batch is still caught."""
    stages = store_crawl(make_crawler, build)
    gate, sizes, commits = gate_commits(stages[2])
    bodies = [encode(picture(n), "PNG") for n in range(40, 48)]
    bodies.append(encode(picture(43).resize((96, 96), Image.Resampling.LANCZOS), "JPEG", quality=70))
    results = asyncio.run(all_queued(stages, bodies, gate))
    assert [str(r) for r in results if isinstance(r, DropItem)] == ["near"]
    stored = [r for r in results if not isinstance(r, BaseException)]
    assert len(stored) == 8
    assert max(sizes) >= 8 and len(commits) == len(sizes) < len(bodies)
    with Catalog(dataset_dir) as catalog:
        rows = catalog.rows("status = 'stored'")
    assert [r["sha256"] for r in rows] == [item["sha256"] for item in stored]  # ids in arrival order
    assert sorted(r["path"] for r in rows) == sorted(f"cats/{p.name}" for p in (dataset_dir / "cats").iterdir())
    assert list((dataset_dir / ".tmp").iterdir()) == []
    stages[1].close_spider()
    stages[2].close_spider()


def test_a_failing_item_in_a_batch_fails_alone(make_crawler, build, dataset_dir: Path, monkeypatch) -> None:
    """One item whose row cannot be written fails alone: the batch is rolled back, its renamed
    files go back, and the others are committed one by one; no file is left without its row."""
    stages = store_crawl(make_crawler, build)
    store = stages[2]
    gate, sizes, _ = gate_commits(store)
    insert = store.catalog.insert
    bodies = [encode(picture(n), "PNG") for n in range(50, 56)]
    bad_sha = hashlib.sha256(bodies[3]).hexdigest()

    def failing_insert(row: dict[str, Any], **kwargs: Any) -> int:
        if row["sha256"] == bad_sha:
            raise OSError("disk full (test)")
        return insert(row, **kwargs)

    monkeypatch.setattr(store.catalog, "insert", failing_insert)
    results = asyncio.run(all_queued(stages, bodies, gate))
    assert max(sizes) > 3
    assert isinstance(results[3], OSError)
    assert all(r["status"] == "stored" for n, r in enumerate(results) if n != 3)
    with Catalog(dataset_dir) as catalog:
        rows = catalog.rows()
    assert sorted(r["sha256"] for r in rows) == sorted(hashlib.sha256(b).hexdigest() for n, b in enumerate(bodies) if n != 3)
    assert sorted(r["path"] for r in rows) == sorted(f"cats/{p.name}" for p in (dataset_dir / "cats").iterdir())
    assert list((dataset_dir / ".tmp").iterdir()) == []
    stages[1].close_spider()
    stages[2].close_spider()


def test_a_file_that_cannot_be_moved_into_place_fails_alone(make_crawler, build, dataset_dir: Path, monkeypatch) -> None:
    """A rename that fails at the end of a batch: the rows are rolled back, the files already
    moved go back to ``.tmp/``, the other items are stored one by one, and no file is left
    under a label without its row."""
    stages = store_crawl(make_crawler, build)
    gate, sizes, _ = gate_commits(stages[2])
    bodies = [encode(picture(n), "PNG") for n in range(70, 76)]
    bad_sha = hashlib.sha256(bodies[4]).hexdigest()
    replace = os.replace

    def failing_replace(source: Any, target: Any) -> None:
        if bad_sha in str(target):
            raise OSError("read-only folder (test)")
        replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    results = asyncio.run(all_queued(stages, bodies, gate))
    assert max(sizes) > 4
    assert isinstance(results[4], OSError)
    assert all(r["status"] == "stored" for n, r in enumerate(results) if n != 4)
    with Catalog(dataset_dir) as catalog:
        rows = catalog.rows()
    assert len(rows) == 5 and bad_sha not in {r["sha256"] for r in rows}
    assert sorted(r["path"] for r in rows) == sorted(f"cats/{p.name}" for p in (dataset_dir / "cats").iterdir())
    assert list((dataset_dir / ".tmp").iterdir()) == []
    stages[1].close_spider()
    stages[2].close_spider()


def test_a_copy_another_process_stored_is_caught_after_earlier_batches(make_crawler, build, dataset_dir: Path) -> None:
    """The commit thread keeps the rows it read for the next batches, but reads again once
    another connection committed (SQLite ``data_version``): a copy stored by another process
    after this item's dedupe decision is still found."""
    ours = store_crawl(make_crawler, build)
    theirs = store_crawl(make_crawler, build)
    asyncio.run(through(ours, encode(picture(60), "PNG")))  # a batch: the kept rows are warm
    body = encode(picture(61), "PNG")

    async def copy_stored_meanwhile() -> Any:
        item = make_item(body=body, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
        item = await ours[1].process_item(await ours[0].process_item(item))  # decided: unique
        copy = encode(picture(61).resize((160, 160), Image.Resampling.LANCZOS), "JPEG", quality=90)  # larger: it stays
        await through(theirs, copy)  # another process stores a copy now
        return await ours[2].process_item(item)

    with pytest.raises(DropItem, match="near"):
        asyncio.run(copy_stored_meanwhile())
    for stages in (ours, theirs):
        stages[1].close_spider()
        stages[2].close_spider()


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("0", False), ("1", True)])
def test_store_fsync_setting(make_crawler, build, value: str | None, expected: bool) -> None:
    settings = {} if value is None else {"STORE_FSYNC": value}
    store = build(StorePipeline, make_crawler(**settings))
    assert store.fsync is expected
    store.open_spider()
    try:  # SQLite's synchronous: 1 NORMAL (safe against kills), 2 FULL (against power loss)
        assert store.catalog._conn.execute("PRAGMA synchronous").fetchone()[0] == (2 if expected else 1)
    finally:
        store.close_spider()


def test_store_without_fsync_still_writes_whole_files(make_crawler, build, dataset_dir: Path) -> None:
    stages = store_crawl(make_crawler, build, STORE_FSYNC=False)
    body = encode(picture(30), "JPEG")
    item = asyncio.run(through(stages, body))
    assert (dataset_dir / item["path"]).read_bytes() == body
    stages[1].close_spider()
    stages[2].close_spider()


@pytest.mark.parametrize("size", [0, 10, INLINE_HASH_BYTES, INLINE_HASH_BYTES + 1, 3 * INLINE_HASH_BYTES])
def test_sha256_hex_inline_or_in_a_thread(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert asyncio.run(sha256_hex(data)) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("seed", range(4))
def test_colour_stats_are_imagestats_bit_for_bit(seed: int) -> None:
    """The colour signature's mean and standard deviation, summed by numpy, equal Pillow's
    ``ImageStat`` exactly (flat, posterised and noisy images, odd sizes)."""
    from crawler.images.hashing import _colour_stats

    rng = np.random.default_rng(seed)
    for _ in range(200):
        width, height = (int(v) for v in rng.integers(1, 120, 2))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels = (pixels // 64) * 64 if seed % 2 else pixels  # few distinct levels
        image = Image.fromarray(pixels, "RGB")
        stat = ImageStat.Stat(image)
        assert _colour_stats(image) == (stat.mean, stat.stddev)


class _RowsOf:
    """A catalog whose ``stored_since`` answers from a list (the re-check's only read)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def stored_since(self, last_id: int) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["id"] > last_id]


@pytest.mark.parametrize("hash_name", ["pdq", "phash"])
def test_the_store_recheck_prefilter_finds_what_find_in_rows_finds(make_crawler, hash_name: str) -> None:
    """The store's re-check passes only rows that can match to ``find_in_rows``: on random
    hashes with near and exact copies among them, its answer is ``find_in_rows``'s over every
    row newer than the item's decision."""
    from crawler.images.matching import find_in_rows
    from crawler.images.pdq import DIHEDRAL_KINDS
    from crawler.pipelines.store import _full_picture, _RowsSince
    from crawler.setting_values import dedupe_rule

    rule = dedupe_rule(make_crawler(DEDUPE_HASH=hash_name).settings)
    rng = random.Random(hash_name)
    bits = 256 if rule.pdq else 64

    def near(value: int, flips: int) -> int:
        for _ in range(flips):
            value ^= 1 << rng.randrange(bits)
        return value

    def hexed(value: int) -> str:
        return f"{value:0{bits // 4}x}"

    stored = []
    for n in range(1, 121):
        code = rng.getrandbits(bits)
        stored.append({
            "id": n, "label": "cats", "status": "stored", "path": f"cats/{n}.png", "sha256": f"sha{n}",
            "phash": hexed(code) if not rule.pdq else "0" * 16, "pdq": hexed(code) if rule.pdq else None,
            "pdq_quality": 100, "width": 10, "height": 10, "source_width": 10, "source_height": 10,
        })
    found = 0
    for trial in range(300):
        source = stored[rng.randrange(len(stored))]
        base = int(source["pdq" if rule.pdq else "phash"], 16)
        distance = rng.choice([0, 3, rule.max_distance - 1, rule.max_distance + 1, 60 if rule.pdq else 20])
        code = near(base, distance) if trial % 5 else rng.getrandbits(bits)
        row: dict[str, Any] = {"sha256": source["sha256"] if trial % 17 == 0 else f"new{trial}",
                               "phash": hexed(code) if not rule.pdq else "0" * 16, "catalog_seen_id": rng.randrange(120)}
        if rule.pdq:
            dihedral = [hexed(code)] + [hexed(rng.getrandbits(256)) for _ in DIHEDRAL_KINDS[1:]]
            rng.shuffle(dihedral)
            row.update(pdq_dihedral=tuple(dihedral), pdq_quality=100, look=b"")
        newer = [r for r in stored if r["id"] > row["catalog_seen_id"]]
        expected = find_in_rows(newer, row["sha256"], row["phash"], rule.max_distance, rule, _full_picture(row), lambda _: None)
        got = _RowsSince(_RowsOf(stored), 0, rule).find(row, row["catalog_seen_id"], lambda _: None)
        assert (got and (got.path, got.distance)) == (expected and (expected.path, expected.distance))
        found += expected is not None
    assert 30 < found < 270  # both answers were tried often
