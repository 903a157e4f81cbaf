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

Accepted formats (``FORMATS``; ``VERIFY_FORMATS`` narrows them): the raster formats a web crawl
meets that Pillow decodes: JPEG (and MPO, its multi-picture form), PNG/APNG, GIF, WebP, AVIF/AVIFS,
TIFF, BMP/DIB, ICO/CUR (the largest image, which Pillow opens), the PNM family (PBM, PGM, PPM, PNM,
PFM), TGA, JPEG 2000, PSD (the merged composite) and QOI. Animations give their first frame.

Stored bytes: the original, when it is a plain JPEG, PNG, GIF or WebP (``EXTENSIONS``) whose
pixels need no normalising. Everything else (other formats, CMYK, 16-bit and float, alpha or a
transparent colour, EXIF-rotated, animated) is stored as a lossless PNG of the normalised image;
with ``VERIFY_MAX_SIDE`` set, larger images are resized to that longest side and re-encoded (JPEG
sources as JPEG at ``VERIFY_JPEG_QUALITY``, others as PNG). The catalog states both sizes:
``width``/``height`` stored, ``source_width``/``source_height`` downloaded.

Normalising to 8-bit RGB (``_to_rgb``), one rule for every mode: transparency in any form (an
alpha band, a palette with alpha, or a ``transparency`` colour or palette index) is composited
over white; 16-bit and 32-bit integer grey is scaled from its format's range, float grey from
0-1 or 0-255 (else from its own range), never clipped (``_wide_grey_to_8_bit``); CMYK (Adobe's
inverted JPEGs included), YCbCr, LAB, HSV, P, L and 1 by Pillow's conversions. Embedded ICC
profiles are not applied, in any mode.
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

__all__ = ["EXTENSIONS", "FORMATS", "Rejected", "VerifiedImage", "verify_image"]

#: Pillow format names ``verify_image`` can accept (``VERIFY_FORMATS`` picks among them). ``PPM``
#: is Pillow's name for the whole PNM family; a JPEG with several pictures opens as ``MPO``
#: through the ``JPEG`` decoder, so ``JPEG`` covers it.
FORMATS = frozenset(
    {"JPEG", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP", "DIB", "ICO", "CUR", "PPM", "TGA", "JPEG2000", "PSD", "QOI"}
)
# The order the decoders are tried in: the common formats first, TGA (no signature: its decoder
# guesses from header values) last. Pillow's own order depends on which plugins happen to be
# imported already (opening a file by name imports its extension's plugin first).
_OPEN_ORDER = (
    "JPEG", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP", "DIB", "ICO", "CUR", "PPM", "JPEG2000", "PSD", "QOI", "TGA",
)
#: File extension per stored Pillow format (docs/dataset.md): the formats whose original bytes
#: are kept when the pixels need no normalising; anything else is stored as PNG.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}
_EXIF_ORIENTATION = 0x0112
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

# Signatures of real image formats that Pillow cannot open here (HEIF, JPEG XL, SVG; AVIF
# without libavif) or that `formats` may leave out, so that they are reported as
# `unsupported_format` rather than `not_an_image`.
_OTHER_IMAGE_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"8BPS"),  # Photoshop
    (0, b"%!PS"),  # PostScript / EPS (Pillow would shell out to Ghostscript)
    (0, b"\xc5\xd0\xd3\xc6"),  # DOS EPS
    (0, b"\x00\x00\x01\x00"),  # ICO
    (0, b"\x00\x00\x02\x00"),  # CUR
    (4, b"ftypheic"),
    (4, b"ftypheix"),
    (4, b"ftypmif1"),
    (4, b"ftypavif"),
    (4, b"ftypavis"),
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
        formats: Pillow format names accepted (a subset of ``FORMATS``).
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
        image = Image.open(io.BytesIO(body), formats=[name for name in _OPEN_ORDER if name in formats])
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
        image.load()  # first frame of an animation, largest icon, PSD composite
        transparent = image.has_transparency_data
        normalised = _to_rgb(ImageOps.exif_transpose(image), _tiff_bits_per_sample(image))
        animated = getattr(image, "n_frames", 1) > 1
        keep = (
            source_format in EXTENSIONS
            and mode in ("RGB", "L")
            and not transparent
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


def _to_rgb(image: Image.Image, bits_per_sample: int | None = None) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, by the rules in the module docstring.

    ``bits_per_sample``: the source's own (TIFF's BitsPerSample), when it says. Returns a new
    image (mode ``RGB``, same size) without a ``transparency`` entry.
    """
    if image.mode in _WIDE_GREY_MODES:
        image = _wide_grey_to_8_bit(image, bits_per_sample)
    if image.has_transparency_data:
        # Pillow turns a transparent colour or palette index into alpha (convert_transparent).
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")  # also a copy when the image is RGB already
    rgb.info.pop("transparency", None)
    return rgb


def _wide_grey_to_8_bit(image: Image.Image, bits: int | None) -> Image.Image:
    """``L`` (or ``LA`` when a ``transparency`` value marks transparent pixels) from 16-bit,
    32-bit integer or float grey, scaled rather than clipped as Pillow's own conversion does.

    Integers are scaled from their format's range: ``2**bits - 1`` when ``bits`` (a TIFF's
    BitsPerSample) is 9-15 (e.g. 12-bit scans kept in 16-bit words), 65535 for other 16-bit data
    and for 32-bit values above 255, else 255. Floats have no fixed range: 0-1 (the PFM and
    float-TIFF convention) or 0-255 when the values fit in one, else their own minimum-maximum.
    """
    raw = np.asarray(image)
    array = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    floor = 0.0
    if image.mode == "F":
        if low >= 0.0 and high <= 255.0:
            peak = 1.0 if high <= 1.0 else 255.0
        else:
            floor, peak = low, max(high - low, 1e-12)
    else:
        if bits is not None and 8 < bits < 16:
            peak = float(2**bits - 1)
        else:
            peak = 65535.0 if image.mode.startswith("I;16") or high > 255 else 255.0
    scaled = np.clip((array - floor) * (255.0 / peak), 0, 255).round().astype(np.uint8)
    grey = Image.fromarray(scaled)  # uint8 2-D: mode L
    transparency = image.info.get("transparency")
    if isinstance(transparency, (int, float)):
        alpha = np.where(raw == transparency, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha)))
    return grey


def _tiff_bits_per_sample(image: Image.Image) -> int | None:
    """A TIFF's BitsPerSample (of its first sample); ``None`` for other formats."""
    tags = getattr(image, "tag_v2", None)
    value = tags.get(258) if tags is not None else None  # BitsPerSample, one per sample
    if isinstance(value, tuple):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def _looks_like_other_image(body: bytes) -> bool:
    head = body[:512]
    if any(head[offset : offset + len(sig)] == sig for offset, sig in _OTHER_IMAGE_SIGNATURES):
        return True
    text = head.lstrip().lower()
    return text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text)
