"""Look at a dataset before training: counts, formats, sizes, sources, and a contact sheet.

Usage::

    python -m crawler.dataset summary <dir> [--contact-sheet sheet.png] [--per-label 8]

:func:`summarize` reads the catalog (docs/dataset.md) when there is one: stored images per label,
their formats, width and height quantiles, source domains and licences, rejections and
duplicates by reason, and label conflicts (the same picture found under two labels). Without a
catalog it reads the folders instead, as the trainer does: ``<label>/<image>`` (ImageFolder
layout) or ``<split>/<label>/<image>`` for ``train``/``val``/``test`` splits, labelled
``train/ants`` and so on; each image's header is read with Pillow, and sources, licences and
rejections are then unknown.

:func:`contact_sheet` draws a grid of sample images, a row per label with its name and count,
the way fastai's ``show_batch`` shows a batch: the first look that catches a wrong class, a
placeholder image or a watermark before any training. The sample is deterministic (a seeded
draw), so two sheets of one dataset compare.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from crawler.catalog import CATALOG_NAME, Catalog
from crawler.errors import UserError

__all__ = ["DatasetSummary", "contact_sheet", "format_summary", "quantiles", "summarize"]

#: File name endings read as images when there is no catalog (what ImageFolder reads, plus WebP).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
#: Split folders the trainer takes as given (``data.root`` with ``train/`` and ``val/``).
SPLITS = frozenset({"train", "val", "valid", "test"})
#: Label conflicts listed one by one before they are only counted.
LIST_AT_MOST = 10


@dataclass
class DatasetSummary:
    """What a dataset holds. ``source`` is ``"catalog"`` or ``"folders"``; sizes are pixels.

    ``images`` maps each label to its stored images' dataset-relative paths (sorted), for
    :func:`contact_sheet`. ``conflicts`` holds ``(label, url, duplicate_of)`` per label conflict.
    """

    root: Path
    source: str
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)  # per label
    rejected: Counter[str] = field(default_factory=Counter)  # per label
    formats: Counter[str] = field(default_factory=Counter)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    domains: Counter[str] = field(default_factory=Counter)
    licences: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)  # per reason
    duplicate_reasons: Counter[str] = field(default_factory=Counter)
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)
    images: dict[str, list[str]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted(set(self.stored) | set(self.duplicates) | set(self.rejected))


def _domain(url: str | None) -> str:
    if not url:
        return "(no URL)"
    if url.startswith("data:"):
        return "(data: URI)"
    return urlsplit(url).hostname or "(no host)"


def summarize(root: str | os.PathLike[str], catalog_url: str | None = None) -> DatasetSummary:
    """The summary of the dataset at ``root``, from its catalog (the PostgreSQL one at
    ``catalog_url`` when given), else from its folders.

    Raises:
        UserError: ``root`` is not a folder, or has neither a catalog nor images in subfolders.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no dataset folder {root} (give the folder a crawl wrote with -s DATASET_DIR=...)")
    if catalog_url or (root / CATALOG_NAME).is_file():
        return _from_catalog(root, catalog_url)
    summary = _from_folders(root)
    if not summary.stored:
        raise UserError(
            f"{root} is not a dataset: no {CATALOG_NAME} and no images in label subfolders "
            "(crawl into it with -s DATASET_DIR=..., or give a folder of <label>/ image folders)"
        )
    return summary


def _from_catalog(root: Path, catalog_url: str | None = None) -> DatasetSummary:
    summary = DatasetSummary(root, "catalog")
    images: dict[str, list[str]] = defaultdict(list)
    with Catalog(root, url=catalog_url) as catalog:
        rows = catalog.rows()
    for row in rows:
        label, status = row["label"], row["status"]
        if status == "stored":
            summary.stored[label] += 1
            images[label].append(row["path"])
            summary.formats[row["format"] or "(unknown)"] += 1
            if row["width"] and row["height"]:
                summary.widths.append(row["width"])
                summary.heights.append(row["height"])
            summary.domains[_domain(row["url"])] += 1
            summary.licences[row["licence"] or "(none recorded)"] += 1
        elif status == "duplicate":
            summary.duplicates[label] += 1
            summary.duplicate_reasons[row["reason"] or "(none)"] += 1
            if row["reason"] == "label_conflict":
                summary.conflicts.append((label, row["url"] or "", row["duplicate_of"] or ""))
        else:
            summary.rejected[label] += 1
            summary.rejections[row["reason"] or "(none)"] += 1
    summary.images = {label: sorted(paths) for label, paths in images.items()}
    return summary


def _from_folders(root: Path) -> DatasetSummary:
    summary = DatasetSummary(root, "folders")
    images: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        depth = 3 if rel.parts[0] in SPLITS else 2
        if len(rel.parts) != depth or any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        label = rel.parent.as_posix()
        try:
            with Image.open(path) as image:  # reads the header only
                size, fmt = image.size, image.format or "(unknown)"
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
            summary.rejected[label] += 1
            summary.rejections["undecodable"] += 1
            continue
        summary.stored[label] += 1
        images[label].append(rel.as_posix())
        summary.formats[fmt] += 1
        summary.widths.append(size[0])
        summary.heights.append(size[1])
    summary.images = dict(images)
    return summary


