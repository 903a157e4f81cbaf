"""PDQ dedupe on real crawls (issue 13): flips, 90/180/270-degree turns and copies that differ
only in their EXIF orientation are caught; look-alike products and distinct photos stay apart;
decisions are stable (``duplicate_of`` always names a stored image, a second crawl of the same
list stores and moves nothing).

Real photos from ../shared (hymenoptera, the shop mirror) where they are; those parts skip
otherwise. Pillow-made pictures always."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from crawler_testkit import make_item, run
from crawls import catalog_rows, run_crawl, SCRAPY, FAST
from http_testkit import HttpServer, Request
from PIL import Image, ImageDraw
from scrapy.exceptions import DropItem

from crawler.catalog import Catalog
from crawler.dataset import check
from crawler.errors import UserError
from crawler.images.decode import verify_image
from crawler.images.hashing import hashes_of
from crawler.images.pdq import DIHEDRAL, DIHEDRAL_KINDS, FULL
from crawler.pipelines.dedupe import DedupePipeline
from crawler.pipelines.prepare import PreparePipeline
from crawler.pipelines.store import StorePipeline
from crawler.recorder import CatalogRecorder

SHARED = Path(__file__).resolve().parents[3] / "shared"
HYMENOPTERA = SHARED / "data" / "hymenoptera_data"
SHOP = SHARED / "real" / "sites" / "bid"
T = Image.Transpose


def jpeg(image: Image.Image, quality: int = 90, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, **params)
    return out.getvalue()


def with_orientation(image: Image.Image, tag: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = tag
    return jpeg(image, 95, exif=exif)


def drawn(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like picture made with Pillow: coarse random colours plus finer detail."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    fine = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return Image.blend(coarse, fine, 0.35)


def photos(count: int) -> list[Image.Image]:
    files = sorted((HYMENOPTERA / "val").rglob("*.jpg"))[::25][:count]
    return [Image.open(path).convert("RGB") for path in files]


# Copies that are the same picture turned or flipped (issue 13 item 2), as a site would serve them.
TURNS: dict[str, Any] = {
    "mirror": lambda im: jpeg(im.transpose(T.FLIP_LEFT_RIGHT)),
    "upside-down mirror": lambda im: jpeg(im.transpose(T.FLIP_TOP_BOTTOM)),
    "rot90": lambda im: jpeg(im.transpose(T.ROTATE_90)),
    "rot180": lambda im: jpeg(im.transpose(T.ROTATE_180)),
    "rot270": lambda im: jpeg(im.transpose(T.ROTATE_270)),
    "transpose": lambda im: jpeg(im.transpose(T.TRANSPOSE)),
    # Same pixels, an orientation tag: shown turned by 90 degrees.
    "EXIF tag 6, same pixels": lambda im: with_orientation(im, 6),
    # Pixels turned and a tag that turns them back: shown as the original.
    "EXIF tag 8 undoing a turn": lambda im: with_orientation(im.transpose(T.ROTATE_270), 8),
    "half size": lambda im: jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), 70),
}


class ImageSite(HttpServer):
    """``/img/<name>`` for each of ``files`` (name -> JPEG bytes)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.files = files

    def on_get(self, request: Request) -> None:
        body = self.files.get(request.path.removeprefix("/img/"))
        request.reply(200 if body else 404, "image/jpeg", body or b"")


def url_crawl(site: ImageSite, names: list[str], dataset: Path, tmp: Path) -> str:
    """``scrapy crawl urls`` of ``names`` on ``site`` into ``dataset``; returns the log."""
    listing = tmp / f"urls-{len(list(tmp.iterdir()))}.txt"
    listing.write_text("".join(f"{site.base}/img/{name}\n" for name in names))
    command = [*SCRAPY, "crawl", "urls", "-a", f"file={listing}", "-a", "label=things", "-s", f"DATASET_DIR={dataset}", *FAST]
    result = run_crawl(command)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Traceback (most recent call last)" not in result.stdout, result.stdout[-3000:]
    return result.stdout


