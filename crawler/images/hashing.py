"""The hash recipe: the canonical reduction every perceptual hash is taken from, and its windows.

``hashes_of`` is what a crawl computes per image. With ``DEDUPE_HASH=pdq`` (the default since
issue 13) that is PDQ's hashes of the canonical image (``crawler.images.pdq``: the 8 flips and
rotations, two windows, quality, a 64x64 grey look) plus this module's 64-bit recipe
(``image_hashes``: phash of the picture and of its ``VARIANTS`` windows, the colour signature),
whose window pairs find the crops, caption bars and small turns PDQ's fine bits miss; the rest
of this docstring is about that 64-bit recipe, which is also ``DEDUPE_HASH=phash`` (``dhash``,
``average_hash``, ``whash``) on its own. One difference: under PDQ the phashes are resampled
in floating point, each window's as one linear map of the canonical grey image
(``phash_boxes``), instead of by nine Pillow resizes in 8 bits and their DCTs, a sixth of the
cost; a few hashes differ by 2 bits (``image_hashes``' ``float_resample``).

Pure image code (Pillow, numpy, imagehash; no Scrapy): the crawl's worker processes, the
pipelines, ``crawler.dataset rehash`` and the benchmarks hash through this module alone.

Variant hashes. Shops and search results serve copies that move a plain phash far: cropped by
~10%, letterboxed to a square, framed by a border, given a caption bar, rotated a few degrees.
Plain phash at a safe threshold catches well under half of those (``benchmarks/dedupe_quality``).
So every image also gets the phash of a few windows of itself (``VARIANTS``): after trimming
uniform borders (letterbox bars, frames), the central 90% (which also drops the fill of a small
rotation); the central 80% and 90%; the top 88% (a caption bar below); and the four 90% corner
windows (a crop that keeps one corner). Two images are near duplicates when their full phashes
are within ``DEDUPE_MAX_DISTANCE`` bits or one of the ``MATCH_PAIRS`` of windows
(``crawler.images.matching``) is within ``DEDUPE_VARIANT_DISTANCE`` bits (pairs are symmetric,
so the order of arrival does not matter).
The pairs were chosen greedily on the hymenoptera train photos and their copies and checked on
the val photos.

The hash recipe (``HASH_RECIPE``, kept in the catalog's ``meta`` table). Every hash, the full
``phash`` included, is taken from one canonical reduction of the stored picture: longest side
``CANONICAL_SIDE`` pixels (``canonical_image``). phash only looks at a 32x32 LANCZOS reduction,
so 160 pixels keep every window's detail, and a small canonical image makes trimming, cropping
and the ten resizes cheap (``benchmarks/dedupe_quality`` measured 128, 160 and 192 pixels with
BILINEAR and LANCZOS reductions: 160 with LANCZOS had the best recall, 91.0%, and no false
match; the 256 pixels used before gave 90.4%). JPEGs are decoded straight at reduced size with
libjpeg's DCT scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8, never below the canonical size),
which skips most of the inverse DCT and colour conversion; other formats are decoded fully and
reduced. The rule
is fixed by the stored format, so one picture always hashes the same way: drafted and
full-size decodes are never mixed for JPEGs (on the hymenoptera photos the two paths differ by
0-4 bits for most windows but by up to 42 bits for a few, enough to hide a duplicate). A catalog
whose ``hash_recipe`` differs (or is missing: datasets from before the recipe was recorded) is
rehashed from its stored files when a crawl opens it (``crawler.images.rehash``).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps

from crawler.images.borders import trim_borders, trim_box
from crawler.images.pdq import DIHEDRAL_KINDS, pdq_hashes

__all__ = [
    "CANONICAL_SIDE",
    "COLOUR_KIND",
    "DEFAULT_HASH",
    "HASH_BITS",
    "HASH_FUNCTIONS",
    "HASH_NAMES",
    "HASH_RECIPE",
    "PDQ",
    "HASH_SIZE",
    "VARIANTS",
    "canonical_image",
    "canonical_size",
    "decode_canonical_jpeg",
    "hash_recipe",
    "hashes_of",
    "image_hashes",
    "perceptual_hash",
    "phash_many",
    "phash_boxes",
    "trim_borders",
]

# phash with hash_size=8 is the catalog's declared hash (meta: hash=phash, hash_size=8).
HASH_SIZE = 8
HASH_BITS = HASH_SIZE * HASH_SIZE


# Longest side of the canonical reduction every hash is taken from, pixels (module docstring).
CANONICAL_SIDE = 160
# imagehash's 64-bit hashes dedupe can use (DEDUPE_HASH); phash is the default and the one the
# thresholds, MATCH_PAIRS and benchmarks/dedupe_quality figures are for.
HASH_FUNCTIONS: dict[str, Callable[..., imagehash.ImageHash]] = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "average_hash": imagehash.average_hash,
    "whash": imagehash.whash,
}
# PDQ (256 bits, ``crawler.images.pdq``): the default since issue 13; the 64-bit hashes above
# stay selectable with their own thresholds (``crawler/settings.py`` ``DEDUPE_DEFAULTS``).
PDQ = "pdq"
HASH_NAMES: tuple[str, ...] = (PDQ, *HASH_FUNCTIONS)
DEFAULT_HASH = PDQ


def hash_recipe(hash_name: str = DEFAULT_HASH) -> str:
    """The catalog ``meta`` value naming how hashes are made; a catalog with another is rehashed.

    Raises:
        ValueError: for a ``hash_name`` not in ``HASH_NAMES``.
    """
    if hash_name not in HASH_NAMES:
        raise ValueError(f"unknown perceptual hash {hash_name!r}; valid: {', '.join(HASH_NAMES)}")
    if hash_name == PDQ:
        # phash8win9float: the phashes resampled in floating point (``phash_boxes``)
        return f"pdq256-sq64-dihedral-pdqwin2-phash8win9float-look64-canonical{CANONICAL_SIDE}-jpegdraft"
    return f"{hash_name}{HASH_SIZE}-canonical{CANONICAL_SIDE}-jpegdraft"


HASH_RECIPE = hash_recipe()


def canonical_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` scaled so the longest side is ``CANONICAL_SIDE`` pixels (rounded, at
    least 1); ``size`` itself when it is no larger."""
    width, height = size
    longest = max(width, height)
    if longest <= CANONICAL_SIDE:
        return size
    scale = CANONICAL_SIDE / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def canonical_image(image: Image.Image) -> Image.Image:
    """``image`` (RGB) reduced to ``canonical_size`` (LANCZOS after an integer box reduction,
    Pillow's ``reducing_gap=2.0``); ``image`` itself when it is no larger."""
    size = canonical_size(image.size)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def decode_canonical_jpeg(body: bytes) -> Image.Image:
    """The canonical RGB image of JPEG ``body``: decoded at reduced size with libjpeg's DCT
    scaling (Pillow ``draft``, never below ``canonical_size``), EXIF-oriented, reduced.

    Every entropy-coded block is still decoded, so truncated or corrupt data raises as a full
    decode does.

    Raises:
        OSError, SyntaxError, ValueError...: whatever Pillow raises on bad data.
    """
    with Image.open(io.BytesIO(body), formats=["JPEG"]) as image:
        image.draft(None, canonical_size(image.size))
        image.load()
        return canonical_image(ImageOps.exif_transpose(image).convert("RGB"))