def quantiles(values: list[int], points: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)) -> list[int]:
    """Nearest-rank quantiles of ``values`` at ``points`` (fractions in [0, 1]); ``[]`` if empty."""
    if not values:
        return []
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))] for p in points]


def _counts(counter: Counter[str], total: int | None = None) -> str:
    total = total or sum(counter.values())

    def share(count: int) -> str:
        percent = 100 * count / total
        return "<1%" if 0 < percent < 0.5 else f"{percent:.0f}%"

    return ", ".join(f"{name} {count} ({share(count)})" for name, count in counter.most_common())


def format_summary(summary: DatasetSummary) -> str:
    """The summary as text for a terminal (several lines, no trailing newline)."""
    labels = summary.labels
    total = sum(summary.stored.values())
    lines = [f"{summary.root}: {total} stored images in {len(summary.stored)} labels (from the {summary.source})"]
    width = max([len("label"), *map(len, labels)])
    lines.append(f"  {'label':<{width}}  {'stored':>7}  {'share':>6}  {'duplicate':>9}  {'rejected':>8}")
    for label in labels:
        share = 100 * summary.stored[label] / total if total else 0.0
        lines.append(
            f"  {label:<{width}}  {summary.stored[label]:>7}  {share:>5.1f}%  "
            f"{summary.duplicates[label]:>9}  {summary.rejected[label]:>8}"
        )
    if len(summary.stored) >= 2:
        most, least = max(summary.stored.values()), min(summary.stored.values())
        lines.append(f"  imbalance: largest label / smallest = {most / least:.1f}")
    if summary.formats:
        lines.append(f"formats: {_counts(summary.formats)}")
    for name, values in (("width", summary.widths), ("height", summary.heights)):
        q = quantiles(values)
        if q:
            lines.append(
                f"{name} px: min {q[0]}, 10% {q[1]}, 25% {q[2]}, median {q[3]}, 75% {q[4]}, 90% {q[5]}, max {q[6]}"
            )
    if summary.source == "catalog":
        lines.append(f"sources: {_counts(summary.domains)}")
        lines.append(f"licences: {_counts(summary.licences)}")
        lines.append(f"rejected by reason: {_counts(summary.rejections) or 'none'}")
        lines.append(f"duplicates by reason: {_counts(summary.duplicate_reasons) or 'none'}")
        lines.append(f"label conflicts: {len(summary.conflicts)}")
        for label, url, duplicate_of in summary.conflicts[:LIST_AT_MOST]:
            lines.append(f"  {label}: {url} is the same picture as {duplicate_of}")
        if len(summary.conflicts) > LIST_AT_MOST:
            lines.append(f"  ... and {len(summary.conflicts) - LIST_AT_MOST} more")
    else:
        lines.append("sources, licences, rejections: unknown (no catalog)")
        if summary.rejections:
            lines.append(f"unreadable files: {summary.rejections['undecodable']}")
    return "\n".join(lines)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def contact_sheet(
    summary: DatasetSummary,
    out: str | os.PathLike[str],
    *,
    per_label: int = 8,
    thumb: int = 96,
    seed: int = 0,
) -> Path:
    """Write a PNG grid of up to ``per_label`` images per label, a row per label.

    Each row starts with the label's name and stored count; each thumbnail is the whole image
    scaled into a ``thumb`` x ``thumb`` pixel cell. The sample is ``random.Random(seed)``'s draw
    from the label's sorted paths: the same dataset gives the same sheet. Files that cannot be
    decoded show as a grey cell with a cross. The PNG is written to a temporary name and renamed.

    Returns:
        The path written.

    Raises:
        UserError: the dataset has no stored image, or ``out``'s folder does not exist.
    """
    out = Path(out)
    if not summary.images:
        raise UserError(f"{summary.root} has no stored images to draw (crawl some first)")
    if not out.parent.is_dir():
        raise UserError(
            f"no folder {out.parent} for the contact sheet (create it, or pick another --contact-sheet path)"
        )
    labels = sorted(summary.images)
    font = _font(max(11, thumb // 7))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [f"{label} ({summary.stored[label]})" for label in labels]
    label_width = int(max(probe.textlength(caption, font=font) for caption in captions)) + 16
    gap = 4
    size = (label_width + per_label * (thumb + gap) + gap, len(labels) * (thumb + gap) + gap)
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, caption) in enumerate(zip(labels, captions, strict=True)):
        top = gap + row * (thumb + gap)
        draw.text((8, top + thumb // 2), caption, fill="black", font=font, anchor="lm")
        paths = summary.images[label]
        sample = random.Random(f"{seed}:{label}").sample(paths, min(per_label, len(paths)))
        for column, rel in enumerate(sample):
            left = label_width + gap + column * (thumb + gap)
            sheet.paste(_thumbnail(summary.root / rel, thumb), (left, top))
    tmp = out.with_name(f".{out.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


def _thumbnail(path: Path, side: int) -> Image.Image:
    cell = Image.new("RGB", (side, side), (235, 235, 235))
    try:
        with Image.open(path) as image:
            image.draft("RGB", (side, side))  # JPEG: decode at reduced size (DCT scaling)
            picture = ImageOps.contain(ImageOps.exif_transpose(image).convert("RGB"), (side, side))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError):
        draw = ImageDraw.Draw(cell)
        draw.line((0, 0, side, side), fill="grey")
        draw.line((0, side, side, 0), fill="grey")
        return cell
    cell.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    return cell
