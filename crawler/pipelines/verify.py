"""Verify stage: is it really an image we can use? Decide from the bytes, decode fully, normalise.

Nothing about the URL or the Content-Type header is trusted: the format is what Pillow detects
in the bytes, and the image must decode completely (``load()``; ``verify()`` alone misses
truncated pixel data). The decoded image is normalised (EXIF orientation, first frame, RGB with
alpha composited over white) and handed to dedupe for hashing.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from itemadapter import ItemAdapter
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from scrapy.exceptions import DropItem, NotConfigured

from crawler.threads import run_in_thread

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["EXTENSIONS", "Rejected", "VerifiedImage", "VerifyPipeline", "verify_image"]

# File extension per stored Pillow format (docs/dataset.md).
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
# Formats whose original bytes are kept as they are when the pixels need no normalising.
_KEEP_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
_EXIF_ORIENTATION = 0x0112

# Signatures of real image formats that we do not decode, so that they are reported as
# `unsupported_format` rather than `not_an_image`.
_OTHER_IMAGE_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"8BPS"),  # Photoshop
    (0, b"%!PS"),  # PostScript / EPS (Pillow would shell out to Ghostscript)
    (0, b"\xc5\xd0\xd3\xc6"),  # DOS EPS
    (0, b"\x00\x00\x01\x00"),  # ICO
    (4, b"ftypheic"),
    (4, b"ftypheix"),
    (4, b"ftypmif1"),
    (4, b"ftypavif"),
    (0, b"\xff\x0a"),  # JPEG XL codestream
    (0, b"\x00\x00\x00\x0cJXL "),
)


class Rejected(Exception):
    """The bytes are not a usable image; ``reason`` is the stable catalog reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedImage:
    """Outcome of ``verify_image``.

    ``image`` is RGB, EXIF-oriented, first frame; ``width``/``height`` its size in pixels;
    ``source_format`` the Pillow format detected in the downloaded bytes; ``body`` the bytes to
    store and ``format`` their Pillow format (the original bytes, or a PNG re-encode of
    ``image`` when ``reencoded``).
    """

    image: Image.Image
    width: int
    height: int
    source_format: str
    format: str
    body: bytes
    reencoded: bool


def verify_image(
    body: bytes,
    *,
    min_side: int = 32,
    max_pixels: int = 50_000_000,
    max_bytes: int = 32 * 1024 * 1024,
    formats: frozenset[str] = frozenset(EXTENSIONS),
) -> VerifiedImage:
    """Decode ``body`` fully and normalise it; see the module docstring.

    Args:
        body: the downloaded bytes.
        min_side: smallest accepted width and height, pixels (after EXIF orientation).
        max_pixels: largest accepted width x height, pixels, checked from the header before
            decoding so a decompression bomb never allocates its pixels.
        max_bytes: largest accepted size of ``body``, bytes.
        formats: Pillow format names accepted (a subset of ``EXTENSIONS``).

    Raises:
        Rejected: ``empty``, ``too_large``, ``not_an_image``, ``unsupported_format``,
            ``too_many_pixels``, ``truncated``, ``corrupt`` or ``too_small``.
    """
    if not body:
        raise Rejected("empty")
    if len(body) > max_bytes:
        raise Rejected("too_large", f"{len(body)} bytes > {max_bytes}")
    try:
        # `formats` restricts which decoders may even parse the header.
        image = Image.open(io.BytesIO(body), formats=sorted(formats))
    except Image.DecompressionBombError as exc:
        raise Rejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        if _looks_like_other_image(body):
            raise Rejected("unsupported_format") from exc
        try:
            Image.open(io.BytesIO(body)).close()  # a format Pillow knows but we do not accept
        except Exception:
            raise Rejected("not_an_image") from exc
        raise Rejected("unsupported_format") from exc
    except Exception as exc:  # malformed headers raise SyntaxError, ValueError, struct.error...
        raise Rejected("corrupt", repr(exc)) from exc
    with image:
        source_format = image.format or ""
        width, height = image.size
        if width * height > max_pixels:
            raise Rejected("too_many_pixels", f"{width}x{height} > {max_pixels} pixels")
        if getattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False):  # pragma: no cover
            logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: truncation goes unseen")
        try:
            image.load()  # first frame of an animation
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            mode = image.mode
            normalised = _to_rgb(ImageOps.exif_transpose(image))
        except Image.DecompressionBombError as exc:
            raise Rejected("too_many_pixels", str(exc)) from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
            text = str(exc).lower()
            if any(word in text for word in ("truncated", "broken data stream", "end of file", "eof")):
                raise Rejected("truncated", str(exc)) from exc
            raise Rejected("corrupt", repr(exc)) from exc
        animated = getattr(image, "n_frames", 1) > 1
    width, height = normalised.size
    if min(width, height) < min_side:
        raise Rejected("too_small", f"{width}x{height} < {min_side} px")
    keep = (
        source_format in _KEEP_FORMATS
        and mode in ("RGB", "L")
        and orientation in (1, None)
        and not animated
    )
    if keep:
        return VerifiedImage(normalised, width, height, source_format, source_format, body, False)
    out = io.BytesIO()
    # Lossless and deterministic: the same source always gives the same stored bytes.
    normalised.save(out, format="PNG", compress_level=6)
    return VerifiedImage(normalised, width, height, source_format, "PNG", out.getvalue(), True)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow clips 16-bit values at 255 when converting to L; scale them instead.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, P, L, 1: Pillow's conversions are right for these.
    return image.convert("RGB")


