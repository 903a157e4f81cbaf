"""The model's scores a review ranks images by: ``trainer.predict``'s CSV, read by path.

The scores file is CSV with at least ``path`` (relative to the dataset folder) and ``loss``;
``predicted`` and ``probability`` are shown when present. Rows are matched to images by path,
or by content id (the file name's SHA-256) for images moved since scoring.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

from crawler.errors import UserError

__all__ = ["Score", "load_scores", "score_of"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Score:
    """One scores-file row: the model's loss on the image's label, its prediction and probability."""

    loss: float | None
    predicted: str = ""
    probability: float | None = None


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def load_scores(path: str | Path) -> dict[str, Score]:
    """Read a scores CSV (``trainer.predict`` output) into ``{key: Score}``.

    Keys are the ``path`` column and, for content-id file names, the SHA-256 stem too.

    Raises:
        UserError: the file cannot be read, or has no ``path`` or ``loss`` column.
    """
    scores: dict[str, Score] = {}
    how = "python -m trainer.predict <export> <dataset> --out scores.csv"
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"path", "loss"} <= set(reader.fieldnames):
                raise UserError(f"{path}: a scores file needs 'path' and 'loss' columns (make one with {how})")
            for row in reader:
                score = Score(_float(row.get("loss")), row.get("predicted") or "", _float(row.get("probability")))
                rel = (row["path"] or "").replace("\\", "/")
                scores[rel] = score
                stem = Path(rel).stem.lower()
                if _SHA256_HEX.fullmatch(stem):
                    scores[stem] = score
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UserError(f"cannot read the scores file {path}: {reason} (make one with {how})") from None
    return scores


def score_of(scores: dict[str, Score], path: str) -> Score | None:
    """The score of the image at dataset-relative ``path``, by path or by content id."""
    return scores.get(path) or scores.get(Path(path).stem.lower())
