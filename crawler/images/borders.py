"""Uniform borders of a picture (letterbox bars, frames): ``trim_borders`` and its box.

Pure image code (Pillow, numpy), shared by both hash recipes (``crawler.images.hashing``,
``crawler.images.pdq``), which hash a window inside the trimmed picture.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["trim_borders", "trim_box"]

# trim_borders: a row or column belongs to a border when this share of its pixels is within
# TRIM_TOLERANCE grey levels of the edge's median (JPEG noise and a stray pixel allowed).
TRIM_TOLERANCE = 40
TRIM_SHARE = 0.97
TRIM_MAX_SHARE = 0.4  # never trim more than this share of a side in one step


def trim_borders(image: Image.Image) -> Image.Image:
    """``image`` without uniform borders (letterbox bars, frames), found on its grey levels.

    Each side is trimmed while its outermost rows/columns are uniform (see ``TRIM_SHARE``);
    repeated up to three times so a frame around a letterbox goes too. Returns the image itself
    when nothing is uniform, and never trims a side by more than 40% at once or below 16 pixels.
    """
    box = trim_box(np.asarray(image.convert("L")))
    if box == (0, 0, *image.size):
        return image
    return image.crop(box)


def trim_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of ``trim_borders`` for an ``(H, W)`` uint8 grey image."""
    grey = grey.astype(np.int16)
    top, left = 0, 0
    bottom, right = grey.shape
    for _ in range(3):
        changed = False
        for side in "tblr":
            window = grey[top:bottom, left:right]
            if min(window.shape) < 16:
                break
            # Rows (or columns) from this side inwards, so that run[0] is the outermost.
            lines = {"t": window, "b": window[::-1], "l": window.T, "r": window.T[::-1]}[side]
            count = _uniform_run(lines, np.median(lines[0]), int(len(lines) * TRIM_MAX_SHARE) + 1)
            if count == 0 or count > len(lines) * TRIM_MAX_SHARE:
                continue
            changed = True
            if side == "t":
                top += count
            elif side == "b":
                bottom -= count
            elif side == "l":
                left += count
            else:
                right -= count
        if not changed:
            break
    return left, top, right, bottom


def _uniform_run(lines: np.ndarray, level: float, limit: int) -> int:
    """How many of the first ``lines`` (up to ``limit``; more would not be trimmed anyway)
    are uniform: ``TRIM_SHARE`` of their pixels within ``TRIM_TOLERANCE`` of ``level``.
    Looks at a few lines at a time, since most pictures stop at the first."""
    count, step = 0, 4
    while count < min(limit, len(lines)):
        chunk = lines[count : min(count + step, limit)]
        uniform = (np.abs(chunk - level) <= TRIM_TOLERANCE).mean(axis=1) >= TRIM_SHARE
        if not uniform.all():
            return count + int(np.argmin(uniform))
        count += len(chunk)
        step *= 4
    return count
