"""The match policy: when a new image duplicates a stored one, and which of the two stays.

PDQ (``DEDUPE_HASH=pdq``, the default; ``DedupeRule``): two pictures are the same when

1. the best of the new one's 8 dihedral PDQ hashes is within ``DEDUPE_MAX_DISTANCE`` (31 of
   256 bits) of the stored one's, or a ``WINDOW_PAIRS`` pair of PDQ window hashes (letterbox or
   frame trimmed, caption bar cut) is within ``DEDUPE_VARIANT_DISTANCE`` (24), both hashes of
   quality ``DEDUPE_MIN_QUALITY`` (50) or more (``pdq_verdict``); or
2. a candidate that is not that sure (further, up to ``DEDUPE_LOOK_DISTANCE`` = 50 bits,
   identity orientation only, or of low quality) passes the second look at the two 64x64 grey
   squares (``crawler.images.pdq.second_look``: at most ``DEDUPE_LOOK_DIFFERENCE``, 0.10); or
3. a ``MATCH_PAIRS`` pair of imagehash phash windows (crops, caption bars, small turns: PDQ's
   fine bits move too far for those) is within ``DEDUPE_WINDOW_DISTANCE`` (8 of 64 bits), the
   colour signatures agree (``same_colour``), and the windows, aligned by a small search of
   scale, shift and turn, differ by at most ``DEDUPE_ALIGN_DIFFERENCE`` (0.13;
   ``crawler.images.pdq.aligned_difference``, ``window_verdict``).

Colour is not compared for 1 and 2: a copy recoloured as a whole is the same picture (issue 13).
Each threshold sits in the gap between copies and distinct pictures measured on several sets
(``crawler/settings.py`` ``DEDUPE_DEFAULTS`` says which).

64-bit imagehash hashes (``phash`` etc.): two images are near duplicates when their full perceptual hashes are within
``DEDUPE_MAX_DISTANCE`` bits, or one of the ``MATCH_PAIRS`` of windows (``crawler.images.hashing``
``VARIANTS``) is within ``DEDUPE_VARIANT_DISTANCE`` bits and their colour signatures agree
(``same_colour``). Exact duplicates have the same SHA-256. A larger copy (more pixels as
downloaded, same label) replaces the stored one (``Match.upgraded_by``); across labels the first
stays and the new one is a ``label_conflict``. Pure code: the dedupe and store stages and the
catalog index (``crawler.images.index``) decide with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from crawler.hashindex import hamming
from crawler.images.hashing import COLOUR_KIND, VARIANTS
from crawler.images.pdq import (
    DIHEDRAL_KINDS,
    FULL,
    TRIMMED,
    UNCAPTIONED,
    aligned_difference,
    aligned_thumbnails,
    second_look,
    window_box,
)

logger = logging.getLogger(__name__)

__all__ = [
    "COLOUR_TOLERANCE",
    "DedupeRule",
    "WINDOW_PAIRS",
    "pdq_pair_match",
    "pdq_verdict",
    "WINDOW_LOOKS",
    "window_candidates",
    "window_verdict",
    "MATCH_PAIRS",
    "Match",
    "duplicate_reason",
    "find_in_rows",
    "mark_duplicate",
    "same_colour",
    "source_pixels",
]

# (kind of one image, kind of the other) compared at DEDUPE_VARIANT_DISTANCE; both orders count.
MATCH_PAIRS: tuple[tuple[str, str], ...] = (
    ("trim90", "trim90"),  # letterbox, border, rotation
    ("phash", "top88"),  # caption bar below
    ("c80", "c90"),  # border, rotation, symmetric crop
    ("phash", "c90"),  # crop
    ("c80", "tl90"),  # crop keeping one corner
    ("c80", "tr90"),
    ("c80", "bl90"),
    ("c80", "br90"),
)
# PDQ: (window of one picture, window of the other) compared at DEDUPE_VARIANT_DISTANCE; both
# orders count. The PDQ windows that catch copies the phash windows' aligned look does not
# (benchmarks/neardup_real, benchmarks/dedupe_quality): a frame or pad (96-98% of those made
# copies, sure without a look), AugLy's 250-px caption bar on top.
WINDOW_PAIRS: tuple[tuple[str, str], ...] = (
    (TRIMMED, TRIMMED),  # letterbox, pad, frame
    (UNCAPTIONED, FULL),  # a caption bar (text on a plain band) on either side
    (UNCAPTIONED, UNCAPTIONED),
)

# The nearest phash window pairs of one stored picture that get the aligned look: the nearest
# pair's fixed windows can be the worse-aligned of two at the same distance (a frame read as
# (c80, c90) rather than (trim90, trim90)). Two rather than one: benchmarks/dedupe_quality's
# framed copies 62% -> 76%, crops 58% -> 62% (a sample of 100 each), the nearest burst pair
# of the gallery unchanged (0.162).
WINDOW_LOOKS = 2


@dataclass(frozen=True)
class DedupeRule:
    """The thresholds of one hash (``crawler.setting_values.dedupe_rule`` reads them):
    distances in bits, ``min_quality`` 0-100 (pdq only), ``look_distance`` bits (0: no second
    look), ``look_difference`` in standard deviations of grey level; pdq only:
    ``window_distance`` bits of 64 between phash windows (0: none), ``align_difference`` the
    aligned look's limit (standard deviations of grey level)."""

    hash_name: str = "pdq"
    max_distance: int = 31
    variant_distance: int = 24
    min_quality: int = 50
    look_distance: int = 50
    look_difference: float = 0.10
    window_distance: int = 8
    align_difference: float = 0.13

    @property
    def pdq(self) -> bool:
        return self.hash_name == "pdq"

    @property
    def coarse_distance(self) -> int:
        """``window_distance`` when windows are on (``variant_distance`` > 0: the prepare
        stage hashes none otherwise), else 0."""
        return self.window_distance if self.pdq and self.variant_distance else 0


