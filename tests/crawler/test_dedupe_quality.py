"""Near-duplicate quality: the copies shops make are caught, distinct pictures are not linked.

A small version of ``benchmarks/dedupe_quality.py``: generated pictures always, real photos
from ../shared when they are there (that part skips otherwise). Every picture goes the crawl's
way, as JPEG bytes through ``verify_image`` (a reduced-size decode) and ``image_hashes``."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from crawler.catalog import Catalog
from crawler.images.hashing import image_hashes, trim_borders
from crawler.images.index import CatalogHashIndex
from crawler.images.decode import verify_image

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "hymenoptera_data" / "val"


def jpeg(image: Image.Image, quality: int = 75) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def letterbox(image: Image.Image) -> bytes:
    side = max(image.size)
    square = Image.new("RGB", (side, side), "white")
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return jpeg(square)


def captioned(image: Image.Image) -> bytes:
    bar = int(0.12 * image.height)
    canvas = Image.new("RGB", (image.width, image.height + bar), "white")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((8, image.height + bar // 4), "example-shop.com SALE", fill="black")
    return jpeg(canvas)


COPIES = {
    "down": lambda im: jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), 60),
    "crop": lambda im: jpeg(im.crop((int(0.05 * im.width), int(0.05 * im.height), int(0.95 * im.width), int(0.95 * im.height)))),
    "pad": letterbox,
    "border": lambda im: jpeg(ImageOps.expand(im, max(4, im.width // 20), fill=(20, 20, 20))),
    "caption": captioned,
    "rotate": lambda im: jpeg(im.rotate(3, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white")),
}


def textured(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like picture: coarse random colours plus finer detail, upscaled smoothly."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    fine = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return Image.blend(coarse, fine, 0.35)


def index_of(tmp_path: Path, images: list[Image.Image]) -> tuple[CatalogHashIndex, int]:
    """Store ``images`` (as JPEG q95) one by one as the pipeline does; return the index and the
    number of false matches met on the way (each image checked before it is stored)."""
    catalog = Catalog(tmp_path / "dataset")
    index = CatalogHashIndex(catalog, 6, 8)
    false = 0
    for n, image in enumerate(images):
        hashes = image_hashes(verify_image(jpeg(image, 95)).image)
        phash = hashes.pop("phash")
        index.refresh()
        false += index.find(f"sha{n}", phash, hashes) is not None
        catalog.insert({"label": "x", "status": "stored", "path": f"x/{n}.jpg", "sha256": f"sha{n}",
                        "phash": phash, "width": image.width, "height": image.height, "hashes": hashes})
    index.refresh()
    return index, false


def caught(index: CatalogHashIndex, copy: bytes, n: int) -> bool:
    hashes = image_hashes(verify_image(copy).image)
    match = index.find("copy", hashes.pop("phash"), hashes)
    return match is not None and match.path == f"x/{n}.jpg"


def test_trim_borders_removes_letterbox_and_frame_only() -> None:
    image = textured(1)
    assert trim_borders(image) is image
    framed = ImageOps.expand(Image.open(io.BytesIO(letterbox(image))).convert("RGB"), 12, fill=(0, 0, 0))
    trimmed = trim_borders(framed)
    assert abs(trimmed.width - image.width) <= 4 and abs(trimmed.height - image.height) <= 4


def test_generated_copies_are_caught_and_distinct_pictures_are_not(tmp_path: Path) -> None:
    originals = [textured(seed) for seed in range(40)]
    index, false = index_of(tmp_path, originals)
    assert false == 0
    for kind, make in COPIES.items():
        hits = sum(caught(index, make(image), n) for n, image in enumerate(originals[:10]))
        assert hits >= 8, f"{kind}: {hits}/10 caught"


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="real photos (../shared/data/hymenoptera_data) not present")
def test_real_photo_copies_are_caught_without_false_matches(tmp_path: Path) -> None:
    files = sorted(p for p in PHOTOS.rglob("*.jpg"))[:: 3][:40]
    originals = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in files]
    index, false = index_of(tmp_path, originals)
    assert false == 0
    rng = random.Random(0)
    total = hits = 0
    for n, image in enumerate(originals):
        for make in rng.sample(list(COPIES.values()), 2):
            total += 1
            hits += caught(index, make(image), n)
    assert hits / total >= 0.85, f"{hits}/{total} caught"