def _looks_like_other_image(body: bytes) -> bool:
    head = body[:512]
    if any(head[offset : offset + len(sig)] == sig for offset, sig in _OTHER_IMAGE_SIGNATURES):
        return True
    text = head.lstrip().lower()
    return text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text)


class VerifyPipeline:
    """Reject what is not a usable image; normalise what is.

    Settings (read once in ``from_crawler``):
        VERIFY_MIN_SIDE: smallest width and height, pixels (default 32: below that a photo
            carries no class information, and 1x1 tracking pixels are the usual junk).
        VERIFY_MAX_PIXELS: largest width x height, pixels (default 50,000,000, about a
            50-megapixel photo; Pillow's own bomb limit is 89,478,485).
        VERIFY_MAX_BYTES: largest accepted size, bytes (default 32 MiB; data: URIs bypass
            DOWNLOAD_MAXSIZE, so this is enforced here too).
        VERIFY_FORMATS: Pillow formats accepted (default JPEG, PNG, GIF, WEBP, BMP, TIFF).

    On success sets ``image``, ``width``, ``height``, ``format``, ``ext`` and replaces ``body``
    with the bytes to store. Stats: ``verify/ok``, ``verify/reencoded``,
    ``verify/rejected/<reason>``.

    Raises:
        NotConfigured: on a non-positive limit or an unknown format name.
        DropItem: with the ``Rejected`` reason (the item gets ``status = "rejected"``).
    """

    MIN_SIDE = 32
    MAX_PIXELS = 50_000_000
    MAX_BYTES = 32 * 1024 * 1024
    FORMATS = tuple(EXTENSIONS)

    def __init__(
        self,
        crawler: Crawler,
        *,
        min_side: int,
        max_pixels: int,
        max_bytes: int,
        formats: frozenset[str],
    ) -> None:
        self.crawler = crawler
        self.min_side = min_side
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.formats = formats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        min_side = settings.getint("VERIFY_MIN_SIDE", cls.MIN_SIDE)
        max_pixels = settings.getint("VERIFY_MAX_PIXELS", cls.MAX_PIXELS)
        max_bytes = settings.getint("VERIFY_MAX_BYTES", cls.MAX_BYTES)
        formats = frozenset(f.upper() for f in settings.getlist("VERIFY_FORMATS", list(cls.FORMATS)))
        if min_side < 1 or max_pixels < 1 or max_bytes < 1:
            raise NotConfigured("VERIFY_MIN_SIDE, VERIFY_MAX_PIXELS and VERIFY_MAX_BYTES must be >= 1")
        if unknown := formats - set(EXTENSIONS):
            raise NotConfigured(
                f"VERIFY_FORMATS has {sorted(unknown)}; valid formats: {sorted(EXTENSIONS)}"
            )
        return cls(
            crawler, min_side=min_side, max_pixels=max_pixels, max_bytes=max_bytes, formats=formats
        )

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        stats = self.crawler.stats
        assert stats is not None
        try:
            result = await run_in_thread(self.check, adapter.get("body") or b"")
        except Rejected as exc:
            adapter["status"] = "rejected"
            adapter["reason"] = exc.reason
            adapter.pop("body", None)
            stats.inc_value(f"verify/rejected/{exc.reason}")
            logger.info("rejected %s: %s", adapter.get("url", "")[:100], exc)
            raise DropItem(exc.reason) from exc
        adapter["image"] = result.image
        adapter["width"] = result.width
        adapter["height"] = result.height
        adapter["format"] = result.format
        adapter["ext"] = EXTENSIONS[result.format]
        adapter["body"] = result.body
        stats.inc_value("verify/ok")
        if result.reencoded:
            stats.inc_value("verify/reencoded")
        return item

    def check(self, body: bytes) -> VerifiedImage:
        """``verify_image`` with this pipeline's limits (blocking; call it from a thread)."""
        return verify_image(
            body,
            min_side=self.min_side,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            formats=self.formats,
        )