def perceptual_hash(image: Image.Image, hash_name: str = "phash") -> str:
    """imagehash's ``hash_name`` (default ``phash``; 64 bits, 16 lower-case hex chars) of the
    canonical reduction of ``image`` (RGB; pass the canonical image itself, e.g.
    ``decode_canonical_jpeg``'s, to follow ``HASH_RECIPE``)."""
    return str(HASH_FUNCTIONS[hash_name](canonical_image(image), hash_size=HASH_SIZE))


# Windows of the canonical image, as (left, top, right, bottom) fractions; "trim90" is taken
# after trim_borders. Names are the `kind` column of the catalog's image_hashes table.
VARIANTS: dict[str, tuple[float, float, float, float]] = {
    "trim90": (0.05, 0.05, 0.95, 0.95),
    "c80": (0.10, 0.10, 0.90, 0.90),
    "c90": (0.05, 0.05, 0.95, 0.95),
    "top88": (0.0, 0.0, 1.0, 0.88),
    "tl90": (0.0, 0.0, 0.9, 0.9),
    "tr90": (0.1, 0.0, 1.0, 0.9),
    "bl90": (0.0, 0.1, 0.9, 1.0),
    "br90": (0.1, 0.1, 1.0, 1.0),
}
COLOUR_KIND = "colour"


