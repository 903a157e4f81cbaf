"""PDQ hashes of a picture for dedupe: the full picture in its 8 dihedral orientations, windows
of it, a quality score, and a 32x32 thumbnail for a second look.

Pure image code (Pillow, numpy; no Scrapy). Chosen on the figures of ``benchmarks/neardup_real``
(issue 13; README "Near-duplicate quality"); the match rule that uses these hashes is in
``crawler.images.matching`` (``PdqRule``).

The hash. PDQ (Facebook ThreatExchange, ``pdq/README.md``; ``pdqhash`` on PyPI wraps the C++
reference): luma, a Jarosz box downscale to 64x64, a 2-D DCT keeping 16x16 low frequencies, one
bit per coefficient above their median, 256 bits; plus a quality score 0-100 (gradient energy:
flat, near-white or tiny-object pictures score low and their bits are decided by noise). Here the
input is the canonical image (``crawler.images.hashing.canonical_image``: EXIF-transposed RGB,
longest side 160 px) squashed to 64x64, for two reasons: (1) with a 64x64 input PDQ's downscale
is the identity, so a flipped or quarter-turned picture gives the hash of the flipped
coefficients to within 0-6 bits (on the 160x100 canonical image PDQ's own dihedral hashes are
28 bits off for four of the eight transforms: its box filter is not symmetric); (2) hashing a
64x64 array is cheap. The DCTs are one batched numpy product (``pdq_dcts``), bit-exact with
``pdqhash`` on the same input (``tests/crawler/test_pdq.py`` checks it when ``pdqhash`` is
installed). The squash also makes aspect-ratio changes nearly free.

Dihedral hashes. The hash of each of the 8 flips/rotations of the picture comes from the one
16x16 DCT by sign changes and a transpose (a mirror in x multiplies coefficient column ``j`` by
``(-1)**(j+1)``; a transpose swaps the axes), thresholded at its own median, as PDQ's
``pdqDihedralHash256esFromFloatLuma`` does. Only the identity hash is stored and indexed; a new
picture queries with its 8, so a mirror, a 90/180/270-degree turn, a transpose, and copies that
differ only in their EXIF orientation (``verify_image`` applies it) are found by one index.

Windows. PDQ of windows of the picture (``WINDOWS``) compared in fixed pairs
(``crawler.images.matching.WINDOW_PAIRS``): a crop keeping most of the picture, a caption bar
(``uncap``: the picture without plain bands at its top and bottom), a letterbox or frame
(``trim90``, inside ``trim_borders``), a small rotation (central windows).

Thumbnail (``look``): 32x32 RGB (3,072 bytes) after 8 bytes giving the trim and caption boxes in
1/255ths; the second look (``second_look``) compares two aligned thumbnails without reading
either file again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from crawler.images.borders import trim_box

__all__ = [
    "DIHEDRAL",
    "DIHEDRAL_KINDS",
    "FULL",
    "PDQ_BITS",
    "PdqHashes",
    "UNCAPTIONED",
    "WINDOWS",
    "aligned_thumbnails",
    "pdq_dcts",
    "pdq_hashes",
    "pdq_quality",
    "second_look",
]

PDQ_BITS = 256
PDQ_SIDE = 64  # PDQ's downscale is the identity at 64x64 (module docstring)
THUMB_SIDE = 32
BOXES_BYTES = 8  # trim and caption boxes at the head of a look blob
FULL = "pdq"  # the kind of the full picture's hash (the catalog's ``pdq`` column)

T = Image.Transpose
# Dihedral transforms in the order of ``PdqHashes.dihedral``; None is the identity.
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
DIHEDRAL_KINDS = ("pdq", "rot90", "rot180", "rot270", "mirror_x", "mirror_y", "transpose", "transverse")

# Windows as (left, top, right, bottom) fractions of the canonical image; "trim90" is taken
# inside the box trim_borders leaves (letterbox bars, frames). Names are the ``kind`` column
# of the catalog's ``image_hashes`` table.
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
# The picture without caption bars at its top or bottom (``_caption_box``); only hashed when
# it has one.
UNCAPTIONED = "uncap"
CAPTION_SHARE = 0.75  # a caption row: this share of its pixels at the edge's level
CAPTION_TOLERANCE = 40  # grey levels
CAPTION_MAX_SHARE = 0.3  # at most this share of the height per side


@dataclass(frozen=True)
class PdqHashes:
    """What dedupe knows of one picture under the PDQ recipe.

    ``pdq`` is ``dihedral[0]`` (64 hex chars, the catalog's ``pdq`` column); ``dihedral`` the 8
    hashes of ``DIHEDRAL`` (query only, never stored); ``quality`` PDQ's 0-100; ``windows``
    ``{kind: 64 hex}`` (catalog ``image_hashes``); ``look`` the boxes and the thumbnail (3,080
    bytes, catalog ``image_looks``).
    """

    dihedral: tuple[str, ...]
    quality: int
    windows: dict[str, str]
    look: bytes
    #: The full picture's 64x64 luma square the hash was taken from (uint8), for the catalog's
    #: ``phash`` (``crawler.images.hashing.hashes_of``); not stored.
    square: np.ndarray | None = None

    @property
    def pdq(self) -> str:
        return self.dihedral[0]


# PDQ's DCT matrix (pdqhashing.cpp): 16 rows for frequencies 1..16 (no DC), 64 columns.
_DCT = (
    np.sqrt(2 / 64) * np.cos(np.pi / 2 / 64 * np.arange(1, 17)[:, None] * (2 * np.arange(64)[None, :] + 1))
).astype(np.float32)
# Sign patterns of the DCT basis under a mirror: coefficient column j is frequency j + 1.
_SIGN = np.where(np.arange(16) % 2 == 0, -1.0, 1.0).astype(np.float32)


def pdq_dcts(squares: np.ndarray) -> np.ndarray:
    """PDQ's 16x16 DCTs (rows = vertical frequency) of ``(N, 64, 64)`` luma arrays, as
    ``(N, 16, 16)`` float32: ``D @ X @ D.T``, one batched product."""
    return _DCT @ squares.astype(np.float32) @ _DCT.T


def pdq_quality(square: np.ndarray) -> int:
    """PDQ's quality (0-100) of a ``(64, 64)`` luma array: the summed absolute differences of
    neighbouring pixels in percent of 255, truncated per pair, over 90
    (``computePDQImageDomainQualityMetric`` in ThreatExchange's ``pdqhashing.cpp``)."""
    x = square.astype(np.float32)
    vertical = ((x[:-1, :] - x[1:, :]) * 100 / 255).astype(np.int32)
    horizontal = ((x[:, :-1] - x[:, 1:]) * 100 / 255).astype(np.int32)
    return min(100, int(np.abs(vertical).sum() + np.abs(horizontal).sum()) // 90)


def pdq_hex(dcts: np.ndarray) -> list[str]:
    """The 256-bit PDQ hashes of ``(N, 16, 16)`` DCTs as 64 hex chars (ThreatExchange's form):
    coefficient ``k`` (row-major) sets bit ``k`` when above the median of its DCT."""
    flat = dcts.reshape(len(dcts), 256)
    bits = flat > np.median(flat, axis=1, keepdims=True)
    return [row.tobytes().hex() for row in np.packbits(bits[:, ::-1], axis=1)]


def _dihedral_dcts(dct: np.ndarray) -> list[np.ndarray]:
    """The DCTs of the 8 ``DIHEDRAL`` transforms of the picture, from its own."""
    fx = dct * _SIGN[None, :]
    fy = dct * _SIGN[:, None]
    r180 = fx * _SIGN[:, None]
    t = dct.T  # PIL ROTATE_90 is counter-clockwise: transpose then mirror top-bottom
    return [dct, t * _SIGN[:, None], r180, t * _SIGN[None, :], fx, fy, t, r180.T]


def _square(grey: Image.Image, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``grey`` (or its ``box``) squashed to 64x64: LANCZOS for the whole picture, BILINEAR (a
    quarter of the cost) for the windows."""
    method = Image.Resampling.LANCZOS if box is None else Image.Resampling.BILINEAR
    return np.asarray(grey.resize((PDQ_SIDE, PDQ_SIDE), method, box=box, reducing_gap=2.0), dtype=np.uint8)


def _caption_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of an ``(H, W)`` grey array without the plain bands at its
    top and bottom whose rows are ``CAPTION_SHARE`` uniform (text on a band: a caption bar)."""
    height, width = grey.shape
    limit = int(height * CAPTION_MAX_SHARE)
    values = grey.astype(np.int16)
    cut = []
    for rows in (values[:limit], values[::-1][:limit]):
        if not len(rows):
            cut.append(0)
            continue
        uniform = (np.abs(rows - np.median(rows[0])) <= CAPTION_TOLERANCE).mean(axis=1) >= CAPTION_SHARE
        cut.append(len(rows) if uniform.all() else int(np.argmin(uniform)))
    return 0, cut[0], width, height - cut[1]


def _pixels(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    return round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height)


def pdq_hashes(image: Image.Image, *, windows: bool = True) -> PdqHashes:
    """Hash ``image`` (RGB, EXIF-transposed: the canonical image of ``verify_image``; a larger
    one gives nearly the same hashes at more cost). Without ``windows`` only the full picture
    is hashed (``DEDUPE_VARIANT_DISTANCE = 0``)."""
    grey = image.convert("L")  # PDQ's luma weights are ITU-R 601's, as Pillow's "L"
    squares = [_square(grey)]
    quality = pdq_quality(squares[0])
    width, height = image.size
    values = np.asarray(grey)
    left, top, right, bottom = trim_box(values) if windows else (0, 0, width, height)
    trim = (left / width, top / height, right / width, bottom / height)
    kinds: list[str] = []
    caption = (0.0, 0.0, 1.0, 1.0)
    if windows:
        for kind, box in WINDOWS.items():
            if kind == "trim90":
                box = _inside(box, trim)
            pixel_box = _pixels(box, image.size)
            if pixel_box[2] - pixel_box[0] < 8 or pixel_box[3] - pixel_box[1] < 8:
                continue
            squares.append(_square(grey, pixel_box))
            kinds.append(kind)
        caption_box = _caption_box(values)
        if caption_box != (0, 0, width, height) and caption_box[3] - caption_box[1] >= 16:
            squares.append(_square(grey, caption_box))
            kinds.append(UNCAPTIONED)
            caption = (0.0, caption_box[1] / height, 1.0, caption_box[3] / height)
    dcts = pdq_dcts(np.stack(squares))
    hashes = pdq_hex(np.concatenate([np.stack(_dihedral_dcts(dcts[0])), dcts[1:]]))
    thumb = image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, reducing_gap=2.0).tobytes()
    boxes = bytes(round(v * 255) for v in (*trim, *caption))
    return PdqHashes(tuple(hashes[:8]), quality, dict(zip(kinds, hashes[8:], strict=True)), boxes + thumb, squares[0])


def _inside(box: tuple[float, float, float, float], outer: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Fractional ``box`` of the ``outer`` box, as fractions of the whole picture."""
    ow, oh = outer[2] - outer[0], outer[3] - outer[1]
    return (outer[0] + box[0] * ow, outer[1] + box[1] * oh, outer[0] + box[2] * ow, outer[1] + box[3] * oh)


def _window_box(kind: str, look: bytes) -> tuple[float, float, float, float]:
    """The fractional box of window ``kind`` in the picture whose look blob is ``look``."""
    if kind == FULL:
        return (0.0, 0.0, 1.0, 1.0)
    boxes = [v / 255 for v in look[:BOXES_BYTES]]
    if kind == UNCAPTIONED:
        return tuple(boxes[4:])  # type: ignore[return-value]
    if kind == "trim90":
        return _inside(WINDOWS[kind], tuple(boxes[:4]))  # type: ignore[arg-type]
    return WINDOWS[kind]


def aligned_thumbnails(
    query: bytes, stored: bytes, transform: int = 0, kinds: tuple[str, str] = (FULL, FULL)
) -> tuple[np.ndarray, np.ndarray]:
    """The thumbnails of two look blobs cut to the matched windows ``kinds`` (query's, stored
    one's), the query's turned by ``DIHEDRAL[transform]``, as ``(32, 32, 3)`` float32 arrays."""
    q = Image.frombytes("RGB", (THUMB_SIDE, THUMB_SIDE), query[BOXES_BYTES:])
    if DIHEDRAL[transform] is not None:
        q = q.transpose(DIHEDRAL[transform])
    s = Image.frombytes("RGB", (THUMB_SIDE, THUMB_SIDE), stored[BOXES_BYTES:])
    side = THUMB_SIDE
    qbox = tuple(v * side for v in _window_box(kinds[0], query))
    sbox = tuple(v * side for v in _window_box(kinds[1], stored))
    a = q.resize((side, side), Image.Resampling.BILINEAR, box=qbox)
    b = s.resize((side, side), Image.Resampling.BILINEAR, box=sbox)
    return np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)


def second_look(a: np.ndarray, b: np.ndarray) -> float:
    """Median absolute difference of the standardised grey levels (zero mean, unit standard
    deviation, so brightness, contrast and colour changes of the whole cancel) of two aligned
    ``(H, W, 3)`` RGB arrays. A copy with a small overlay differs only under it (median <=
    0.086 on ``../shared/real/neardup``); two frames of a burst differ a little everywhere
    (>= 0.141) (``benchmarks/neardup_real``)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey_a, grey_b = a @ weights, b @ weights
    za = (grey_a - grey_a.mean()) / (grey_a.std() + 1e-3)
    zb = (grey_b - grey_b.mean()) / (grey_b.std() + 1e-3)
    return float(np.median(np.abs(za - zb)))
