"""Helpers for the trainer tests: tiny generated datasets (catalogued or plain ImageFolder)."""

from __future__ import annotations

import hashlib
import io
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
COLOURS = {"circle": (220, 40, 40), "square": (40, 60, 220), "triangle": (40, 180, 60)}

SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY, created_at TEXT, label TEXT NOT NULL, status TEXT NOT NULL,
    path TEXT, reason TEXT, duplicate_of TEXT, hash_distance INTEGER, sha256 TEXT, phash TEXT,
    width INTEGER, height INTEGER, bytes INTEGER, format TEXT, url TEXT, page_url TEXT,
    spider TEXT, query TEXT, licence TEXT, author TEXT
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('schema_version', '1'), ('hash', 'phash'), ('hash_size', '8');
"""


def draw_image(label: str, index: int, size: int = 48) -> bytes:
    """PNG bytes of one shape of class ``label``; ``index`` varies position, size and background."""
    rng = random.Random(f"{label}-{index}")
    image = Image.new("RGB", (size, size), tuple(rng.randrange(200, 256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    # Labels outside CLASSES get a shape and colour picked from their name.
    shape = label if label in COLOURS else CLASSES[sum(map(ord, label)) % len(CLASSES)]
    colour = COLOURS[shape]
    half = rng.randrange(size // 5, size // 3)
    cx, cy = rng.randrange(half, size - half), rng.randrange(half, size - half)
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_catalog_dataset(
    root: Path, per_class: int = 10, classes: tuple[str, ...] = CLASSES, start: int = 0,
    phash: Callable[[str, int], str | None] | None = None,
) -> list[str]:
    """Write (or extend) a catalogued dataset as the crawler would; return the new relative paths.

    ``phash(label, index)`` gives each stored row's perceptual hash (default: distinct made-up
    hashes far apart). One rejected and one duplicate row are added for realism.
    """
    root.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(root / "catalog.sqlite")
    if not connection.execute("SELECT name FROM sqlite_master WHERE name='images'").fetchone():
        connection.executescript(SCHEMA)
    paths = []
    for label in classes:
        (root / label).mkdir(exist_ok=True)
        for index in range(start, start + per_class):
            data = draw_image(label, index)
            sha = hashlib.sha256(data).hexdigest()
            rel = f"{label}/{sha}.png"
            (root / rel).write_bytes(data)
            value = phash(label, index) if phash else hashlib.sha256(data).hexdigest()[:16]
            connection.execute(
                "INSERT INTO images (label, status, path, sha256, phash, format) VALUES (?, 'stored', ?, ?, ?, 'PNG')",
                (label, rel, sha, value),
            )
            paths.append(rel)
        connection.execute(
            "INSERT INTO images (label, status, reason, url) VALUES (?, 'rejected', 'not_an_image', 'http://x/y')", (label,)
        )
        connection.execute(
            "INSERT INTO images (label, status, reason, duplicate_of) VALUES (?, 'duplicate', 'exact', ?)",
            (label, paths[-1]),
        )
    connection.commit()
    connection.close()
    return paths


def write_image_folder(root: Path, per_class: int = 10, classes: tuple[str, ...] = CLASSES) -> Path:
    """Plain ImageFolder layout with human file names (no catalog)."""
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            (root / label / f"img_{index:03d}.png").write_bytes(draw_image(label, index))
    return root



def move_catalog_to_postgres(root: Path, url: str) -> None:
    """Put the rows of ``root/catalog.sqlite`` into the PostgreSQL catalog at ``url`` through the
    crawler's own ``Catalog``, then remove the file: only the database tells the labels."""
    from crawler.catalog import COLUMNS, Catalog

    conn = sqlite3.connect(root / "catalog.sqlite")
    conn.row_factory = sqlite3.Row
    rows = [dict(row) for row in conn.execute("SELECT * FROM images ORDER BY id")]
    conn.close()
    with Catalog(root, url=url) as catalog, catalog.transaction() as tx:
        for row in rows:
            catalog.insert({key: row.get(key) for key in COLUMNS}, conn=tx)
    (root / "catalog.sqlite").unlink()