def pdq_verdict(
    rule: DedupeRule,
    distance: int,
    transform: int,
    kinds: tuple[str, str],
    qualities: tuple[int, int],
    looks: tuple[bytes, bytes] | None,
) -> bool:
    """Is a PDQ hash candidate (``distance`` bits between the query's hash of ``kinds[0]``
    turned by ``DIHEDRAL[transform]`` and the stored one's of ``kinds[1]``) the same picture?
    Sure within the kind's distance when both ``qualities`` reach ``min_quality`` (or at 0
    bits); otherwise, within ``look_distance`` and with ``looks`` (query's, stored one's look
    blobs), when the second look differs by at most ``look_difference``."""
    limit = rule.max_distance if kinds == (FULL, FULL) else rule.variant_distance
    if distance == 0 or (distance <= limit and min(qualities) >= rule.min_quality):
        return True
    if not rule.look_distance or distance > max(rule.look_distance, limit) or looks is None:
        return False
    if not looks[0] or not looks[1]:
        return False
    return second_look(*aligned_thumbnails(looks[0], looks[1], transform, kinds)) <= rule.look_difference


def window_candidates(rule: DedupeRule, query: Mapping[str, Any], stored: Mapping[str, Any]) -> list[tuple[int, tuple[str, str]]]:
    """The ``MATCH_PAIRS`` of phash windows (both orders) within ``rule.window_distance`` whose
    pictures agree on colour, as ``(distance in bits of 64, (query kind, stored kind))``,
    nearest first; ``query`` and ``stored`` are ``hashes_of`` dicts (``COLOUR_KIND`` included)."""
    if not rule.coarse_distance or not same_colour(
        bytes.fromhex(query.get(COLOUR_KIND, "")), bytes.fromhex(stored.get(COLOUR_KIND, ""))
    ):
        return []
    found = []
    for x, y in {*MATCH_PAIRS, *((b, a) for a, b in MATCH_PAIRS)}:
        if x in query and y in stored:
            distance = hamming(int(query[x], 16), int(stored[y], 16))
            if distance <= rule.coarse_distance:
                found.append((distance, (x, y)))
    return sorted(found)


