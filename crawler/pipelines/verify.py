"""Verify stage: is it really an image we can use? Decide from the bytes, decode fully, normalise.

Nothing about the URL or the Content-Type header is trusted: the format is what Pillow detects
in the bytes, and every byte of pixel data must decode (``load()``; ``verify()`` alone misses
truncated pixel data). The decoded image is normalised (EXIF orientation, first frame, RGB with
alpha composited over white) and handed to dedupe for hashing as its canonical reduction
(``crawler.pipelines.dedupe.HASH_RECIPE``). A plain JPEG, kept byte for byte, is decoded once
at that reduced size (libjpeg DCT scaling: every block is still entropy-decoded, so truncation
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
import hashlib
import io
import logging
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from itemadapter import ItemAdapter
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from scrapy import signals
from scrapy.exceptions import DropItem

from crawler.pipelines.dedupe import DEFAULT_HASH, DedupePipeline, canonical_image, decode_canonical_jpeg, hashes_of
from crawler.pipelines.store import TMP_DIR, StorePipeline, discard_staged, write_tmp
from crawler.threads import run_in_thread
from crawler.workers import WorkerCrashed, WorkerPool, acquire_pool, default_process_count, release_pool

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["EXTENSIONS", "PreparedImage", "Rejected", "VerifiedImage", "VerifyPipeline", "prepare_image", "verify_image"]

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
    min_side: int = 32,
    max_pixels: int = 50_000_000,
    max_bytes: int = 32 * 1024 * 1024,
    formats: frozenset[str] = frozenset(EXTENSIONS),
    max_side: int = 0,
    jpeg_quality: int = 90,
) -> VerifiedImage:
    """Decode ``body`` completely and normalise it; see the module docstring.

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


@dataclass(frozen=True)
class PreparedImage:
    """Outcome of ``prepare_image``: what ``VerifiedImage`` says, minus the pixels and the bytes.

    ``hashes`` are dedupe's hashes of the canonical image (``hashes_of``); ``staged`` the
    temporary file holding the bytes to store and ``sha256`` their SHA-256 (hex), or both
    ``None`` when no folder was given, in which case ``body`` holds re-encoded bytes (``None``:
    store the downloaded bytes as they are).
    """

    width: int
    height: int
    source_width: int
    source_height: int
    source_format: str
    format: str
    reencoded: bool
    resized: bool
    hashes: dict[str, str]
    staged: str | None = None
    sha256: str | None = None
    body: bytes | None = None