def files_under(root: Path) -> set[str]:
    """Image files under label folders and ``.trash/`` (not the catalog, not ``.tmp/``)."""
    return {
        p.relative_to(root).as_posix() for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("catalog") and p.relative_to(root).parts[0] != ".tmp"
    }


@pytest.fixture(scope="module", params=["photos", "drawn"])
def turned_crawl(request, tmp_path_factory) -> tuple[dict[str, str], Path, ImageSite, list[str], Path]:
    """One crawl of originals and their turned, flipped and EXIF copies, in one URL list."""
    if request.param == "photos":
        if not HYMENOPTERA.is_dir():
            pytest.skip("../shared/data/hymenoptera_data is not there")
        originals = photos(3)
    else:
        originals = [drawn(seed) for seed in (1, 2, 3)]
    files, group = {}, {}
    for n, image in enumerate(originals):
        files[f"{n}-original.jpg"] = jpeg(image)
        for kind, make in TURNS.items():
            files[f"{n}-{kind.replace(' ', '_')}.jpg"] = make(image)
    group = {name: name.split("-", 1)[0] for name in files}
    tmp = tmp_path_factory.mktemp(f"turned-{request.param}")
    dataset = tmp / "dataset"
    site = ImageSite(files).__enter__()
    request.addfinalizer(lambda: site.__exit__(None, None, None))
    names = sorted(files)
    url_crawl(site, names, dataset, tmp)
    return group, dataset, site, names, tmp


def test_flips_turns_and_exif_copies_are_one_picture(turned_crawl) -> None:
    group, dataset, _, _, _ = turned_crawl
    rows = [row for row in catalog_rows(dataset) if row["url"]]
    by_group: dict[str, list[Any]] = {}
    for row in rows:
        by_group.setdefault(group[row["url"].rsplit("/", 1)[1]], []).append(row)
    assert len(by_group) == 3
    for members in by_group.values():
        assert len(members) == 1 + len(TURNS)
        stored = [row["path"] for row in members if row["status"] == "stored"]
        assert len(stored) == 1, [(r["url"], r["status"], r["reason"]) for r in members]
        for row in members:
            if row["status"] != "stored":
                assert (row["status"], row["duplicate_of"]) == ("duplicate", stored[0]), dict(row)
    problems, _ = check(dataset)
    assert problems == []


def test_a_second_crawl_of_the_same_list_stores_and_moves_nothing(turned_crawl) -> None:
    _, dataset, site, names, tmp = turned_crawl
    before_rows = catalog_rows(dataset)
    before_files = files_under(dataset)
    url_crawl(site, names, dataset, tmp)
    after_rows = catalog_rows(dataset)
    assert files_under(dataset) == before_files  # nothing stored, nothing moved to .trash/
    assert [dict(r) for r in after_rows[: len(before_rows)]] == [dict(r) for r in before_rows]
    stored = {row["path"] for row in after_rows if row["status"] == "stored"}
    for row in after_rows[len(before_rows) :]:
        assert row["status"] == "duplicate" and row["duplicate_of"] in stored, dict(row)
    assert check(dataset)[0] == []


# -- in-process chains: prepare -> dedupe -> store, real SQLite ---------------------------------


class Chain:
    """prepare -> dedupe -> store, and the recorder writing the rows of dropped items."""

    def __init__(self, crawler: Any, build: Any) -> None:
        self.crawler = crawler
        self.stages = [build(cls, crawler) for cls in (PreparePipeline, DedupePipeline, StorePipeline)]
        for stage in self.stages:
            stage.open_spider()
        self.recorder = build(CatalogRecorder, crawler)
        self.recorder.spider_opened()

    def feed(self, body: bytes, url: str, label: str = "things") -> tuple[str, Any]:
        item = make_item(label=label, url=url, body=body, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())

        async def through() -> Any:
            current = item
            for stage in self.stages:
                current = await stage.process_item(current)
            return current

        try:
            done = run(through())
        except DropItem as exc:
            run(self.recorder.item_dropped(item, exc))
            return str(exc), item
        return "stored", done

    def close(self) -> None:
        for stage in self.stages:
            stage.close_spider()
        run(self.recorder.spider_closed("finished"))


