"""Pillow's own test images (``../shared/real/pillow-images``, made by others) crawled with the
``urls`` spider from a 127.0.0.1 server: every URL gets a catalog row, every file Pillow itself
fully decodes in an accepted format (within the size limits) is stored or a duplicate, and
nothing Pillow cannot fully decode is stored. Skipped when the material is absent.

The whole set (about 1,050 files) is one slow crawl; a handful of them, one per format, run in
the default suite. ``-s`` prints the outcome per format (stored / duplicate / rejected by reason).
"""

from __future__ import annotations

import io
import mimetypes
import subprocess
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import pytest
from crawls import REPO, catalog_rows
from fixture_server import finish, start_crawl
from http_testkit import HttpServer, Request
from PIL import Image

from crawler import settings as defaults
from crawler.images.decode import EXTENSIONS, verify_image

PILLOW_IMAGES = REPO.parent / "shared" / "real" / "pillow-images"
pytestmark = pytest.mark.skipif(not PILLOW_IMAGES.is_dir(), reason="../shared/real/pillow-images is absent")

ACCEPTED = frozenset(defaults.VERIFY_FORMATS)
# One real file per accepted format and per awkward mode (name: what it exercises).
HANDFUL = {
    "1_trns.png": "mode 1 with an integer transparency",
    "i_trns.png": "mode I with an integer transparency",
    "avif/star.avifs": "AVIF image sequence, first frame",
    "avif/transparency.avif": "AVIF with alpha",
    "hopper.tif": "TIFF",
    "hopper_16bit.pgm": "PNM, 16-bit grey",
    "hopper.pfm": "PNM family, float (mode F)",
    "hopper_1bit.pbm": "PNM, 1-bit",
    "la.tga": "TGA, LA",
    "test-card-lossless.jp2": "JPEG 2000",
    "hopper.psd": "PSD composite",
    "pil123rgba.qoi": "QOI",
    "hopper.bmp": "BMP",
    "clipboard.dib": "DIB",
    "hopper_256x256.ico": "ICO, largest frame",
    "deerstalker.cur": "CUR",
    "pil_sample_cmyk.jpg": "CMYK JPEG",
    "frozenpond.mpo": "MPO (multi-picture JPEG)",
}


def accepted(fmt: str | None) -> bool:
    """Whether the crawl's default ``VERIFY_FORMATS`` take a file Pillow detects as ``fmt``
    (Pillow opens a multi-picture JPEG as MPO through its JPEG decoder)."""
    return fmt in ACCEPTED or (fmt == "MPO" and "JPEG" in ACCEPTED)


def all_pillow_formats() -> list[str]:
    """Every format Pillow reads, TGA (no signature; its decoder guesses from any header) last:
    a fixed order, where ``Image.open(path)`` alone tries first the plugin of the file's
    extension if it is not loaded yet (then ``pillow.ico`` opens as a broken TGA after a
    ``.tga`` file was opened)."""
    Image.init()
    return sorted(Image.ID, key=lambda name: name == "TGA")


def pillow_decode(path: Path) -> tuple[str, tuple[int, int]] | None:
    """``(format, size)`` when Pillow itself (any format it knows) opens ``path`` and decodes its
    first frame (for ICO/CUR the largest) completely; ``None`` when it cannot."""
    try:
        with Image.open(path, formats=all_pillow_formats()) as image:
            image.load()
            return image.format or "", image.size
    except Exception:  # noqa: BLE001 (any failure means "does not fully decode")
        return None


def within_limits(path: Path, size: tuple[int, int]) -> bool:
    width, height = size
    return (
        path.stat().st_size <= min(defaults.VERIFY_MAX_BYTES, defaults.DOWNLOAD_MAXSIZE)
        and min(width, height) >= defaults.VERIFY_MIN_SIDE
        and width * height <= defaults.VERIFY_MAX_PIXELS
    )


class FileServer(HttpServer):
    """Serves the files under ``root`` at ``/<relative path>`` (a guessed Content-Type, or
    ``application/octet-stream``)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root.resolve()

    def on_get(self, request: Request) -> None:
        path = (self.root / unquote(urlsplit(request.path).path).lstrip("/")).resolve()
        if not path.is_file() or self.root not in path.parents:
            request.reply(404, "text/plain", b"not found")
            return
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        request.reply(200, ctype, path.read_bytes())


def crawl(files: list[Path], tmp: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], dict[str, Path], Path]:
    """Crawl ``files`` (under PILLOW_IMAGES) with ``scrapy crawl urls``; returns the finished
    process, URL -> file, and the dataset folder."""
    dataset = tmp / "dataset"
    with FileServer(PILLOW_IMAGES) as server:
        urls = {f"{server.base}/{quote(path.relative_to(PILLOW_IMAGES).as_posix())}": path for path in files}
        url_list = tmp / "urls.txt"
        url_list.write_text("".join(f"{url}\n" for url in urls))
        proc = start_crawl("urls", dataset, "-a", f"file={url_list}", "-a", "label=pillow", "-s", "LOG_LEVEL=WARNING")
        result = finish(proc, timeout=timeout)
    return result, urls, dataset


def outcome_table(rows: list, urls: dict[str, Path], decoded: dict[Path, tuple[str, tuple[int, int]] | None]) -> str:
    """Per Pillow-detected format: how many files were stored, duplicates, rejected (by reason)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        found = decoded.get(urls.get(row["url"]))  # type: ignore[arg-type]
        fmt = found[0] if found else _detected(urls[row["url"]]) + " (not decodable)"
        counts[fmt][row["status"] if row["status"] != "rejected" else f"rejected:{row['reason']}"] += 1
    lines = []
    for fmt in sorted(counts):
        parts = ", ".join(f"{key} {n}" for key, n in sorted(counts[fmt].items()))
        lines.append(f"{fmt:32} {parts}")
    return "\n".join(lines)


