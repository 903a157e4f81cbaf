"""The demo site serves what real gallery sites serve, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import re
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin

import imagehash
import pytest
from PIL import Image

from demo.site import MIN_GENERATED_DISTANCE, DemoSite, generate_categories


def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


@pytest.fixture(scope="module")
def site():
    with DemoSite(per_label=14, per_page=6) as s:
        yield s


def test_generation_is_deterministic_and_pairwise_distinct():
    a = generate_categories(per_label=10, seed=3)
    b = generate_categories(per_label=10, seed=3)
    assert [im.body for c in a for im in c.images] == [im.body for c in b for im in c.images]
    hashes = [imagehash.phash(Image.open(io.BytesIO(im.body))) for c in a for im in c.images]
    assert min(h1 - h2 for i, h1 in enumerate(hashes) for h2 in hashes[i + 1 :]) >= MIN_GENERATED_DISTANCE


def test_pagination_covers_every_image_once(site):
    label = site.labels[0]
    url, pages, srcs = site.results_url(label), 0, []
    while url:
        status, ctype, body = fetch(url)
        assert status == 200 and ctype.startswith("text/html")
        page = body.decode()
        pages += 1
        srcs += re.findall(r"/images/[^\s\"]+", page)
        nxt = re.search(r'<a rel="next" class="next" href="([^"]+)"', page)
        url = urljoin(url, nxt.group(1)) if nxt else None
    assert pages == 3  # 14 images, 6 a page
    names = {im.name for im in site.categories[0].images}
    found = {s.rsplit("/", 1)[1] for s in srcs}
    # every image except the ones inlined as data: URIs (every fifth) is linked by URL
    assert {n for i, n in enumerate(sorted(names)) if i % 5 != 4} <= found


def test_junk_is_served_as_real_sites_serve_it(site):
    label = site.labels[0]
    cat = site.categories[0]
    status, ctype, body = fetch(f"{site.url}/images/{label}/{cat.junk['html'].name}")
    assert status == 200 and ctype == "image/jpeg" and body.startswith(b"<!doctype html>")
    status, _, _ = fetch(f"{site.url}/images/{label}/gone-{label}.jpg")
    assert status == 404
    _, _, truncated = fetch(f"{site.url}/images/{label}/{cat.junk['truncated'].name}")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(truncated)).load()
    _, _, copy = fetch(f"{site.url}/images/{label}/{cat.junk['copy'].name}")
    original = Image.open(io.BytesIO(cat.images[0].body))
    assert imagehash.phash(Image.open(io.BytesIO(copy))) - imagehash.phash(original) <= 4
    assert Image.open(io.BytesIO(fetch(f"{site.url}/pixel.gif")[2])).size == (1, 1)
    assert b"Disallow: /admin/" in fetch(f"{site.url}/robots.txt")[2]


def test_thumbnails_are_smaller_near_duplicates(site):
    im = site.categories[1].images[1]
    _, ctype, thumb = fetch(f"{site.url}/thumbs/{site.labels[1]}/{im.name}")
    small, full = Image.open(io.BytesIO(thumb)), Image.open(io.BytesIO(im.body))
    assert ctype == "image/jpeg" and small.width < full.width
    assert imagehash.phash(small) - imagehash.phash(full) <= 6


def test_serves_a_folder_of_label_subfolders(tmp_path):
    for label, color in [("red things", "red"), ("blue", "blue")]:
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (64 + i, 64), color).save(tmp_path / label / f"{i}.png")
    (tmp_path / "blue" / "junk.jpg").write_bytes(b"not an image")
    (tmp_path / ".hidden").mkdir()
    with DemoSite(tmp_path) as s:
        assert s.labels == ["blue", "red things"]
        assert s.expected["blue"] == {
            "stored": 3, "duplicate": 1,
            "rejected": {"truncated": 1, "not_an_image": 1, "http_404": 1, "undecodable": 1},
        }  # fmt: skip
        status, _, body = fetch(s.results_url("red things"))
        assert status == 200 and b"/images/red%20things/0.png" in body


def test_latency_delays_every_response():
    with DemoSite(per_label=2, latency=0.2) as s:
        t = time.perf_counter()
        fetch(f"{s.url}/robots.txt")
        assert time.perf_counter() - t >= 0.2


def test_missing_images_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        DemoSite(tmp_path / "nope")
    with pytest.raises(ValueError, match="no label subfolders"):
        DemoSite(tmp_path)
