"""Near-duplicate recipe of issue 13, as pure functions (no Scrapy, no catalog): PDQ with exact
dihedral variants and window hashes, a quality gate, and a second look at the aligned thumbnails.

Prototype of the image core's recipe (now ``crawler.images.pdq`` and ``crawler.images.matching``,
which ask the second look on the identity orientation only): ``benchmarks/neardup_real.py``
measures both on external ground truth.

The hash. PDQ (Facebook ThreatExchange, ``pdq/README.md``; ``pdqhash`` on PyPI wraps the C++
reference): luma, a Jarosz box downscale to 64x64, a 2-D DCT keeping 16x16 low frequencies, one
bit per coefficient above their median, 256 bits; plus a quality score 0-100 (gradient energy:
flat, near-white or tiny-object images score low and their bits are decided by noise). Here the
input is the canonical image (``crawler.pipelines.dedupe.canonical_image``: EXIF-transposed RGB,
longest side 160 px) squashed to 64x64, for two reasons: (1) with a 64x64 input PDQ's
downscale is the identity, so a flipped or quarter-turned picture gives the hash of the flipped
coefficients to within 0-6 bits (resampling rounding; on the canonical 160x100 image PDQ's own
dihedral hashes are 28 bits off for four of the eight transforms, because its box filter is not
symmetric); (2) hashing a 64x64 array is cheap. The DCTs are taken here in one batched numpy
product (``pdq_dcts``, bit-exact with ``pdqhash``'s hash and quality on the same input, whose
per-call overhead would cost more than the work); ``pdqhash`` is only needed to check that. The
squash also makes aspect-ratio changes nearly free.

Dihedral variants. The hash of each of the 8 flips/rotations of the picture is computed from the
one 16x16 DCT by sign changes and a transpose (a mirror in x multiplies coefficient column ``j``
by ``(-1)**j``; a transpose swaps the axes), thresholded at its own median, as PDQ's
``pdqDihedralHash256esFromFloatLuma`` does. Only the identity hash is stored and indexed; a new
image queries with its 8, so a mirror, a 90/180/270-degree turn, a transpose, and copies that
differ only in their EXIF orientation (``verify_image`` applies it) are found by one index.

Windows. Like today's recipe, PDQ of windows of the picture (``WINDOWS``) compared in fixed
pairs (``WINDOW_PAIRS``) at ``WINDOW_DISTANCE``: crop a little, a caption bar on either side, a
letterbox or frame (after ``trim_borders``), a small rotation (central window).

Second look. A hash candidate within ``MAX_DISTANCE`` (full picture) or ``WINDOW_DISTANCE``
(window pair) is a duplicate. One further out, up to ``LOOK_DISTANCE``, is checked on two 32x32
RGB thumbnails (stored with the hashes, 3,072 bytes each, so no file is read again): the query's
is turned by the dihedral transform the hash match found, both are cut to the matched windows,
and the median absolute difference of their standardised grey levels must be at most
``MAX_LOOK_DIFFERENCE``. A small overlay (an emoji, a logo) moves PDQ by ~50 bits but leaves
most pixels equal (median ~0.05); two frames of one burst are as close by hash (34-52 bits)
but differ a little everywhere (median >= 0.14). A hash whose quality is below ``MIN_QUALITY``
(flat, near-white, tiny objects: bits decided by noise) matches only through the second look.
Colour is not checked: a copy recoloured as a whole is the same picture (issue 13).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "DIHEDRAL",
    "HASH_BITS",
    "HashRecord",
    "Match",
    "RECIPE",
    "WINDOWS",
    "WINDOW_PAIRS",
    "hash_image",
    "match",
    "pdq_bits",
    "second_look",
]

HASH_BITS = 256
PDQ_SIDE = 64  # see the module docstring: PDQ's downscale is the identity at 64x64
THUMB_SIDE = 32
RECIPE = "pdq256-sq64-dihedral-win-canonical160-jpegdraft"

# Thresholds, bits of 256 and second-look levels; benchmarks/neardup_real.py prints the margins.
MAX_DISTANCE = 31  # full picture, best of the 8 dihedral variants (ThreatExchange's default)
WINDOW_DISTANCE = 24  # window pairs
MIN_QUALITY = 50  # ThreatExchange's own cut-off for a usable PDQ hash
LOOK_DISTANCE = 50  # candidates up to this far get the second look
MAX_LOOK_DIFFERENCE = 0.10  # second_look: median |z difference| of aligned 32x32 grey

T = Image.Transpose
# Dihedral transforms in the order of the hashes a record holds; None is the identity.
DIHEDRAL: tuple[T | None, ...] = (
    None,
    T.ROTATE_90,
    T.ROTATE_180,
    T.ROTATE_270,
    T.FLIP_LEFT_RIGHT,
    T.FLIP_TOP_BOTTOM,
    T.TRANSPOSE,
    T.TRANSVERSE,
)
# The inverse of each transform, by index (rotations by 90 and 270 swap; the rest are involutions).
_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)

# Windows as (left, top, right, bottom) fractions of the canonical image; "trim90" is taken
# inside the box trim_borders leaves (letterbox bars, frames).
WINDOWS: dict[str, tuple[float, float, float, float]] = {
    "trim90": (0.05, 0.05, 0.95, 0.95),
    "c80": (0.10, 0.10, 0.90, 0.90),
    "c90": (0.05, 0.05, 0.95, 0.95),
    "top85": (0.0, 0.0, 1.0, 0.85),
    "bot85": (0.0, 0.15, 1.0, 1.0),
    "tl90": (0.0, 0.0, 0.9, 0.9),
    "tr90": (0.1, 0.0, 1.0, 0.9),
    "bl90": (0.0, 0.1, 0.9, 1.0),
    "br90": (0.1, 0.1, 1.0, 1.0),
}
FULL = "full"
# The picture without caption bars at the top or bottom (``_caption_box``); only hashed when
# there is one.
UNCAPTIONED = "uncap"
CAPTION_SHARE = 0.75  # a caption row: this share of its pixels at the edge's level
CAPTION_TOLERANCE = 40  # grey levels
CAPTION_MAX_SHARE = 0.3  # at most this share of the height per side
# (window of one image, window of the other); both orders count.
WINDOW_PAIRS: tuple[tuple[str, str], ...] = (
    (UNCAPTIONED, FULL),  # a caption bar (text on a plain band) on either side
    (UNCAPTIONED, UNCAPTIONED),
    ("trim90", "trim90"),  # letterbox, pad, frame, small rotation
    (FULL, "top85"),  # caption bar below
    (FULL, "bot85"),  # caption bar on top
    ("c80", "c90"),  # frame, symmetric crop, small rotation
    (FULL, "c90"),  # crop
    ("c80", "tl90"),  # crop keeping one corner
    ("c80", "tr90"),
    ("c80", "bl90"),
    ("c80", "br90"),
)


@dataclass(frozen=True)
class HashRecord:
    """What dedupe keeps of one picture.

    Stored per image (catalog): ``pdq`` (32 bytes, the identity hash, indexed), ``quality``
    (0-100), ``windows`` (``{kind: 32 bytes}``, indexed), ``trim`` (the ``trim_borders`` box as
    fractions) and ``thumb`` (32x32 RGB, 3,072 bytes, row-major) for the second look.
    ``dihedral`` (8 x 32 bytes, ``DIHEDRAL`` order, ``dihedral[0] == pdq``) is only needed to
    query with this image, i.e. while it is being decided; it is not stored.
    """

    pdq: bytes
    quality: int
    dihedral: tuple[bytes, ...]
    windows: dict[str, bytes]
    trim: tuple[float, float, float, float]
    thumb: bytes
    caption: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Match:
    """A near duplicate: ``distance`` in bits of 256, ``transform`` the ``DIHEDRAL`` index that
    turns the query into the stored picture, ``kinds`` the matched (query, stored) windows,
    ``difference`` the second look's figure (``nan`` when not taken)."""

    distance: int
    transform: int
    kinds: tuple[str, str]
    difference: float = math.nan