def _detected(path: Path) -> str:
    try:
        with Image.open(path, formats=all_pillow_formats()) as image:
            return image.format or "?"
    except Exception:  # noqa: BLE001
        return "unidentified"


def check_crawl(files: list[Path], tmp: Path, timeout: float) -> tuple[list, dict[str, Path]]:
    result, urls, dataset = crawl(files, tmp, timeout)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Traceback (most recent call last)" not in result.stdout, result.stdout[-3000:]
    rows = catalog_rows(dataset)
    decoded = {path: pillow_decode(path) for path in files}
    print("\n" + outcome_table(rows, urls, decoded))

    # Every URL gets exactly one catalog row.
    assert sorted(row["url"] for row in rows) == sorted(urls)

    by_url = {row["url"]: row for row in rows}
    # No false rejection: what Pillow fully decodes in an accepted format, within the limits.
    expected = {
        url for url, path in urls.items()
        if (found := decoded[path]) and accepted(found[0]) and within_limits(path, found[1])
    }
    missed = {
        urls[url].relative_to(PILLOW_IMAGES).as_posix(): (by_url[url]["reason"])
        for url in expected if by_url[url]["status"] not in ("stored", "duplicate")
    }
    assert not missed, f"falsely rejected: {missed}"

    # Nothing stored that Pillow cannot fully decode; the stored file is what the row says.
    for row in rows:
        if row["status"] != "stored":
            continue
        source = urls[row["url"]]
        assert decoded[source] is not None, f"stored but not decodable: {source.name}"
        stored = dataset / row["path"]
        assert PurePosixPath(row["path"]).suffix == "." + EXTENSIONS[row["format"]]
        with Image.open(stored) as image:
            image.load()
            assert (image.format, image.size) == (row["format"], (row["width"], row["height"]))
        if decoded[source][0] not in ("JPEG", "PNG", "GIF", "WEBP", "MPO"):
            assert row["format"] == "PNG", f"{source.name} ({decoded[source][0]}) stored as {row['format']}"
    return rows, urls


@pytest.mark.timeout(300)
def test_one_real_file_per_format_is_stored(tmp_path: Path) -> None:
    files = [PILLOW_IMAGES / name for name in HANDFUL]
    assert all(path.is_file() for path in files)
    assert all(pillow_decode(path) for path in files)  # the material is what this test assumes
    rows, urls = check_crawl(files, tmp_path, timeout=240)
    by_name = {urls[row["url"]].relative_to(PILLOW_IMAGES).as_posix(): row for row in rows}
    for name in ("1_trns.png", "i_trns.png", "avif/star.avifs", "deerstalker.cur", "pil123rgba.qoi", "clipboard.dib"):
        assert by_name[name]["status"] == "stored", f"{name} ({HANDFUL[name]}) not stored"
    # The same photo in five formats and modes (8-bit, 16-bit, float) decodes to the same
    # picture: one is stored, the others are its duplicates.
    hoppers = [by_name[name] for name in ("hopper.tif", "hopper_16bit.pgm", "hopper.pfm", "hopper.psd", "hopper.bmp")]
    (kept,) = [row for row in hoppers if row["status"] == "stored"]
    assert all(row["duplicate_of"] == kept["path"] for row in hoppers if row is not kept)


def test_12_bit_tiff_is_scaled_from_its_bits_per_sample() -> None:
    """``12bit.cropped.tif``: 12-bit samples (0-30 here) in 16-bit words, BitsPerSample 12."""
    path = PILLOW_IMAGES / "12bit.cropped.tif"
    with Image.open(path) as image:
        assert (image.mode, image.tag_v2[258], np.asarray(image).max()) == ("I;16", (12,), 30)
    stored = Image.open(io.BytesIO(verify_image(path.read_bytes()).body))
    assert np.asarray(stored).max() == round(30 * 255 / 4095)  # 0 if read as 16-bit


@pytest.mark.parametrize("name", ["pil_sample_cmyk.jpg", "tiff_strip_cmyk_jpeg.tif", "tiff_strip_cmyk_16l_jpeg.tif"])
def test_cmyk_gives_the_colours_of_its_rgb_twin(name: str) -> None:
    """Pillow's CMYK samples (an Adobe-inverted JPEG, CMYK TIFFs) are ``pil_sample_rgb.jpg`` in
    CMYK: stored as PNG, they match it to within JPEG noise (inverted CMYK would be ~200 off)."""
    stored = Image.open(io.BytesIO(verify_image((PILLOW_IMAGES / name).read_bytes()).body))
    with Image.open(PILLOW_IMAGES / "pil_sample_rgb.jpg") as twin:
        difference = np.abs(np.asarray(stored, dtype=float) - np.asarray(twin.convert("RGB"), dtype=float))
    assert stored.format == "PNG" and difference.mean() < 8


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_all_pillow_test_images(tmp_path: Path) -> None:
    files = sorted(path for path in PILLOW_IMAGES.rglob("*") if path.is_file())
    assert len(files) > 1000
    check_crawl(files, tmp_path, timeout=1200)
