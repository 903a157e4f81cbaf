"""Decode, verify and normalise downloaded bytes: is it really an image we can use?

Pure image code (Pillow, numpy; no Scrapy), run per image by ``crawler.images.prepare``
(in a worker process or a thread) and by ``crawler.dataset check``.

Nothing about the URL or the Content-Type header is trusted: the format is what Pillow detects
in the bytes, and every byte of pixel data must decode (``load()``; ``verify()`` alone misses
truncated pixel data). The decoded image is normalised (EXIF orientation, first frame, RGB with
alpha composited over white) and returned at its canonical reduction
(``crawler.images.hashing.HASH_RECIPE``) for hashing. A plain JPEG, kept byte for byte, is
decoded once at that reduced size (libjpeg DCT scaling: every block is still entropy-decoded, so truncation
and corruption are caught as in a full-size decode; on the 500-pixel hymenoptera photos, decode
and reduction together take 1.4 ms instead of 2.1).

Stored bytes: the original by default. Images that need normalising (CMYK, 16-bit, alpha,
EXIF-rotated, animated, TIFF) are stored as a lossless PNG; with ``VERIFY_MAX_SIDE`` set,
larger images are resized to that longest side and re-encoded (JPEG sources as JPEG at
``VERIFY_JPEG_QUALITY``, others as PNG). The catalog states both sizes: ``width``/``height``
stored, ``source_width``/``source_height`` downloaded.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from crawler import settings as defaults
from crawler.images.hashing import canonical_image, decode_canonical_jpeg

logger = logging.getLogger(__name__)

__all__ = ["EXTENSIONS", "Rejected", "VerifiedImage", "verify_image"]

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
        self.detail = detail


@dataclass(frozen=True)
class VerifiedImage:
    """Outcome of ``verify_image``.

    ``image`` is the canonical RGB image every perceptual hash is taken from (dedupe's
    ``HASH_RECIPE``: EXIF-oriented, first frame, longest side at most ``CANONICAL_SIDE`` pixels;
    decoded at reduced size when the stored bytes are JPEG). ``width``/``height`` are the
    stored image's size in pixels (after EXIF orientation and any ``max_side`` resize),
    ``source_width``/``source_height`` the downloaded image's; ``source_format`` the Pillow
    format detected in the downloaded bytes; ``body`` the bytes to store and ``format`` their
    Pillow format: the original bytes, or a re-encode (``reencoded``) when the pixels needed
    normalising (PNG, lossless) or were resized (``resized``; JPEG at ``jpeg_quality`` for JPEG
    sources, else PNG).
    """

    image: Image.Image
    width: int
    height: int
    source_format: str
    format: str
    body: bytes
    reencoded: bool
    source_width: int = 0
    source_height: int = 0
    resized: bool = False


def verify_image(
    body: bytes,
    *,
    min_side: int = defaults.VERIFY_MIN_SIDE,
    max_pixels: int = defaults.VERIFY_MAX_PIXELS,
    max_bytes: int = defaults.VERIFY_MAX_BYTES,
    formats: frozenset[str] = frozenset(defaults.VERIFY_FORMATS),
    max_side: int = defaults.VERIFY_MAX_SIDE,
    jpeg_quality: int = defaults.VERIFY_JPEG_QUALITY,
) -> VerifiedImage:
    """Decode ``body`` completely and normalise it; see the module docstring. The limits
    default to the crawl's settings of the same names (``crawler/settings.py``).

    Args:
        body: the downloaded bytes.
        min_side: smallest accepted width and height, pixels (after EXIF orientation).
        max_pixels: largest accepted width x height, pixels, checked from the header before
            decoding so a decompression bomb never allocates its pixels.
        max_bytes: largest accepted size of ``body``, bytes.
        formats: Pillow format names accepted (a subset of ``EXTENSIONS``).
        max_side: when > 0, images whose longest side is above this many pixels are resized
            to it (LANCZOS) and re-encoded; 0 keeps every original as downloaded.
        jpeg_quality: JPEG quality (1-95, Pillow's scale) of resized JPEG sources.

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
    if getattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False):  # pragma: no cover
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: truncation goes unseen")
    with image, _decoding():
        source_format = image.format or ""
        width, height = image.size
        if width * height > max_pixels:
            raise Rejected("too_many_pixels", f"{width}x{height} > {max_pixels} pixels")
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in (5, 6, 7, 8):  # a quarter turn: the picture's sides swap
            width, height = height, width
        if min(width, height) < min_side:
            raise Rejected("too_small", f"{width}x{height} < {min_side} px")
        mode = image.mode
        resize = max_side > 0 and max(width, height) > max_side
        if source_format == "JPEG" and mode in ("RGB", "L") and orientation in (1, None) and not resize:
            # The common case: kept byte for byte, so only the canonical image is needed, and
            # a DCT-scaled decode still reads every block of the file.
            image.close()
            canonical = decode_canonical_jpeg(body)
            return VerifiedImage(canonical, width, height, "JPEG", "JPEG", body, False, width, height)
        image.load()  # first frame of an animation
        normalised = _to_rgb(ImageOps.exif_transpose(image))
        animated = getattr(image, "n_frames", 1) > 1
        keep = (
            source_format in _KEEP_FORMATS
            and mode in ("RGB", "L")
            and orientation in (1, None)
            and not animated
            and not resize
        )
        if keep:
            canonical = canonical_image(normalised)
            return VerifiedImage(canonical, width, height, source_format, source_format, body, False, width, height)
        out = io.BytesIO()
        if resize:
            scale = max_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            normalised = normalised.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if resize and source_format == "JPEG":
            normalised.save(out, format="JPEG", quality=jpeg_quality)
            stored = out.getvalue()
            # Hashed the way any stored JPEG is (HASH_RECIPE), from the stored bytes.
            return VerifiedImage(
                decode_canonical_jpeg(stored), *normalised.size, "JPEG", "JPEG", stored, True, width, height, True
            )
        # Lossless and deterministic: the same source always gives the same stored bytes.
        normalised.save(out, format="PNG", compress_level=6)
        return VerifiedImage(
            canonical_image(normalised), *normalised.size, source_format, "PNG", out.getvalue(), True,
            width, height, resize,
        )


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """Map Pillow's decoding errors to ``Rejected`` (``truncated``, ``too_many_pixels`` or
    ``corrupt``)."""
    try:
        yield
    except Rejected:
        raise
    except Image.DecompressionBombError as exc:
        raise Rejected("too_many_pixels", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        text = str(exc).lower()
        if any(word in text for word in ("truncated", "broken data stream", "end of file", "eof")):
            raise Rejected("truncated", str(exc)) from exc
        raise Rejected("corrupt", repr(exc)) from exc


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
