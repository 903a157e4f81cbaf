"""The match policy: when a new image duplicates a stored one, and which of the two stays.

Two images are near duplicates when their full perceptual hashes are within
``DEDUPE_MAX_DISTANCE`` bits, or one of the ``MATCH_PAIRS`` of windows (``crawler.images.hashing``
``VARIANTS``) is within ``DEDUPE_VARIANT_DISTANCE`` bits and their colour signatures agree
(``same_colour``). Exact duplicates have the same SHA-256. A larger copy (more pixels as
downloaded, same label) replaces the stored one (``Match.upgraded_by``); across labels the first
stays and the new one is a ``label_conflict``. Pure code: the dedupe and store stages and the
catalog index (``crawler.images.index``) decide with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from crawler.hashindex import hamming

logger = logging.getLogger(__name__)

__all__ = [
    "COLOUR_TOLERANCE",
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
# trim_borders: a row or column belongs to a border when this share of its pixels is within
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
    rows: list[Any], sha256: str, phash: str | None, max_distance: int
) -> Match | None:
    """Like ``CatalogHashIndex.find`` over a short list of catalog rows (a linear scan, for the
    handful stored since an item's dedupe decision)."""
    best: Match | None = None
    value = int(phash, 16) if phash else None
    for row in rows:
        if row["sha256"] == sha256:
            return Match.of_row(row, 0, True)
        if value is not None and row["phash"]:
            distance = hamming(value, int(row["phash"], 16))
            if distance <= max_distance and (best is None or distance < best.distance):
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