# -- hashing ---------------------------------------------------------------------------------


# PDQ's DCT matrix (pdqhashing.cpp): 16 rows for frequencies 1..16 (no DC), 64 columns.
_DCT = (
    np.sqrt(2 / 64) * np.cos(np.pi / 2 / 64 * np.arange(1, 17)[:, None] * (2 * np.arange(64)[None, :] + 1))
).astype(np.float32)


def pdq_dcts(squares: np.ndarray) -> np.ndarray:
    """PDQ's 16x16 DCTs (row-major, rows = vertical frequency) of ``(N, 64, 64)`` luma arrays:
    ``D @ X @ D.T``, one batched product. Equal to ``pdqhash.compute_float`` on the same 64x64
    input to float rounding (``benchmarks/neardup_real`` checks the hashes bit for bit)."""
    return _DCT @ squares.astype(np.float32) @ _DCT.T


def pdq_quality(square: np.ndarray) -> int:
    """PDQ's quality (0-100) of a 64x64 luma array: the summed absolute differences of
    neighbouring pixels in percent of 255, truncated per pair, over 90
    (``computePDQImageDomainQualityMetric``)."""
    x = square.astype(np.float32)
    vertical = ((x[:-1, :] - x[1:, :]) * 100 / 255).astype(np.int32)
    horizontal = ((x[:, :-1] - x[:, 1:]) * 100 / 255).astype(np.int32)
    return min(100, int(np.abs(vertical).sum() + np.abs(horizontal).sum()) // 90)


def _square(grey: Image.Image, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``grey`` (or its ``box``) squashed to ``PDQ_SIDE`` x ``PDQ_SIDE`` (see the module
    docstring: at this size PDQ's Jarosz downscale is the identity). LANCZOS for the whole
    picture, BILINEAR (a quarter of the cost: 0.06 vs 0.26 ms) for the windows."""
    method = Image.Resampling.LANCZOS if box is None else Image.Resampling.BILINEAR
    square = grey.resize((PDQ_SIDE, PDQ_SIDE), method, box=box, reducing_gap=2.0)
    return np.asarray(square, dtype=np.uint8)


def pdq_bits(dcts: np.ndarray) -> list[bytes]:
    """The 256-bit PDQ hashes of ``(N, 16, 16)`` DCTs: coefficient ``k`` (row-major) sets bit
    ``k`` when above the median of its DCT (PDQ uses Torben's median: the same value). Each is
    big-endian, 32 bytes: ``.hex()`` is ThreatExchange's hex form."""
    flat = dcts.reshape(len(dcts), 256)
    bits = flat > np.median(flat, axis=1, keepdims=True)
    return [row.tobytes() for row in np.packbits(bits[:, ::-1], axis=1)]


# Sign patterns of PDQ's DCT basis under a mirror. PDQ keeps frequencies 1..16 (not the DC
# term), so coefficient column j (0-based) is frequency j + 1 and picks up (-1)**(j + 1) in x.
_SIGN = np.where(np.arange(16) % 2 == 0, -1.0, 1.0).astype(np.float32)


def _dihedral_dcts(dct: np.ndarray) -> list[np.ndarray]:
    """The DCTs of the 8 ``DIHEDRAL`` transforms of the picture, from its own."""
    fx = dct * _SIGN[None, :]  # mirror left-right
    fy = dct * _SIGN[:, None]  # mirror top-bottom
    r180 = fx * _SIGN[:, None]
    # PIL ROTATE_90 is counter-clockwise: transpose then mirror top-bottom.
    t = dct.T
    return [dct, t * _SIGN[:, None], r180, t * _SIGN[None, :], fx, fy, t, r180.T]


def _trim_box(grey: Image.Image) -> tuple[int, int, int, int]:
    from crawler.images.borders import trim_box  # the core's trim rule

    return trim_box(np.asarray(grey))


def _caption_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of an ``(H, W)`` grey array without the plain bands at
    its top and bottom whose rows are ``CAPTION_SHARE`` uniform (text on a band: a meme or
    caption bar); looser than ``trim_borders``, which wants 97% uniform rows."""
    height, width = grey.shape
    limit = int(height * CAPTION_MAX_SHARE)
    values = grey.astype(np.int16)
    cut = []
    for rows in (values[:limit], values[::-1][:limit]):
        if not len(rows):
            cut.append(0)
            continue
        level = np.median(rows[0])
        uniform = (np.abs(rows - level) <= CAPTION_TOLERANCE).mean(axis=1) >= CAPTION_SHARE
        cut.append(len(rows) if uniform.all() else int(np.argmin(uniform)))
    return 0, cut[0], width, height - cut[1]


def _pixels(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    return round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height)


def hash_image(image: Image.Image, *, windows: bool = True) -> HashRecord:
    """Hash ``image`` (RGB, EXIF-transposed; the canonical image of ``verify_image``, longest
    side 160 px; a larger one costs more but gives the same figures) for ``match``.

    Returns a ``HashRecord``; see the module docstring for what each field is and why.
    """
    grey = image.convert("L")  # PDQ's luma weights are ITU-R 601's, as Pillow's "L"
    squares = [_square(grey)]
    quality = pdq_quality(squares[0])
    width, height = image.size
    left, top, right, bottom = _trim_box(grey) if windows else (0, 0, width, height)
    trim = (left / width, top / height, right / width, bottom / height)
    kinds: list[str] = []
    caption = (0.0, 0.0, 1.0, 1.0)
    if windows:
        for kind, box in WINDOWS.items():
            if kind == "trim90":
                tw, th = trim[2] - trim[0], trim[3] - trim[1]
                box = (trim[0] + box[0] * tw, trim[1] + box[1] * th, trim[0] + box[2] * tw, trim[1] + box[3] * th)
            pixel_box = _pixels(box, image.size)
            if pixel_box[2] - pixel_box[0] < 8 or pixel_box[3] - pixel_box[1] < 8:
                continue
            squares.append(_square(grey, pixel_box))
            kinds.append(kind)
        caption_box = _caption_box(np.asarray(grey))
        if caption_box != (0, 0, width, height) and caption_box[3] - caption_box[1] >= 16:
            squares.append(_square(grey, caption_box))
            kinds.append(UNCAPTIONED)
            caption = (0.0, caption_box[1] / height, 1.0, caption_box[3] / height)
    dcts = pdq_dcts(np.stack(squares))
    hashes = pdq_bits(np.concatenate([np.stack(_dihedral_dcts(dcts[0])), dcts[1:]]))
    dihedral = tuple(hashes[:8])
    window_hashes = dict(zip(kinds, hashes[8:], strict=True))
    thumb = image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, reducing_gap=2.0).tobytes()
    return HashRecord(dihedral[0], quality, dihedral, window_hashes, trim, thumb, caption)


# -- matching --------------------------------------------------------------------------------


def hamming256(a: bytes, b: bytes) -> int:
    """Hamming distance in bits between two 32-byte hashes."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def _window_box(kind: str, record: HashRecord) -> tuple[float, float, float, float]:
    if kind == FULL:
        return (0.0, 0.0, 1.0, 1.0)
    if kind == UNCAPTIONED:
        return record.caption
    trim = record.trim
    box = WINDOWS[kind]
    if kind != "trim90":
        return box
    tw, th = trim[2] - trim[0], trim[3] - trim[1]
    return (trim[0] + box[0] * tw, trim[1] + box[1] * th, trim[0] + box[2] * tw, trim[1] + box[3] * th)


def _thumb(record: HashRecord) -> Image.Image:
    return Image.frombytes("RGB", (THUMB_SIDE, THUMB_SIDE), record.thumb)


def aligned_thumbnails(
    query: HashRecord, stored: HashRecord, transform: int, kinds: tuple[str, str], side: int = THUMB_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """The two thumbnails cut to the matched windows and brought into the stored picture's
    orientation, as ``(side, side, 3)`` float32 arrays."""
    q = _thumb(query)
    op = DIHEDRAL[transform]
    if op is not None:
        q = q.transpose(op)  # the query turned the way its matching hash was
    qbox = [v * THUMB_SIDE for v in _window_box(kinds[0], query)]
    sbox = [v * THUMB_SIDE for v in _window_box(kinds[1], stored)]
    a = q.resize((side, side), Image.Resampling.BILINEAR, box=tuple(qbox))
    b = _thumb(stored).resize((side, side), Image.Resampling.BILINEAR, box=tuple(sbox))
    return np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)


def second_look(a: np.ndarray, b: np.ndarray) -> float:
    """Median absolute difference of the standardised grey levels (zero mean, unit standard
    deviation, so brightness, contrast and colour changes as a whole cancel) of two aligned
    ``(H, W, 3)`` RGB arrays. A copy with a small overlay differs only under the overlay (median
    near 0); two frames of a burst differ a little everywhere (``benchmarks/neardup_real``)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey_a, grey_b = a @ weights, b @ weights
    za = (grey_a - grey_a.mean()) / (grey_a.std() + 1e-3)
    zb = (grey_b - grey_b.mean()) / (grey_b.std() + 1e-3)
    return float(np.median(np.abs(za - zb)))


def candidates(
    query: HashRecord, stored: HashRecord, max_distance: int = MAX_DISTANCE, window_distance: int = WINDOW_DISTANCE
) -> list[tuple[int, int, tuple[str, str]]]:
    """Hash matches of ``query`` against ``stored``: ``(distance, transform, (query kind, stored
    kind))``, nearest first; the full picture through its 8 dihedral variants, the windows in
    the identity orientation (``WINDOW_PAIRS``, both orders)."""
    found = []
    for transform, value in enumerate(query.dihedral):
        distance = hamming256(value, stored.pdq)
        if distance <= max_distance:
            found.append((distance, transform, (FULL, FULL)))
    if window_distance >= 0:
        mine = {FULL: query.pdq, **query.windows}
        theirs = {FULL: stored.pdq, **stored.windows}
        for x, y in {*WINDOW_PAIRS, *((y, x) for x, y in WINDOW_PAIRS)}:
            if x in mine and y in theirs:
                distance = hamming256(mine[x], theirs[y])
                if distance <= window_distance:
                    found.append((distance, 0, (x, y)))
    found.sort(key=lambda c: (c[0], c[1]))
    return found


def match(
    query: HashRecord,
    stored: HashRecord,
    *,
    max_distance: int = MAX_DISTANCE,
    window_distance: int = WINDOW_DISTANCE,
    min_quality: int = MIN_QUALITY,
    look: bool = True,
    look_distance: int = LOOK_DISTANCE,
    max_look_difference: float = MAX_LOOK_DIFFERENCE,
) -> Match | None:
    """Is ``query`` a copy of ``stored``? ``None``, or the nearest hash candidate
    (``candidates``) that is either sure (full picture within ``max_distance`` or a window pair
    within ``window_distance``, both hashes of ``min_quality``) or, with ``look``, within
    ``look_distance`` and passing the second look (``second_look`` at most
    ``max_look_difference``). Symmetric up to the transform reported.

    ``window_distance < 0`` turns the windows off. Low-quality pictures match only through the
    second look (or at 0 bits without it): their bits are decided by noise.
    """
    low = min(query.quality, stored.quality) < min_quality
    reach = max(max_distance, window_distance, look_distance if look else -1)
    for distance, transform, kinds in candidates(query, stored, reach, reach if window_distance >= 0 else -1):
        limit = max_distance if kinds == (FULL, FULL) else window_distance
        if distance == 0 or (distance <= limit and not low):
            return Match(distance, transform, kinds)
        if look and distance <= look_distance:
            difference = second_look(*aligned_thumbnails(query, stored, transform, kinds))
            if difference <= max_look_difference:
                return Match(distance, transform, kinds, difference)
    return None


def as_columns(record: HashRecord) -> Mapping[str, object]:
    """What the catalog stores for ``record`` (see ``HashRecord``): hex hashes per kind, the
    quality, and one blob: the trim and caption boxes (4 bytes each, 1/255ths) and the
    thumbnail (3,072 bytes)."""
    trim = bytes(round(v * 255) for v in (*record.trim, *record.caption))
    return {
        "pdq": record.pdq.hex(),
        "pdq_quality": record.quality,
        "hashes": {kind: value.hex() for kind, value in record.windows.items()},
        "thumb": trim + record.thumb,
    }
