"""Dedupe and store together: exact/near/label-conflict duplicates across labels and crawls,
atomic files, catalog rows, and the recorder's rows for dropped items."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from crawler_testkit import encode, make_item, picture, run
from PIL import Image
from scrapy.exceptions import DropItem, NotConfigured

from crawler.errors import UserError
from crawler.catalog import Catalog
from crawler.pipelines.dedupe import DedupePipeline
from crawler.pipelines.store import StorePipeline
from crawler.pipelines.prepare import PreparePipeline
from crawler.recorder import CatalogRecorder


class Chain:
    """prepare -> dedupe -> store built from one crawler, like one `scrapy crawl` process."""

    def __init__(self, crawler: Any, build: Any) -> None:
        self.crawler = crawler
        self.stages = [build(cls, crawler) for cls in (PreparePipeline, DedupePipeline, StorePipeline)]
        for stage in self.stages:
            if hasattr(stage, "open_spider"):
                stage.open_spider()

    async def process(self, item: Any) -> Any:
        for stage in self.stages:
            item = await stage.process_item(item)
        return item

    def feed(self, body: bytes, label: str = "cats", url: str = "http://127.0.0.1/x.jpg") -> Any:
        item = make_item(label=label, url=url, body=body, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
        return run(self.process(item))

    def reason(self, body: bytes, label: str = "cats") -> str:
        with pytest.raises(DropItem) as caught:
            self.feed(body, label)
        return str(caught.value)

    def close(self) -> None:
        for stage in self.stages:
            if hasattr(stage, "close_spider"):
                stage.close_spider()


@pytest.fixture
def chain(make_crawler, build):
    chains: list[Chain] = []

    def make(**settings: Any) -> Chain:
        chains.append(Chain(make_crawler(**settings), build))
        return chains[-1]

    yield make
    for made in chains:
        made.close()


@pytest.mark.parametrize("staged", [True, False], ids=["staged", "body"])
def test_stored_files_get_the_catalogs_permissions(chain, dataset_dir: Path, staged: bool) -> None:
    """Issue 11: a stored image is readable like the catalog beside it (0644 under umask 022),
    not 0600 as the temporary file it was renamed from; whether the prepare stage staged it or
    the store wrote the item's bytes itself."""
    made = chain()
    body = encode(picture(41), "JPEG")
    if staged:
        item = made.feed(body)
    else:  # a dedupe -> store chain fed an item whose bytes were never staged
        prepared = run(made.stages[0].process_item(make_item(body=body, sha256=hashlib.sha256(body).hexdigest())))
        staged_file, _ = prepared.pop("staged")
        prepared["body"] = Path(staged_file).read_bytes()
        os.unlink(staged_file)
        item = run(made.stages[2].process_item(run(made.stages[1].process_item(prepared))))
    mode = stat.S_IMODE((dataset_dir / item["path"]).stat().st_mode)
    assert mode == stat.S_IMODE((dataset_dir / "catalog.sqlite").stat().st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # 0644 under the usual umask 022


def near_copy(seed: int) -> bytes:
    """The copy shops and search results make: downscaled and recompressed."""
    return encode(picture(seed).resize((96, 96), Image.Resampling.LANCZOS), "JPEG", quality=70)


def test_store_writes_file_and_row(chain, dataset_dir: Path) -> None:
    body = encode(picture(1), "JPEG")
    item = chain().feed(body, label="cats")
    sha = hashlib.sha256(body).hexdigest()
    assert item["path"] == f"cats/{sha}.jpg" and item["status"] == "stored"
    assert (dataset_dir / item["path"]).read_bytes() == body
    assert "body" not in item and "image" not in item
    assert list((dataset_dir / ".tmp").iterdir()) == []
    with Catalog(dataset_dir) as catalog:
        (row,) = catalog.rows()
    assert (row["status"], row["label"], row["path"], row["sha256"]) == ("stored", "cats", item["path"], sha)
    assert (row["width"], row["height"], row["format"], row["bytes"]) == (128, 128, "JPEG", len(body))
    assert len(row["phash"]) == 16 and row["url"] == "http://127.0.0.1/x.jpg"


def test_reencoded_image_is_named_by_the_stored_bytes(chain, dataset_dir: Path) -> None:
    body = encode(picture(2, mode="CMYK"), "JPEG")
    item = chain().feed(body)
    stored = (dataset_dir / item["path"]).read_bytes()
    assert item["path"] == f"cats/{hashlib.sha256(stored).hexdigest()}.png"
    assert item["sha256"] == hashlib.sha256(body).hexdigest()  # catalog: the downloaded bytes


def test_exact_duplicate_same_label(chain) -> None:
    crawl = chain()
    body = encode(picture(3), "PNG")
    crawl.feed(body)
    assert crawl.reason(body) == "exact"


def test_near_duplicate_same_label(chain) -> None:
    crawl = chain()
    crawl.feed(encode(picture(4), "PNG"))
    assert crawl.reason(near_copy(4)) == "near"
    assert crawl.crawler.stats.get_value("dedupe/near") == 1


def test_same_picture_under_another_label_is_a_label_conflict(chain) -> None:
    crawl = chain()
    crawl.feed(encode(picture(5), "PNG"), label="cats")
    assert crawl.reason(encode(picture(5), "PNG"), label="dogs") == "label_conflict"
    assert crawl.reason(near_copy(5), label="dogs") == "label_conflict"


def test_distinct_pictures_are_all_stored(chain, dataset_dir: Path) -> None:
    crawl = chain()
    for seed in range(10, 25):
        crawl.feed(encode(picture(seed), "PNG"), url=f"http://127.0.0.1/{seed}.png")
    assert len(list((dataset_dir / "cats").iterdir())) == 15


def test_index_persists_across_crawls_and_sees_other_writers(chain, dataset_dir: Path) -> None:
    first = chain()
    first.feed(encode(picture(6), "PNG"), label="cats")
    first.close()
    later = chain()  # a new process: index rebuilt from the catalog
    assert later.reason(near_copy(6), label="cats") == "near"
    # A row stored by another process after `later` opened is seen at the next decision.
    other = chain()
    other.feed(encode(picture(7), "PNG"), label="dogs")
    assert later.reason(near_copy(7), label="cats") == "label_conflict"


def test_store_rechecks_duplicates_in_flight(chain, dataset_dir: Path) -> None:
    """Two copies pass dedupe together (neither is stored yet): store keeps only one."""
    crawl = chain()
    verify, dedupe, store = crawl.stages

    async def both() -> list[Any]:
        items = []
        for body in (encode(picture(8), "PNG"), near_copy(8)):
            item = make_item(body=body, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
            items.append(await dedupe.process_item(await verify.process_item(item)))
        results = []
        for item in items:
            try:
                results.append(await store.process_item(item))
            except DropItem as exc:
                results.append(str(exc))
        return results

    stored, dropped = run(both())
    assert stored["status"] == "stored" and dropped == "near"
    assert len(list((dataset_dir / "cats").iterdir())) == 1


def test_max_images_stops_storing(make_crawler, build, dataset_dir: Path) -> None:
    crawler = make_crawler()
    crawl = Chain(crawler, build)

    class FakeSpider:
        max_images = 2

    crawler.spider = FakeSpider()
    closes: list[str] = []

    async def close_spider_async(*, reason: str) -> None:
        closes.append(reason)

    crawler.engine = type("Engine", (), {"close_spider_async": staticmethod(close_spider_async)})()
    crawl.feed(encode(picture(30), "PNG"))
    crawl.feed(encode(picture(31), "PNG"))
    assert crawl.reason(encode(picture(32), "PNG")) == "max_images"
    assert closes == ["max_images"]
    assert len(list((dataset_dir / "cats").iterdir())) == 2
    crawl.close()


def test_a_replacement_does_not_count_towards_max_images(make_crawler, build, dataset_dir: Path) -> None:
    crawler = make_crawler()
    crawl = Chain(crawler, build)

    class FakeSpider:
        max_images = 2

    crawler.spider = FakeSpider()

    async def close_spider_async(*, reason: str) -> None:
        pass

    crawler.engine = type("Engine", (), {"close_spider_async": staticmethod(close_spider_async)})()
    crawl.feed(near_copy(33))  # a downscaled copy arrives first...
    crawl.feed(encode(picture(33), "PNG"))  # ...then the original takes its place: still 1 image
    crawl.feed(encode(picture(34), "PNG"))
    assert crawler.stats.get_value("store/stored") == 2
    assert crawler.stats.get_value("store/replaced") == 1
    assert len(list((dataset_dir / "cats").iterdir())) == 2
    crawl.close()


@pytest.mark.parametrize("cls", [DedupePipeline, StorePipeline, CatalogRecorder])
def test_dataset_dir_is_required(build, cls) -> None:
    from scrapy.utils.test import get_crawler

    with pytest.raises(NotConfigured, match="DATASET_DIR"):
        build(cls, get_crawler(settings_dict={}))


@pytest.mark.parametrize(("hash_name", "bits"), [("pdq", 256), ("phash", 64)])
def test_max_distance_must_fit_the_hash(make_crawler, build, hash_name: str, bits: int) -> None:
    with pytest.raises(UserError, match=f"DEDUPE_MAX_DISTANCE must be a whole number of bits in 0-{bits - 1}"):
        build(DedupePipeline, make_crawler(DEDUPE_HASH=hash_name, DEDUPE_MAX_DISTANCE=bits))
    build(DedupePipeline, make_crawler(DEDUPE_HASH=hash_name, DEDUPE_MAX_DISTANCE=bits - 1))


def test_thresholds_default_per_hash(make_crawler, build) -> None:
    """Unset thresholds take the hash's own defaults (crawler/settings.py DEDUPE_DEFAULTS);
    a set one overrides it; a second look needs pdq's thumbnails."""
    pdq = build(DedupePipeline, make_crawler()).rule
    assert (pdq.hash_name, pdq.max_distance, pdq.variant_distance, pdq.min_quality, pdq.look_distance) == ("pdq", 31, 24, 50, 50)
    assert pdq.look_difference == pytest.approx(0.10)
    phash = build(DedupePipeline, make_crawler(DEDUPE_HASH="phash")).rule
    assert (phash.max_distance, phash.variant_distance, phash.look_distance) == (6, 8, 0)
    assert build(DedupePipeline, make_crawler(DEDUPE_LOOK_DISTANCE=0)).rule.look_distance == 0
    with pytest.raises(UserError, match="DEDUPE_LOOK_DISTANCE needs DEDUPE_HASH=pdq"):
        build(DedupePipeline, make_crawler(DEDUPE_HASH="phash", DEDUPE_LOOK_DISTANCE=40))
    with pytest.raises(UserError, match="DEDUPE_LOOK_DIFFERENCE must be a number >= 0, got 'x'"):
        build(DedupePipeline, make_crawler(DEDUPE_LOOK_DIFFERENCE="x"))


def test_recorder_writes_rows_for_dropped_items_only(make_crawler, build, dataset_dir: Path) -> None:
    recorder = build(CatalogRecorder, make_crawler())
    recorder.spider_opened()
    rejected = make_item(status="rejected", reason="http_404", url="http://127.0.0.1/gone.jpg")
    duplicate = make_item(status="duplicate", reason="near", duplicate_of="cats/a.jpg", hash_distance=3, phash="ff" * 8)
    unjudged = make_item()
    for item in (rejected, duplicate, unjudged):
        asyncio.run(recorder.item_dropped(item, DropItem(item.get("reason", "max_images"))))
    asyncio.run(recorder.spider_closed("finished"))
    with Catalog(dataset_dir) as catalog:
        rows = catalog.rows()
    assert [(r["status"], r["reason"]) for r in rows] == [("rejected", "http_404"), ("duplicate", "near")]
    assert (rows[1]["duplicate_of"], rows[1]["hash_distance"]) == ("cats/a.jpg", 3)
    assert (dataset_dir / "catalog.csv").read_text(encoding="utf-8").count("\n") == 3


def test_a_larger_copy_replaces_a_smaller_one_whatever_the_order(chain, dataset_dir: Path) -> None:
    crawl = chain()
    small = crawl.feed(near_copy(40))  # the downscaled copy happens to arrive first
    large = crawl.feed(encode(picture(40), "PNG"))
    assert large["status"] == "stored"
    assert not (dataset_dir / small["path"]).exists()
    assert (dataset_dir / ".trash" / small["path"]).exists()
    with Catalog(dataset_dir) as catalog:
        rows = {r["sha256"]: r for r in catalog.rows()}
    demoted = rows[small["sha256"]]
    assert (demoted["status"], demoted["reason"], demoted["duplicate_of"], demoted["path"]) == (
        "duplicate", "near", large["path"], None
    )
    # Later copies are judged against the survivor, smaller ones dropped.
    assert crawl.reason(near_copy(40)) == "near"  # same bytes as a demoted copy: near the survivor
    assert crawl.reason(encode(picture(40).resize((64, 64)), "JPEG", quality=60)) == "near"


def test_a_larger_copy_under_another_label_is_still_a_conflict(chain) -> None:
    crawl = chain()
    crawl.feed(near_copy(41), label="cats")
    assert crawl.reason(encode(picture(41), "PNG"), label="dogs") == "label_conflict"


def test_store_swaps_in_the_larger_of_two_copies_in_flight(chain, dataset_dir: Path) -> None:
    crawl = chain()
    verify, dedupe, store = crawl.stages

    async def both() -> list[Any]:
        items = []
        for body in (near_copy(42), encode(picture(42), "PNG")):
            item = make_item(body=body, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
            items.append(await dedupe.process_item(await verify.process_item(item)))
        return [await store.process_item(item) for item in items]

    small, large = run(both())
    assert [p.name for p in (dataset_dir / "cats").iterdir()] == [Path(large["path"]).name]
    with Catalog(dataset_dir) as catalog:
        assert [r["path"] for r in catalog.rows("status = 'stored'")] == [large["path"]]


def test_an_image_deleted_in_review_stays_out_of_later_crawls(chain, dataset_dir: Path) -> None:
    from crawler.review import apply_decisions, decide

    first = chain()
    kept = first.feed(encode(picture(50), "PNG"))
    junk = first.feed(encode(picture(51), "PNG"))
    with Catalog(dataset_dir) as catalog:
        (row,) = catalog.rows("path = ?", (junk["path"],))
        decide(catalog, row["id"], "delete")
        apply_decisions(dataset_dir, catalog)
    # The crawl that was running when the person applied sees it too...
    assert first.reason(encode(picture(51), "PNG")) == "review_delete"
    # ...and so does a later one: the same bytes, a smaller copy, under any label.
    later = chain()
    assert later.reason(encode(picture(51), "PNG")) == "review_delete"
    assert later.reason(near_copy(51), label="dogs") == "review_delete"
    assert later.reason(encode(picture(50), "PNG")) == "exact"  # the kept one is still a duplicate
    with Catalog(dataset_dir) as catalog:  # (the chain has no recorder: no rows for drops)
        stored = {r["path"] for r in catalog.rows("status = 'stored'")}
    assert stored == {kept["path"]}