def test_replacement_re_points_duplicates_and_a_recrawl_decides_the_same(make_crawler, build, dataset_dir: Path) -> None:
    """Issue 13 item 4: a small copy is stored, another copy names it, then the original
    replaces it: both rows now name the original. Feeding all three again changes nothing."""
    image = drawn(7, (480, 360))
    small = jpeg(image.resize((160, 120), Image.Resampling.LANCZOS), 70)
    mirrored_small = jpeg(image.transpose(T.FLIP_LEFT_RIGHT).resize((160, 120), Image.Resampling.LANCZOS), 70)
    original = jpeg(image)
    crawl = Chain(make_crawler(), build)
    try:
        assert crawl.feed(small, "http://127.0.0.1/small.jpg")[0] == "stored"
        assert crawl.feed(mirrored_small, "http://127.0.0.1/mirrored.jpg")[0] == "near"
        outcome, item = crawl.feed(original, "http://127.0.0.1/original.jpg")
        assert outcome == "stored" and crawl.crawler.stats.get_value("store/replaced") == 1
    finally:
        crawl.close()
    with Catalog(dataset_dir) as catalog:
        rows = catalog.rows()
        stored = [row["path"] for row in rows if row["status"] == "stored"]
        assert stored == [item["path"]]
        assert all(row["duplicate_of"] == item["path"] for row in rows if row["status"] == "duplicate")
    files = files_under(dataset_dir)
    again = Chain(make_crawler(), build)
    try:
        outcomes = [again.feed(body, url)[0] for body, url in (
            (small, "http://127.0.0.1/small.jpg"), (mirrored_small, "http://127.0.0.1/mirrored.jpg"),
            (original, "http://127.0.0.1/original.jpg"),
        )]
    finally:
        again.close()
    assert outcomes[2] == "exact" and outcomes[:2] == ["near", "near"]
    assert files_under(dataset_dir) == files
    assert check(dataset_dir)[0] == []


