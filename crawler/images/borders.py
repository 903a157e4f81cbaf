"""Uniform borders of a picture (letterbox bars, frames): ``trim_borders`` and its box.

Pure image code (Pillow, numpy), shared by both hash recipes (``crawler.images.hashing``,
``crawler.images.pdq``), which hash a window inside the trimmed picture.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["line_median", "trim_borders", "trim_box", "uniform_lines"]

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
    if min(bottom, right) >= 16 and not _any_uniform_edge(grey):
        return left, top, right, bottom  # most pictures: the loop below would trim nothing
    for _ in range(3):
        changed = False
        for side in "tblr":
            window = grey[top:bottom, left:right]
            if min(window.shape) < 16:
                break
            # Rows (or columns) from this side inwards, so that run[0] is the outermost.
            lines = {"t": window, "b": window[::-1], "l": window.T, "r": window.T[::-1]}[side]
            count = _uniform_run(lines, line_median(lines[0]), int(len(lines) * TRIM_MAX_SHARE) + 1)
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


def line_median(line: np.ndarray) -> float:
    """``np.median`` of a 1-D integer array (the same value) without its generic wrappers: a
    partition, a fifth of the cost (2 us for 160 pixels); it is taken several times per picture."""
    middle = len(line) // 2
    if len(line) % 2:
        return float(np.partition(line, middle)[middle])
    part = np.partition(line, (middle - 1, middle))
    return (int(part[middle - 1]) + int(part[middle])) / 2


def uniform_lines(lines: np.ndarray, level: float | np.ndarray, tolerance: int, share: float) -> np.ndarray:
    """Which of ``lines`` (``(N, L)``) have ``share`` of their pixels within ``tolerance`` of
    ``level``: ``(np.abs(lines - level) <= tolerance).mean(axis=1) >= share`` in fewer steps
    (a count over the length is the float mean of the booleans)."""
    return np.count_nonzero(np.abs(lines - level) <= tolerance, axis=1) / lines.shape[1] >= share


def _any_uniform_edge(grey: np.ndarray) -> bool:
    """Whether any outermost row or column of ``grey`` (``(H, W)`` int16) is uniform by the test
    of ``_uniform_run`` (against its own median). When none is, ``trim_box``'s first round
    trims nothing and stops: the same answer from the four edges at once."""
    for edges in (grey[[0, -1]], grey[:, [0, -1]].T):
        levels = np.array([[line_median(edges[0])], [line_median(edges[1])]])
        if uniform_lines(edges, levels, TRIM_TOLERANCE, TRIM_SHARE).any():
            return True
    return False


def _uniform_run(lines: np.ndarray, level: float, limit: int) -> int:
    """How many of the first ``lines`` (up to ``limit``; more would not be trimmed anyway)
    are uniform: ``TRIM_SHARE`` of their pixels within ``TRIM_TOLERANCE`` of ``level``.
    Looks at a few lines at a time, since most pictures stop at the first."""
    count, step = 0, 4
    while count < min(limit, len(lines)):
        chunk = lines[count : min(count + step, limit)]
        uniform = uniform_lines(chunk, level, TRIM_TOLERANCE, TRIM_SHARE)
        if not uniform.all():
            return count + int(np.argmin(uniform))
        count += len(chunk)
        step *= 4
    return count
