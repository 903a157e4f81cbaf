"""Verify: hostile and awkward input, each with its expected outcome."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from crawler_testkit import encode, make_item, picture, png_bomb, run
from PIL import Image, features
from scrapy.exceptions import DropItem

from crawler.errors import UserError
from crawler.images.decode import Rejected, _to_rgb, verify_image
from crawler.images.hashing import hashes_of
from crawler.pipelines.prepare import PreparePipeline


# Pillow wheels have built AVIF in since 11.3; a Pillow built without libavif reports it as
# `unsupported_format` (its signature is known).
NEEDS_AVIF = pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")


def reason_of(body: bytes, **limits: Any) -> str:
    with pytest.raises(Rejected) as caught:
        verify_image(body, **limits)
    return caught.value.reason


def test_plain_jpeg_keeps_its_original_bytes() -> None:
    body = encode(picture(1), "JPEG", quality=90)
    result = verify_image(body)
    assert (result.format, result.width, result.height, result.reencoded) == ("JPEG", 128, 128, False)
    assert result.body == body
    assert result.image.mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_plain_formats_keep_their_bytes(fmt: str) -> None:
    body = encode(picture(2), fmt)
    result = verify_image(body)
    assert result.format == fmt and result.body == body


# Formats outside JPEG/PNG/GIF/WebP: stored as a lossless PNG of exactly the decoded pixels.
@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("BMP", {}), ("DIB", {}), ("TIFF", {}), ("PPM", {}), ("TGA", {}), ("QOI", {}),
        ("JPEG2000", {"irreversible": False}), pytest.param("AVIF", {"quality": 100}, marks=NEEDS_AVIF),
        ("ICO", {"sizes": [(64, 64)]}),
    ],
)
def test_other_formats_are_stored_as_png_of_the_decoded_pixels(fmt: str, params: dict[str, Any]) -> None:
    body = encode(picture(11, (64, 64)), fmt, **params)
    result = verify_image(body, formats=frozenset({fmt}))
    assert (result.source_format, result.format, result.reencoded, result.width) == (fmt, "PNG", True, 64)
    decoded = Image.open(io.BytesIO(body)).convert("RGB")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.body))), np.asarray(decoded))


def test_icon_gives_its_largest_image() -> None:
    out = io.BytesIO()
    picture(12, (128, 128)).save(out, "ICO", sizes=[(16, 16), (48, 48), (128, 128)])
    result = verify_image(out.getvalue())
    assert (result.source_format, result.width, result.height) == ("ICO", 128, 128)


def test_icon_too_small_even_at_its_largest() -> None:
    out = io.BytesIO()
    picture(12, (128, 128)).save(out, "ICO", sizes=[(16, 16), (24, 24)])
    assert reason_of(out.getvalue()) == "too_small"


@NEEDS_AVIF
def test_animated_avif_takes_the_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "AVIF", save_all=True, append_images=frames[1:], duration=100, quality=90)
    result = verify_image(out.getvalue())
    assert (result.source_format, result.format) == ("AVIF", "PNG")
    red, green, blue = result.image.getpixel((32, 32))
    assert red > 200 and green < 50 and blue < 50


def test_verify_formats_narrows_the_new_formats() -> None:
    for fmt in ("AVIF", "QOI", "PPM") if features.check("avif") else ("QOI", "PPM"):
        assert reason_of(encode(picture(13), fmt), formats=frozenset({"JPEG", "PNG"})) == "unsupported_format"


def test_greyscale_png_is_kept_but_hashed_as_rgb() -> None:
    body = encode(picture(3, mode="L"), "PNG")
    result = verify_image(body)
    assert result.body == body and result.image.mode == "RGB"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"<!doctype html><html><body>Hotlinking forbidden</body></html>", "not_an_image"),
        (b"\x00" * 100, "not_an_image"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "unsupported_format"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "unsupported_format"),
        (b"%PDF-1.4\n", "not_an_image"),
    ],
)
def test_non_images(body: bytes, reason: str) -> None:
    assert reason_of(body) == reason


def test_format_known_to_pillow_but_not_accepted_is_unsupported() -> None:
    assert reason_of(encode(picture(4), "TIFF"), formats=frozenset({"JPEG", "PNG"})) == "unsupported_format"


def test_truncated_jpeg() -> None:
    body = encode(picture(5, (256, 256)), "JPEG", quality=95)
    assert reason_of(body[: len(body) // 2]) == "truncated"


def test_truncated_png() -> None:
    body = encode(picture(5, (256, 256)), "PNG")
    assert reason_of(body[: len(body) // 2]) == "truncated"


def test_png_bomb_is_refused_from_its_header() -> None:
    assert reason_of(png_bomb(20000, 20000)) == "too_many_pixels"


def test_pixel_limit_is_a_setting() -> None:
    body = encode(picture(6, (200, 200)), "PNG")
    assert reason_of(body, max_pixels=100 * 100) == "too_many_pixels"
    assert verify_image(body, max_pixels=200 * 200).width == 200


@pytest.mark.parametrize("size", [(1, 1), (31, 400), (400, 31)])
def test_too_small(size: tuple[int, int]) -> None:
    assert reason_of(encode(Image.new("RGB", size, "red"), "GIF")) == "too_small"


def test_min_side_is_a_setting() -> None:
    body = encode(Image.new("RGB", (40, 40), "red"), "PNG")
    assert reason_of(body, min_side=64) == "too_small"


def test_too_large_bytes() -> None:
    body = encode(picture(7), "PNG")
    assert reason_of(body, max_bytes=len(body) - 1) == "too_large"


def test_cmyk_jpeg_is_converted_to_rgb_and_reencoded_as_png() -> None:
    body = encode(picture(8, mode="CMYK"), "JPEG")
    result = verify_image(body)
    assert result.reencoded and result.format == "PNG" and result.source_format == "JPEG"
    stored = Image.open(io.BytesIO(result.body))
    assert stored.format == "PNG" and stored.mode == "RGB"


def test_palette_png_with_transparency_is_composited_over_white() -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 32, 64))  # left half red, right half palette 0 = transparent black
    body = encode(image, "PNG", transparency=0)
    result = verify_image(body)
    assert result.reencoded
    assert result.image.getpixel((10, 10)) == (255, 0, 0)
    assert result.image.getpixel((50, 10)) == (255, 255, 255)


def two_halves(mode: str, left: Any, right: Any) -> Image.Image:
    """A 64x64 image of ``mode``: left half ``left``, right half ``right``."""
    if mode == "I;16":  # Pillow's paste of a 16-bit value keeps only its low byte
        array = np.full((64, 64), right, dtype=np.uint16)
        array[:, :32] = left
        return Image.fromarray(array)  # uint16 gives mode I;16
    image = Image.new(mode, (64, 64), right)
    image.paste(left, (0, 0, 32, 64))
    return image


@pytest.mark.parametrize(
    ("mode", "opaque", "transparent", "expected_left"),
    [
        ("1", 0, 1, (0, 0, 0)),  # issue 12: 1_trns.png was rejected as corrupt
        ("L", 90, 7, (90, 90, 90)),
        ("RGB", (200, 10, 10), (1, 2, 3), (200, 10, 10)),
        ("I;16", 30000, 7, (117, 117, 117)),  # scaled from 0-65535, as without transparency
    ],
)
def test_transparent_colour_is_composited_over_white(mode, opaque, transparent, expected_left) -> None:
    image = two_halves(mode, opaque, transparent)
    trns = 255 if mode == "1" else transparent
    body = encode(image, "PNG", transparency=trns)
    assert Image.open(io.BytesIO(body)).info["transparency"] == trns  # the tRNS chunk is there
    result = verify_image(body)
    assert result.reencoded and result.format == "PNG"
    stored = Image.open(io.BytesIO(result.body))
    assert stored.mode == "RGB" and "transparency" not in stored.info
    assert stored.getpixel((10, 10)) == expected_left
    assert stored.getpixel((50, 10)) == (255, 255, 255)


@pytest.mark.parametrize(("mode", "fmt"), [("LA", "PNG"), ("LA", "TGA"), ("P", "PNG"), ("RGBA", "TGA"), ("PA", "")])
def test_alpha_is_composited_over_white(mode: str, fmt: str) -> None:
    """An alpha band, or a palette with alpha (PNG's tRNS for palette images, Pillow's PA)."""
    opaque = {"LA": (40, 255), "P": 1, "PA": (1, 255), "RGBA": (40, 40, 40, 255)}[mode]
    clear = {"LA": (0, 0), "P": 0, "PA": (0, 0), "RGBA": (0, 0, 0, 0)}[mode]
    image = two_halves(mode, opaque, clear)
    if mode in ("P", "PA"):
        image.putpalette([0, 0, 0, 0, 40, 40, 40, 255], rawmode="RGBA")
    if mode == "PA":  # no encoder writes PA: the conversion itself
        stored = _to_rgb(image)
        assert stored.getpixel((10, 10)) == (40, 40, 40) and stored.getpixel((50, 10)) == (255, 255, 255)
        return
    result = verify_image(encode(image, fmt), formats=frozenset({fmt}))
    stored = Image.open(io.BytesIO(result.body))
    assert stored.getpixel((10, 10)) == (40, 40, 40) and stored.getpixel((50, 10)) == (255, 255, 255)


def test_float_grey_is_scaled_from_0_to_1() -> None:
    ramp = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    result = verify_image(encode(Image.fromarray(ramp, mode="F"), "TIFF"))
    values = np.asarray(Image.open(io.BytesIO(result.body)))[..., 0]
    assert values.min() == 0 and values.max() == 255 and 120 < values[32, 0] < 136


def test_float_grey_outside_0_to_255_is_stretched_from_its_own_range() -> None:
    ramp = np.linspace(-3.14, 3.14, 64 * 64, dtype=np.float32).reshape(64, 64)  # a phase image
    result = verify_image(encode(Image.fromarray(ramp, mode="F"), "TIFF"))
    values = np.asarray(Image.open(io.BytesIO(result.body)))[..., 0]
    assert values.min() == 0 and values.max() == 255 and 120 < values[32, 0] < 136


def test_rgba_png_alpha_over_white() -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 255, 0))
    result = verify_image(encode(image, "PNG"))
    assert result.image.getpixel((5, 5)) == (255, 255, 255)


def test_animated_gif_takes_the_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    result = verify_image(out.getvalue())
    assert result.reencoded and result.format == "PNG"
    red, green, blue = result.image.getpixel((32, 32))
    assert red > 200 and green < 50 and blue < 50


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (120, 60), "white")
    image.paste((255, 0, 0), (0, 0, 60, 60))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    body = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    result = verify_image(body)
    assert (result.width, result.height) == (60, 120)
    assert result.reencoded  # the stored pixels must not depend on a viewer honouring EXIF
    red, _, _ = result.image.getpixel((30, 10))  # red half is now on top
    assert red > 200
    stored = Image.open(io.BytesIO(result.body))
    assert stored.size == (60, 120)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    body = encode(Image.fromarray(ramp), "PNG")
    result = verify_image(body)
    values = np.asarray(result.image)[..., 0]
    assert values.min() == 0 and values.max() == 255
    assert 100 < values[32, 0] < 160  # mid-ramp stays mid-grey (clipping would give 255)


def test_webp_is_accepted() -> None:
    result = verify_image(encode(picture(9), "WEBP", lossless=True))
    assert result.format == "WEBP" and not result.reencoded


# -- the pipeline ------------------------------------------------------------------------


def test_pipeline_sets_fields_and_keeps_bytes(make_crawler, build) -> None:
    crawler = make_crawler()
    pipeline = build(PreparePipeline, crawler)
    body = encode(picture(10), "JPEG")
    item = run(pipeline.process_item(make_item(body=body, sha256="x", bytes=len(body))))
    assert (item["width"], item["height"], item["format"], item["ext"]) == (128, 128, "JPEG", "jpg")
    # One item shape whatever runs the work: the hashes, and the original bytes staged.
    assert item["image_hashes"] == hashes_of(verify_image(body).image)
    staged, digest = item["staged"]
    assert Path(staged).read_bytes() == body and digest == hashlib.sha256(body).hexdigest()
    assert "body" not in item and "image" not in item
    assert crawler.stats.get_value("verify/ok") == 1


def test_pipeline_rejects_with_reason_status_and_stat(make_crawler, build) -> None:
    crawler = make_crawler(VERIFY_MIN_SIDE=64)
    pipeline = build(PreparePipeline, crawler)
    item = make_item(body=encode(Image.new("RGB", (40, 40)), "PNG"))
    with pytest.raises(DropItem, match="too_small"):
        run(pipeline.process_item(item))
    assert (item["status"], item["reason"]) == ("rejected", "too_small")
    assert "body" not in item
    assert crawler.stats.get_value("verify/rejected/too_small") == 1


@pytest.mark.parametrize(
    "settings",
    [{"VERIFY_MIN_SIDE": 0}, {"VERIFY_MAX_PIXELS": -1}, {"VERIFY_FORMATS": "JPEG,HEIC"}],
)
def test_misconfiguration_stops_the_crawl(make_crawler, build, settings) -> None:
    # Not NotConfigured: Scrapy would just disable the stage and let every item through.
    with pytest.raises(UserError, match="VERIFY_"):
        build(PreparePipeline, make_crawler(**settings))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"VERIFY_MIN_SIDE": "abc"},
            "VERIFY_MIN_SIDE must be a whole number of pixels >= 1, got 'abc' (e.g. -s VERIFY_MIN_SIDE=64)",
        ),
        (
            {"VERIFY_JPEG_QUALITY": "100"},
            "VERIFY_JPEG_QUALITY must be a whole number in 1-95, got '100' (e.g. -s VERIFY_JPEG_QUALITY=90)",
        ),
        (
            {"STORE_FSYNC": "maybe"},
            "STORE_FSYNC must be true or false (1 or 0), got 'maybe' (e.g. -s STORE_FSYNC=1)",
        ),
    ],
)
def test_a_bad_setting_value_names_the_setting_and_what_it_must_be(make_crawler, build, settings, message) -> None:
    """Issue 11: one line naming the setting, the expected type and range, and an example."""
    with pytest.raises(UserError) as caught:
        build(PreparePipeline, make_crawler(**settings))
    assert str(caught.value) == message


def test_settings_left_unset_take_the_project_defaults(make_crawler, build) -> None:
    """Defaults live in crawler/settings.py only: a component built without them reads them there."""
    from crawler import settings as defaults

    pipeline = build(PreparePipeline, make_crawler())
    assert pipeline.limits["min_side"] == defaults.VERIFY_MIN_SIDE
    assert pipeline.limits["formats"] == frozenset(defaults.VERIFY_FORMATS)
    assert pipeline.hash_name == defaults.DEDUPE_HASH