def prepare_image(
    body: bytes,
    limits: dict[str, Any],
    hash_name: str = DEFAULT_HASH,
    variants: bool = True,
    tmp_dir: str | None = None,
    fsync: bool = False,
) -> PreparedImage:
    """Verify ``body`` (``verify_image(body, **limits)``), hash it for dedupe (``hashes_of``) and
    write the bytes to store into a new temporary file in ``tmp_dir`` (fsynced if ``fsync``):
    every per-image step that needs the CPU, in one call, for a worker process
    (``crawler.workers``). Only sizes, hashes and a path come back, never pixels.

    Raises:
        Rejected: as ``verify_image``.
        OSError: writing the temporary file.
    """
    result = verify_image(body, **limits)
    hashes = hashes_of(result.image, hash_name, variants=variants)
    staged = digest = reencoded_body = None
    if tmp_dir is not None:
        staged = str(write_tmp(result.body, Path(tmp_dir), fsync=fsync))
        digest = hashlib.sha256(result.body).hexdigest()
    elif result.reencoded:
        reencoded_body = result.body
    return PreparedImage(
        result.width, result.height, result.source_width, result.source_height, result.source_format,
        result.format, result.reencoded, result.resized, hashes, staged, digest, reencoded_body,
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
        VERIFY_MAX_SIDE: resize images whose longest side is above this many pixels to it
            before storing (default 0: keep every original byte for byte). The fine-tuning
            recipes this project follows resized their images to 400-500 px before training.
        VERIFY_JPEG_QUALITY: quality (1-95) of resized JPEG sources (default 90).
        PIPELINE_PROCESSES: worker processes for the per-image work (default ``None``: one per
            CPU but one, at least 1; 0: none, work in a pipeline thread); shared by the crawls
            of one process.

    Where the work runs: in the crawl's worker processes (``crawler.workers``,
    ``PIPELINE_PROCESSES``, on by default), which also hash the image for dedupe and write the
    bytes to store into ``DATASET_DIR/.tmp/`` (``prepare_image``), so only sizes, hashes and a
    path come back to the crawl process; without worker processes, in a pipeline thread.

    On success sets ``width``, ``height``, ``source_width``, ``source_height``, ``format`` and
    ``ext``, and then either ``image_hashes`` (dedupe's hashes, ``{kind: hex}``) and ``staged``
    (``(temporary file, SHA-256 hex)`` of the bytes to store, which replace ``body``), from a
    worker process; or ``image`` (the canonical image dedupe hashes) and ``body`` replaced by
    the bytes to store, from a thread. A staged file whose item is dropped, fails or is not
    stored is removed (signals ``item_dropped``, ``item_error``, ``item_scraped``). Stats:
    ``verify/ok``, ``verify/reencoded``, ``verify/resized``, ``verify/rejected/<reason>``;
    ``worker_crashed`` is the reason when the worker process died on the image (a crash in a
    native decoder, the OOM killer).

    Raises:
        ValueError: on a non-positive limit, a negative ``VERIFY_MAX_SIDE``, a quality
            outside 1-95, a negative ``PIPELINE_PROCESSES`` or an unknown format name (the
            crawl does not start: a disabled verify stage would let every item through
            unchecked).
        DropItem: with the ``Rejected`` reason (the item gets ``status = "rejected"``).
    """

    MIN_SIDE = 32
    MAX_PIXELS = 50_000_000
    MAX_BYTES = 32 * 1024 * 1024
    FORMATS = tuple(EXTENSIONS)
    MAX_SIDE = 0
    JPEG_QUALITY = 90

    def __init__(
        self,
        crawler: Crawler,
        *,
        min_side: int,
        max_pixels: int,
        max_bytes: int,
        formats: frozenset[str],
        max_side: int = MAX_SIDE,
        jpeg_quality: int = JPEG_QUALITY,
    ) -> None:
        self.crawler = crawler
        self.min_side = min_side
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.formats = formats
        self.max_side = max_side
        self.jpeg_quality = jpeg_quality
        # What a worker process needs besides the bytes (prepare_image): dedupe's hash and,
        # when the crawl has a dataset, the store's temporary folder.
        settings = crawler.settings
        self.hash_name = settings.get("DEDUPE_HASH") or DEFAULT_HASH
        self.variants = settings.getint("DEDUPE_VARIANT_DISTANCE", DedupePipeline.VARIANT_DISTANCE) > 0
        dataset_dir = settings.get("DATASET_DIR")
        self.tmp_dir = Path(dataset_dir) / TMP_DIR if dataset_dir else None
        self.fsync = settings.getbool("STORE_FSYNC", StorePipeline.FSYNC)
        self.processes = default_process_count(settings.get("PIPELINE_PROCESSES"))
        self.pool: WorkerPool | None = None
        for signal in (signals.item_dropped, signals.item_error, signals.item_scraped):
            crawler.signals.connect(discard_staged, signal=signal)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        min_side = settings.getint("VERIFY_MIN_SIDE", cls.MIN_SIDE)
        max_pixels = settings.getint("VERIFY_MAX_PIXELS", cls.MAX_PIXELS)
        max_bytes = settings.getint("VERIFY_MAX_BYTES", cls.MAX_BYTES)
        formats = frozenset(f.upper() for f in settings.getlist("VERIFY_FORMATS", list(cls.FORMATS)))
        max_side = settings.getint("VERIFY_MAX_SIDE", cls.MAX_SIDE)
        jpeg_quality = settings.getint("VERIFY_JPEG_QUALITY", cls.JPEG_QUALITY)
        if min_side < 1 or max_pixels < 1 or max_bytes < 1:
            raise ValueError("VERIFY_MIN_SIDE, VERIFY_MAX_PIXELS and VERIFY_MAX_BYTES must be >= 1")
        if max_side < 0:
            raise ValueError(f"VERIFY_MAX_SIDE must be >= 0 pixels (0: no resize), got {max_side}")
        if not 1 <= jpeg_quality <= 95:
            raise ValueError(f"VERIFY_JPEG_QUALITY must be in 1-95, got {jpeg_quality}")
        if unknown := formats - set(EXTENSIONS):
            raise ValueError(
                f"VERIFY_FORMATS has {sorted(unknown)}; valid formats: {sorted(EXTENSIONS)}"
            )
        return cls(
            crawler, min_side=min_side, max_pixels=max_pixels, max_bytes=max_bytes, formats=formats,
            max_side=max_side, jpeg_quality=jpeg_quality,
        )

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        stats = self.crawler.stats
        assert stats is not None
        pool = self.pool
        try:
            if pool is None:
                result: VerifiedImage | PreparedImage = await run_in_thread(self.check, adapter.get("body") or b"")
            else:
                tmp_dir = None if self.tmp_dir is None else str(self.tmp_dir)
                result = await pool.run(
                    prepare_image, adapter.get("body") or b"", self.limits, self.hash_name, self.variants,
                    tmp_dir, self.fsync,
                )
        except (Rejected, WorkerCrashed) as exc:
            crashed = isinstance(exc, WorkerCrashed)
            reason = "worker_crashed" if crashed else exc.reason
            adapter["status"] = "rejected"
            adapter["reason"] = reason
            adapter.pop("body", None)
            stats.inc_value(f"verify/rejected/{reason}")
            (logger.warning if crashed else logger.info)("rejected %s: %s", adapter.get("url", "")[:100], exc)
            raise DropItem(reason) from exc
        adapter["width"] = result.width
        adapter["height"] = result.height
        adapter["source_width"] = result.source_width
        adapter["source_height"] = result.source_height
        adapter["format"] = result.format
        adapter["ext"] = EXTENSIONS[result.format]
        if isinstance(result, VerifiedImage):
            adapter["image"] = result.image
            adapter["body"] = result.body
        else:
            adapter["image_hashes"] = result.hashes
            if result.staged is not None:
                adapter["staged"] = (result.staged, result.sha256)
                adapter.pop("body", None)
            elif result.body is not None:
                adapter["body"] = result.body
        stats.inc_value("verify/ok")
        if result.reencoded:
            stats.inc_value("verify/reencoded")
        if result.resized:
            stats.inc_value("verify/resized")
        return item

    def open_spider(self) -> None:
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.pool = acquire_pool(self.processes)

    def close_spider(self) -> Coroutine[Any, Any, None] | None:
        """Release the worker pool: a coroutine for Scrapy to await, or ``None`` without one."""
        if self.pool is None:
            return None
        self.pool = None
        return release_pool()

    @property
    def limits(self) -> dict[str, Any]:
        """This pipeline's keyword arguments of ``verify_image``."""
        return {
            "min_side": self.min_side,
            "max_pixels": self.max_pixels,
            "max_bytes": self.max_bytes,
            "formats": self.formats,
            "max_side": self.max_side,
            "jpeg_quality": self.jpeg_quality,
        }

    def check(self, body: bytes) -> VerifiedImage:
        """``verify_image`` with this pipeline's limits (blocking; call it from a thread)."""
        return verify_image(body, **self.limits)