def window_verdict(rule: DedupeRule, kinds: tuple[str, str], looks: tuple[bytes, bytes]) -> bool:
    """Is a phash window candidate (``kinds``: the query's window, the stored one's) the same
    picture? When the two windows, aligned by ``aligned_difference``'s search, differ by at
    most ``rule.align_difference`` (``looks``: the query's and the stored one's look blobs)."""
    if not looks[0] or not looks[1]:
        return False
    boxes = (window_box(kinds[0], looks[0], VARIANTS), window_box(kinds[1], looks[1], VARIANTS))
    return aligned_difference(looks[0], looks[1], boxes) <= rule.align_difference


def pdq_pair_match(
    rule: DedupeRule, query: Mapping[str, Any], stored: Mapping[str, Any]
) -> tuple[int, int, tuple[str, str]] | None:
    """``PdqCatalogIndex.find``'s decision for one pair of pictures (``hashes_of(image,
    "pdq")`` of each, the stored one's ``"pdq"`` standing for its full picture; the query is the
    newer one): ``(distance, transform, kinds)`` of the accepted candidate, or ``None``. PDQ
    candidates first (nearest first, one second look), then phash window pairs (the
    ``WINDOW_LOOKS`` nearest, an aligned look each). For benchmarks and checks of a handful of
    pairs."""

    def bits(x: str, y: str) -> int:
        return hamming(int(x, 16), int(y, 16))

    found = []
    for transform, kind in enumerate(DIHEDRAL_KINDS):
        distance = bits(query[kind], stored[FULL])
        if distance <= rule.max_distance or (transform == 0 and distance <= rule.look_distance):
            found.append((distance, transform, (FULL, FULL)))
    if rule.variant_distance:
        for x, y in {*WINDOW_PAIRS, *((b, a) for a, b in WINDOW_PAIRS)}:
            if x in query and y in stored and (distance := bits(query[x], stored[y])) <= rule.variant_distance:
                found.append((distance, 0, (x, y)))
    qualities = (int(query.get("pdq_quality", 0)), int(stored.get("pdq_quality", 0)))
    looks = (query.get("look") or b"", stored.get("look") or b"")
    looked = False  # one second look per pair, at the nearest candidate that is not sure
    for distance, transform, kinds in sorted(found, key=lambda c: (c[0], c[1])):
        if pdq_verdict(rule, distance, transform, kinds, qualities, None):
            return distance, transform, kinds
        if not looked and rule.look_distance:
            looked = True
            if pdq_verdict(rule, distance, transform, kinds, qualities, looks):
                return distance, transform, kinds
    for distance, kinds in window_candidates(rule, query, stored)[:WINDOW_LOOKS]:
        if window_verdict(rule, kinds, looks):
            return distance, 0, kinds
    return None


# A variant match must also agree on colour: the mean and standard deviation of R, G and B over
# the central 80% of the trimmed image, within this many levels each. Smooth low-detail pictures
# (gradients, studio backgrounds) have windows with alike phashes; their colours tell them apart.
COLOUR_TOLERANCE = 16


def duplicate_reason(label: str, existing_label: str, distance: int, same_bytes: bool) -> str:
    """``label_conflict`` across labels, else ``exact`` (same bytes) or ``near``."""
    if label != existing_label:
        return "label_conflict"
    return "exact" if same_bytes and distance == 0 else "near"


def source_pixels(row: Mapping[str, Any]) -> int:
    """Pixels of the image as downloaded (``source_width`` x ``source_height``; the stored
    ``width`` x ``height`` for rows from before those columns, or 0 when unknown). A copy
    replaces a stored one by this size, so that with ``VERIFY_MAX_SIDE`` two copies larger
    than the limit still compare by what was downloaded."""
    width = row["source_width"] if "source_width" in row.keys() and row["source_width"] else row["width"]
    height = row["source_height"] if "source_height" in row.keys() and row["source_height"] else row["height"]
    return (width or 0) * (height or 0)


