"""Label sanitising: a label becomes one folder name under DATASET_DIR, never a path."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["sanitize_label"]

# Characters that are path separators or reserved on common filesystems (Windows included, so
# a dataset copied there still opens).
_RESERVED = re.compile(r'[\\/:*?"<>|]')
_SPACES = re.compile(r"\s+")
# Most filesystems cap a name at 255 bytes; leave room for nothing else since labels are folders.
MAX_LABEL_BYTES = 255


def sanitize_label(label: str) -> str:
    """Return ``label`` as a safe folder name.

    Unicode is kept (NFC-normalised, so one label never yields two folders); control characters
    are removed; path separators and reserved characters become ``_``; runs of whitespace become
    one space; leading dots and surrounding spaces are stripped, so ``..``, ``.tmp`` or ``../x``
    can never name a hidden folder or a parent. The result is cut to 255 bytes of UTF-8.

    Raises:
        ValueError: if nothing usable is left (empty, only dots, only separators...).
    """
    text = unicodedata.normalize("NFC", str(label))
    text = _SPACES.sub(" ", text)  # tabs and newlines are whitespace first, controls second
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = _RESERVED.sub("_", text).strip(" ")
    text = text.lstrip(".").strip(" ")
    text = text.rstrip(".")  # Windows drops trailing dots silently
    encoded = text.encode("utf-8")[:MAX_LABEL_BYTES]
    text = encoded.decode("utf-8", errors="ignore").strip(" ")
    if not text.strip("_"):
        raise ValueError(f"label {label!r} has no usable characters for a folder name")
    return text