def _window(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A fractional ``(left, top, right, bottom)`` box in pixels of an image of ``size``."""
    width, height = size
    return round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height)


def _colour_stats(image: Image.Image) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of an RGB image, bit for bit what Pillow's
    ``ImageStat.Stat(image).mean``/``.stddev`` give (the same formulas on the same exact integer
    sums of the histogram), with the sums done by numpy instead of 1,536 steps of Python: they
    were a tenth of the per-image CPU time."""
    histogram = np.asarray(image.histogram(), dtype=np.int64).reshape(-1, 256)
    levels = np.arange(256, dtype=np.int64)
    counts = histogram.sum(axis=1).tolist()
    sums = (histogram @ levels).tolist()
    sums2 = (histogram @ (levels * levels)).tolist()
    mean = [s / n if n else 0 for s, n in zip(sums, counts, strict=True)]
    var = [(s2 - s**2 / n) / n if n else 0 for s, s2, n in zip(sums, sums2, counts, strict=True)]
    return mean, [math.sqrt(v) for v in var]


def phash_many(greys: list[Image.Image]) -> list[str]:
    """imagehash ``phash`` (``hash_size=8``) of several grey (mode ``L``) images, as 16 hex chars.

    The same recipe as ``imagehash.phash`` (LANCZOS to 32x32, 2-D DCT-II, bits of the 8x8
    low-frequency corner above its median), bit for bit (tests check it), but with the DCT, the
    medians and the hex encoding done once for the whole ``(N, 32, 32)`` stack instead of N
    times in Python: the per-call overhead was most of the cost of hashing 9 windows of a
    256-pixel image.
    """
    import scipy.fftpack  # here: crawls that hash in worker processes never import it (0.2 s)

    side = HASH_SIZE * 4  # imagehash's highfreq_factor
    pixels = np.stack([np.asarray(g.resize((side, side), Image.Resampling.LANCZOS)) for g in greys])
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)
    low = dct[:, :HASH_SIZE, :HASH_SIZE].reshape(len(greys), HASH_BITS)
    bits = low > np.median(low, axis=1, keepdims=True)
    return [row.tobytes().hex() for row in np.packbits(bits, axis=1)]