class Match:
    """A stored image an item duplicates: its catalog ``path`` and ``label``, the Hamming
    ``distance`` in bits between the perceptual hashes (0 for the same bytes), and its size
    ``pixels`` (width x height, 0 when unknown). ``deleted``: the image is not stored but was
    deleted by a person in review (``path`` is then ``None``), so copies of it are rejected."""

    __slots__ = ("deleted", "distance", "label", "path", "pixels", "same_bytes")

    def __init__(
        self, path: str, label: str, distance: int, same_bytes: bool, pixels: int = 0, deleted: bool = False
    ) -> None:
        self.path = path
        self.label = label
        self.distance = distance
        self.same_bytes = same_bytes
        self.pixels = pixels
        self.deleted = deleted

    @classmethod
    def of_row(cls, row: Any, distance: int, same_bytes: bool) -> Match:
        deleted = "status" in row.keys() and row["status"] == "rejected"
        return cls(row["path"], row["label"], distance, same_bytes, source_pixels(row), deleted)

    def upgraded_by(self, label: str, pixels: int) -> bool:
        """True when an item of ``label`` and ``pixels`` should replace this stored image:
        same label, different bytes, strictly more pixels. Search results and shops serve
        downscaled copies; whichever arrives first, the dataset keeps the largest. Across
        labels the first stays (a label conflict is for a person to settle); a deleted image
        is never brought back by a larger copy."""
        return not self.deleted and label == self.label and not self.same_bytes and pixels > self.pixels



def same_colour(mine: bytes, theirs: bytes) -> bool:
    """Colour signatures (``image_hashes``) within ``COLOUR_TOLERANCE`` levels each; an image
    without one (catalogued before variants existed) never matches by variants."""
    return len(mine) == len(theirs) == 6 and max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) <= COLOUR_TOLERANCE


def find_in_rows(
    rows: list[Any], sha256: str, phash: str | None, max_distance: int,
    rule: DedupeRule | None = None, hashes: Mapping[str, Any] | None = None,
    look_of: Callable[[int], bytes | None] | None = None,
) -> Match | None:
    """Like ``CatalogHashIndex.find`` over a short list of catalog rows (a linear scan, for the
    handful stored since an item's dedupe decision): the same bytes, else the nearest full
    hash within ``max_distance`` (64-bit ``phash``), or with a pdq ``rule`` the nearest row
    ``pdq_pair_match`` accepts for the item's full-picture ``hashes`` (its ``DIHEDRAL_KINDS``,
    ``pdq_quality`` and ``look``; the rows' looks come from ``look_of(row_id)``)."""
    best: Match | None = None
    use_pdq = rule is not None and rule.pdq and bool(hashes)
    value = int(phash, 16) if phash and not use_pdq else None
    for row in rows:
        if row["sha256"] == sha256:
            return Match.of_row(row, 0, True)
        distance = None
        if use_pdq and row["pdq"]:
            stored = {FULL: row["pdq"], "pdq_quality": row["pdq_quality"] or 0}
            found = pdq_pair_match(rule, hashes or {}, stored)  # type: ignore[arg-type]
            # The thumbnail is read only for a row within the look's reach (rarely any).
            reach = max(rule.max_distance, rule.look_distance)  # type: ignore[union-attr]
            if found is None and look_of is not None and rule.look_distance and min(  # type: ignore[union-attr]
                hamming(int(hashes[kind], 16), int(row["pdq"], 16)) for kind in DIHEDRAL_KINDS  # type: ignore[index]
            ) <= reach:
                stored["look"] = look_of(row["id"]) or b""
                found = pdq_pair_match(rule, hashes or {}, stored)  # type: ignore[arg-type]
            if found is None:
                continue
            distance = found[0]
        elif value is not None and row["phash"]:
            distance = hamming(value, int(row["phash"], 16))
            if distance > max_distance:
                continue
        if distance is not None and (best is None or distance < best.distance):
            best = Match.of_row(row, distance, False)
    return best


def mark_duplicate(adapter: MutableMapping[str, Any], match: Match) -> None:
    """Record on an item (its ``ItemAdapter``) that it duplicates ``match``: ``status``,
    ``reason`` (``duplicate_reason``), ``duplicate_of``, ``hash_distance``; drop its bytes."""
    adapter["status"] = "duplicate"
    adapter["reason"] = duplicate_reason(
        adapter["label"], match.label, match.distance, match.same_bytes
    )
    adapter["duplicate_of"] = match.path
    adapter["hash_distance"] = match.distance
    adapter.pop("body", None)
    logger.info(
        "%s duplicate (%d bits) of %s: %s",
        adapter["reason"],
        match.distance,
        match.path,
        str(adapter.get("url", ""))[:100],
    )