@pytest.mark.skipif(not SHOP.is_dir(), reason="../shared/real/sites/bid is not there")
def test_look_alike_products_stay_apart(make_crawler, build, dataset_dir: Path) -> None:
    """Issue 13 item 3: every distinct product photo of a real shop (70 full-size images:
    chairs, desks, lamps on white) is stored; none is taken for another."""
    truth = json.loads((SHOP / "ground_truth.json").read_text())
    full = sorted({item["full_size_image"] for c in truth["categories"].values() for item in c["items"]})
    bodies = [(SHOP / "site" / path.lstrip("/")).read_bytes() for path in full if (SHOP / "site" / path.lstrip("/")).exists()]
    crawl = Chain(make_crawler(), build)
    try:
        outcomes = [crawl.feed(body, f"http://127.0.0.1/{n}.jpg")[0] for n, body in enumerate(bodies)]
    finally:
        crawl.close()
    assert len(bodies) >= 60
    assert outcomes == ["stored"] * len(bodies)


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="../shared/data/hymenoptera_data is not there")
def test_distinct_photos_stay_apart(make_crawler, build, dataset_dir: Path) -> None:
    """The 397 hymenoptera photos are distinct pictures: every one is stored."""
    paths = sorted(p for p in HYMENOPTERA.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    crawl = Chain(make_crawler(), build)
    try:
        outcomes = {path.name: crawl.feed(path.read_bytes(), f"http://127.0.0.1/{n}.jpg")[0] for n, path in enumerate(paths)}
    finally:
        crawl.close()
    # Byte-identical files under train/ and val/ are the only exact duplicates allowed.
    unique = len({hashlib.sha256(p.read_bytes()).digest() for p in paths})
    assert sum(o == "stored" for o in outcomes.values()) == unique, {k: v for k, v in outcomes.items() if v != "stored"}


def test_the_dihedral_hashes_are_the_hashes_of_the_turned_pictures() -> None:
    """Each of the 8 hashes a picture queries with is, within a few bits, the hash of the
    picture really turned that way (the DCT sign trick of ``crawler.images.pdq``)."""
    image = verify_image(jpeg(drawn(11, (200, 160)))).image
    hashes = hashes_of(image)
    for kind, op in zip(DIHEDRAL_KINDS, DIHEDRAL, strict=True):
        turned = hashes_of(image if op is None else image.transpose(op))[FULL]
        assert (int(turned, 16) ^ int(hashes[kind], 16)).bit_count() <= 8, kind


# Copies PDQ's own bits do not survive (18-60 bits away): found by the phash windows, confirmed
# by the aligned second look (crawler.images.pdq.aligned_difference).
def _captioned(image: Image.Image) -> bytes:
    bar = int(0.12 * image.height)
    canvas = Image.new("RGB", (image.width, image.height + bar), "white")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((8, image.height + bar // 4), "example-shop.com SALE", fill="black", font_size=max(10, bar // 2))
    return jpeg(canvas, 75)


def _cropped(image: Image.Image, left: float, top: float) -> bytes:
    w, h = image.size
    return jpeg(image.crop((int(left * w), int(top * h), int((0.9 + left) * w), int((0.9 + top) * h))), 75)


WINDOW_COPIES: dict[str, Any] = {
    "cropped 10% (centred)": lambda im: _cropped(im, 0.05, 0.05),
    "cropped 10% (top left kept)": lambda im: _cropped(im, 0.0, 0.0),
    "caption bar below": _captioned,
    "turned 3 degrees": lambda im: jpeg(im.rotate(3, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white"), 75),
}


@pytest.mark.parametrize("source", ["photos", "drawn"])
def test_crops_captions_and_small_turns_are_caught(source: str, make_crawler, build, dataset_dir: Path) -> None:
    """The crawl's default rule catches most copies cropped by 10%, given a caption bar or
    turned by 3 degrees, each linked to its own original; the originals all stay."""
    if source == "photos":
        if not HYMENOPTERA.is_dir():
            pytest.skip("../shared/data/hymenoptera_data is not there")
        originals = photos(8)
    else:
        originals = [drawn(seed) for seed in range(20, 28)]
    crawl = Chain(make_crawler(), build)
    caught: dict[str, int] = dict.fromkeys(WINDOW_COPIES, 0)
    try:
        picture_of: dict[str, int] = {}  # stored path -> which original it shows
        for n, image in enumerate(originals):
            outcome, item = crawl.feed(jpeg(image), f"http://127.0.0.1/o{n}.jpg")
            assert outcome == "stored"
            picture_of[item["path"]] = n
        for kind, make in WINDOW_COPIES.items():
            for n, image in enumerate(originals):
                outcome, item = crawl.feed(make(image), f"http://127.0.0.1/{kind}-{n}.jpg")
                assert outcome in ("stored", "near"), outcome
                # Linked to its own picture (the original or a copy stored before), never
                # another: as a duplicate, or replacing a smaller copy (a caption bar or a
                # turn with its fill adds pixels; the larger copy stays).
                linked = [item["duplicate_of"]] if outcome == "near" else [path for path, _ in item.get("replaces") or []]
                assert all(picture_of[path] == n for path in linked), (kind, n)
                caught[kind] += bool(linked)
                if outcome == "stored":  # stored: a later copy may name it
                    picture_of[item["path"]] = n
    finally:
        crawl.close()
    # Measured (benchmarks.dedupe_quality on 397 photos: crops at random offsets 64%, captions
    # 79%, 2-4 degree turns 46%; before the phash windows 9%, 0%, 0.3%); these fixed copies
    # are easier, and 8 pictures are few: each kind must be caught at least half the time.
    # The drawn pictures' fine random texture, turned, stays 0.12-0.15 apart after alignment
    # (about DEDUPE_ALIGN_DIFFERENCE, 0.13): their turns are not counted.
    expected = WINDOW_COPIES if source == "photos" else [kind for kind in WINDOW_COPIES if "turned" not in kind]
    assert all(caught[kind] >= len(originals) // 2 for kind in expected), caught


def test_window_settings_default_per_hash_and_are_checked(make_crawler, build) -> None:
    """pdq's phash windows and aligned look take DEDUPE_DEFAULTS; the 64-bit hashes have none
    (their windows are DEDUPE_VARIANT_DISTANCE's); bad values stop the crawl with one line."""
    pdq = build(DedupePipeline, make_crawler()).rule
    assert (pdq.window_distance, pdq.align_difference, pdq.coarse_distance) == (8, pytest.approx(0.13), 8)
    assert build(DedupePipeline, make_crawler(DEDUPE_VARIANT_DISTANCE=0)).rule.coarse_distance == 0  # no windows at all
    assert build(DedupePipeline, make_crawler(DEDUPE_WINDOW_DISTANCE=0)).rule.coarse_distance == 0
    phash = build(DedupePipeline, make_crawler(DEDUPE_HASH="phash")).rule
    assert (phash.window_distance, phash.coarse_distance) == (0, 0)
    with pytest.raises(UserError, match="DEDUPE_WINDOW_DISTANCE needs DEDUPE_HASH=pdq"):
        build(DedupePipeline, make_crawler(DEDUPE_HASH="phash", DEDUPE_WINDOW_DISTANCE=8))
    with pytest.raises(UserError, match="DEDUPE_WINDOW_DISTANCE must be a whole number of bits in 0-63"):
        build(DedupePipeline, make_crawler(DEDUPE_WINDOW_DISTANCE=64))
    with pytest.raises(UserError, match="DEDUPE_ALIGN_DIFFERENCE must be a number >= 0, got '-1'"):
        build(DedupePipeline, make_crawler(DEDUPE_ALIGN_DIFFERENCE="-1"))


def test_window_pairs_are_confirmed_by_the_aligned_look() -> None:
    """A crop passes the aligned look; a different picture whose phash windows are made to
    agree (the same hashes, another look) does not: the windows alone never decide."""
    from crawler.images.hashing import COLOUR_KIND, VARIANTS
    from crawler.images.matching import DedupeRule, pdq_pair_match, window_candidates

    image = drawn(31, (320, 240))
    original = hashes_of(verify_image(jpeg(image)).image)
    crop = hashes_of(verify_image(jpeg(image.crop((16, 12, 304, 228)), 85)).image)
    rule = DedupeRule()
    assert window_candidates(rule, crop, original), "a centred 10% crop has a phash window pair within 8 bits"
    assert pdq_pair_match(rule, crop, original) is not None
    other = hashes_of(verify_image(jpeg(drawn(32, (320, 240)))).image)
    forged = {**other, **{k: crop[k] for k in ("phash", *VARIANTS, COLOUR_KIND)}}  # the crop's phash windows
    assert window_candidates(rule, forged, original)
    assert pdq_pair_match(rule, forged, original) is None


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="../shared/data/hymenoptera_data is not there")
@pytest.mark.parametrize("first", ["captioned", "original"])
def test_a_caption_bar_is_caught_whichever_comes_first(first: str, make_crawler, build, dataset_dir: Path) -> None:
    """PDQ window pairs count in both orders: a photo with a caption bar on top (AugLy's meme
    format) and the photo itself are one, whichever the crawl meets first (the photo's full
    hash against the captioned one's cut window, or the other way round). Three photos whose
    own top and bottom rows are not plain (a plain sky or wall reads as a caption band)."""
    crawl = Chain(make_crawler(), build)
    try:
        for n, image in enumerate(photos(6)[2:5]):
            image = image.resize((320, 240))
            canvas = Image.new("RGB", (320, 320), "white")
            canvas.paste(image, (0, 80))
            ImageDraw.Draw(canvas).text((10, 20), "LOL", fill="black", font_size=40)
            bodies = {"captioned": jpeg(canvas), "original": jpeg(image)}
            second = "original" if first == "captioned" else "captioned"
            outcome, stored = crawl.feed(bodies[first], f"http://127.0.0.1/{n}-{first}.jpg")
            assert outcome == "stored"
            outcome, item = crawl.feed(bodies[second], f"http://127.0.0.1/{n}-{second}.jpg")
            # The smaller photo is a duplicate; the larger captioned copy replaces the photo.
            linked = [item["duplicate_of"]] if outcome == "near" else [p for p, _ in item.get("replaces") or []]
            assert linked == [stored["path"]], (n, outcome)
    finally:
        crawl.close()


def test_the_index_decides_the_same_past_its_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PdqCatalogIndex`` past ``WordsHashIndex.SMALL_LIMIT`` (per-word indexes, the look's
    wide reach from its ``full`` index) decides every picture as it does in its 16-bit tables:
    distinct drawn pictures stored, their mirrored, smaller, cropped and contrasted copies found, at the
    same distance, as the same stored picture; copies beyond ``max_distance`` by the second
    look."""
    from PIL import ImageEnhance

    from crawler.hashindex import WordsHashIndex
    from crawler.images.index import PdqCatalogIndex
    from crawler.images.matching import DedupeRule

    originals = [drawn(seed) for seed in range(30)]
    bodies = [jpeg(image) for image in originals]
    for image in originals[:6]:
        w, h = image.size
        bodies += [
            jpeg(image.transpose(T.FLIP_LEFT_RIGHT)),
            jpeg(image.resize((w // 2, h // 2)), quality=60),
            jpeg(image.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
            # 12-22 bits away: beyond max_distance below, found by the second look alone.
            jpeg(ImageEnhance.Contrast(image).enhance(1.8)),
        ]

    def decide_all(small_limit: int) -> tuple[list[Any], PdqCatalogIndex]:
        monkeypatch.setattr(WordsHashIndex, "SMALL_LIMIT", small_limit)
        catalog = Catalog(tmp_path / str(small_limit))
        index = PdqCatalogIndex(catalog, DedupeRule(max_distance=8, variant_distance=8))
        decisions = []
        for n, body in enumerate(bodies):
            sha256 = hashlib.sha256(body).hexdigest()
            hashes = hashes_of(Image.open(io.BytesIO(body)).convert("RGB"))
            index.refresh()
            match = index.find(sha256, hashes)
            decisions.append(None if match is None else (match.path, match.distance))
            if match is None:
                dihedral = [hashes.pop(kind) for kind in DIHEDRAL_KINDS]
                catalog.insert({
                    "url": f"http://x/{n}", "label": "x", "status": "stored", "sha256": sha256, "path": f"x/{n}.jpg",
                    "phash": hashes.pop("phash"), "pdq": dihedral[0], "pdq_quality": hashes.pop("pdq_quality"),
                    "look": hashes.pop("look"), "hashes": hashes,
                })
        return decisions, index

    tabled, small = decide_all(1 << 15)
    per_word, large = decide_all(40)
    assert small.index.tabled and not large.index.tabled and not large.windows.tabled
    assert per_word == tabled
    assert tabled[:30] == [None] * 30
    assert [found and found[0] for found in tabled[30:]] == [f"x/{n // 4}.jpg" for n in range(24)]
    assert all(found[1] > 8 for found in tabled[33::4])  # the contrast copies