# phash's recipe as linear maps (``phash_boxes``): the first HASH_SIZE rows of the unnormalised
# DCT-II of 32 samples (scipy.fftpack.dct's type 2, as imagehash takes it).
_PHASH_SIDE = HASH_SIZE * 4  # imagehash's highfreq_factor
_PHASH_DCT = 2 * np.cos(np.pi / (2 * _PHASH_SIDE) * np.arange(HASH_SIZE)[:, None] * (2 * np.arange(_PHASH_SIDE)[None, :] + 1))


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's LANCZOS filter (``lanczos_filter`` in its ``Resample.c``): sinc(x) sinc(x/3) on
    [-3, 3), 0 elsewhere, as 3 sin(pi x) sin(pi x / 3) / (pi x)^2 (1 at 0)."""
    px = np.pi * x
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = 3 * np.sin(px) * np.sin(px / 3) / (px * px)
    weights[x == 0] = 1.0
    weights[(x < -3) | (x >= 3)] = 0.0
    return weights


@functools.lru_cache(maxsize=1024)
def _phash_rows(start: float, end: float, size: int) -> np.ndarray:
    """``(HASH_SIZE, size)`` float64: the lowest DCT-II frequencies of ``[start, end)`` (pixels,
    fractions allowed) of a line of ``size`` pixels resampled to 32 by Pillow's LANCZOS, as one
    matrix. The weights are Pillow's (``precompute_coeffs`` in ``Resample.c``): output ``i``
    centred at ``start + (i + 0.5) * scale``, the filter stretched by ``max(scale, 1)``, cut at
    the line's ends and normalised to sum 1. Cached (at most 1,024 lines of up to
    ``CANONICAL_SIDE`` pixels, 10 MiB): the windows' lines repeat from picture to picture of
    the same canonical size; a new one costs about 0.07 ms."""
    scale = (end - start) / _PHASH_SIDE
    stretch = max(scale, 1.0)
    centres = start + (np.arange(_PHASH_SIDE) + 0.5) * scale
    # Only the pixels within 3 * stretch of each centre weigh (a fifth of the line or less).
    span = math.ceil(3 * stretch)
    taps = np.floor(centres).astype(np.intp)[:, None] + np.arange(-span - 1, span + 2)[None, :]
    inside = (taps >= 0) & (taps < size)
    weights = np.where(inside, _lanczos((taps + 0.5 - centres[:, None]) / stretch), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    dense = np.zeros((_PHASH_SIDE, size))
    dense[np.nonzero(inside)[0], taps[inside]] = weights[inside]
    return _PHASH_DCT @ dense


def phash_boxes(grey: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[str]:
    """phash (64 bits, 16 hex chars) of each box ``(left, top, right, bottom)`` (pixels,
    fractions allowed) of the ``(H, W)`` grey array ``grey``: imagehash's recipe (LANCZOS
    resample to 32x32, 2-D DCT-II, bits of the 8x8 low-frequency corner above its median)
    computed in floating point, the resample and the DCT of each axis one matrix
    (``_phash_rows``), so each box's 64 coefficients are ``Y @ grey @ X.T`` and all boxes are
    one batched product: 0.1-0.2 ms for the 9 windows of a canonical image, a sixth of what
    ``phash_many`` (Pillow's resizes, then the DCTs) takes. imagehash resamples in 8 bits (Pillow rounds
    after each pass), which moves a few coefficients across the median: of the windows of the
    397 hymenoptera photos' canonical images 12% hash differently from ``phash_many``, by 2 bits
    (rarely 4).
    """
    height, width = grey.shape
    ys = np.stack([_phash_rows(b[1], b[3], height) for b in boxes])
    xs = np.stack([_phash_rows(b[0], b[2], width) for b in boxes])
    low = (ys @ grey.astype(np.float64) @ xs.transpose(0, 2, 1)).reshape(len(boxes), HASH_BITS)
    bits = low > np.median(low, axis=1, keepdims=True)
    return [row.tobytes().hex() for row in np.packbits(bits, axis=1)]


def _window_boxes(size: tuple[int, int], trim: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """Pixel boxes of the whole picture (``phash``) and of each ``VARIANTS`` window, in that
    order, in a picture of ``size`` whose ``trim_box`` is ``trim``."""
    left, top = trim[0], trim[1]
    trimmed_size = (trim[2] - left, trim[3] - top)
    boxes = [(0, 0, *size)]
    for kind, fractions in VARIANTS.items():
        if kind == "trim90":
            x0, y0, x1, y1 = _window(fractions, trimmed_size)
            boxes.append((left + x0, top + y0, left + x1, top + y1))
        else:
            boxes.append(_window(fractions, size))
    return boxes


def _colour_signature(canonical: Image.Image, trim: tuple[int, int, int, int]) -> str:
    """``colour``: mean and standard deviation of R, G, B (one byte each, 12 hex chars) of the
    central 80% of the trimmed RGB ``canonical`` image."""
    left, top = trim[0], trim[1]
    x0, y0, x1, y1 = _window((0.1, 0.1, 0.9, 0.9), (trim[2] - left, trim[3] - top))
    mean, stddev = _colour_stats(canonical.crop((left + x0, top + y0, left + x1, top + y1)))
    return bytes(min(255, round(v)) for v in (*mean, *stddev)).hex()


def image_hashes(
    image: Image.Image,
    hash_name: str = "phash",
    *,
    grey: Image.Image | None = None,
    trim: tuple[int, int, int, int] | None = None,
    float_resample: bool = False,
) -> dict[str, str]:
    """Every perceptual hash dedupe compares, as ``{kind: 16 hex chars}``.

    ``phash`` is imagehash's ``hash_name`` hash (default phash) of the canonical image (the
    catalog's ``phash`` column, whichever hash ``meta.hash`` names); the ``VARIANTS`` are the
    same hash of windows of it (see the module docstring); ``colour`` (12 hex
    chars) is the colour signature variant matches must agree on (mean and standard deviation
    of R, G, B, one byte each). ``image`` is RGB: the canonical image (``VerifiedImage.image``,
    which follows ``HASH_RECIPE``), or a larger one, reduced here with ``canonical_image``;
    ``grey`` its ``L`` conversion when the caller has one (of the canonical image), and
    ``trim`` that grey image's ``trim_box`` (pixels).

    The windows are cut from one grey copy of the canonical image: converting to grey is per
    pixel, so cropping before or after it gives the same pixels, and one conversion replaces
    ten (plus the one ``trim_borders`` needs).

    ``float_resample`` (the PDQ recipe, ``hashes_of``; ``phash`` only): the phashes by
    ``phash_boxes``, the same recipe with the resample in floating point, one linear map per
    window: a sixth of the cost, within 2 bits of imagehash's (8-bit) phash on most windows.

    Raises:
        ValueError: ``float_resample`` with a ``hash_name`` other than ``phash``.
    """
    canonical = canonical_image(image)
    if grey is None or grey.size != canonical.size:  # the caller's grey (and its trim) not usable
        grey, trim = canonical.convert("L"), None
    box = trim if trim is not None else trim_box(np.asarray(grey))
    boxes = _window_boxes(canonical.size, box)
    # Without borders to trim (most pictures) "trim90" is the same window as "c90": hash once.
    unique = list(dict.fromkeys(boxes))
    if float_resample:
        if hash_name != "phash":
            raise ValueError(f"float_resample: phash only, not {hash_name!r}")
        values = phash_boxes(np.asarray(grey), unique)
    else:
        windows = [grey if b == boxes[0] else grey.crop(b) for b in unique]
        if hash_name == "phash":
            values = phash_many(windows)
        else:
            values = [str(HASH_FUNCTIONS[hash_name](window, hash_size=HASH_SIZE)) for window in windows]
    of_box = dict(zip(unique, values, strict=True))
    hashes = {"phash": of_box[boxes[0]], COLOUR_KIND: _colour_signature(canonical, box)}
    hashes.update((kind, of_box[b]) for kind, b in zip(VARIANTS, boxes[1:], strict=True))
    return hashes


def hashes_of(image: Image.Image, hash_name: str = DEFAULT_HASH, *, variants: bool = True) -> dict[str, Any]:
    """The hashes dedupe compares for ``image`` (RGB, see ``image_hashes``).

    A 64-bit ``hash_name``: every kind of ``image_hashes`` when ``variants``
    (``DEDUPE_VARIANT_DISTANCE`` > 0), else ``{"phash": ...}``. ``pdq``: PDQ's hashes of the
    canonical image (``crawler.images.pdq``: ``"pdq"`` and the other ``DIHEDRAL_KINDS``, 64 hex
    chars each, ``"pdq_quality"``: int, ``"look"``: bytes, and with ``variants`` its
    ``WINDOWS``) plus, with ``variants``, every kind of ``image_hashes`` (imagehash's phash of
    the picture and of its ``VARIANTS`` windows, and the colour signature), whose pairs find
    copies cropped, captioned or turned a little; without, ``"phash"`` alone (the catalog's
    ``phash`` column, which the trainer's split groups by). Under ``pdq`` every phash is
    resampled in floating point (``phash_boxes``; ``image_hashes``' ``float_resample``).
    """
    if hash_name == PDQ:
        canonical = canonical_image(image)
        grey = canonical.convert("L")
        trim = trim_box(np.asarray(grey))  # borders: both recipes' trimmed windows
        record = pdq_hashes(canonical, windows=variants, grey=grey, trim=trim)
        hashes: dict[str, Any] = (
            image_hashes(canonical, grey=grey, trim=trim, float_resample=True)
            if variants
            else {"phash": phash_boxes(np.asarray(grey), [(0, 0, *grey.size)])[0]}
        )
        hashes.update(zip(DIHEDRAL_KINDS, record.dihedral, strict=True))
        hashes.update(record.windows)
        hashes["pdq_quality"] = record.quality
        hashes["look"] = record.look
        return hashes
    if variants:
        return image_hashes(image, hash_name)
    return {"phash": perceptual_hash(image, hash_name)}
