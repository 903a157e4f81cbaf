"""Helpers for the crawler tests: real image bytes made with Pillow, items, a coroutine runner.

(A module rather than conftest.py, so test modules can import it: pytest puts this folder on
sys.path.)"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

from crawler.items import ImageItem


def picture(seed: int, size: tuple[int, int] = (128, 128), mode: str = "RGB") -> Image.Image:
    """A smooth random picture: an 8x8 grid of random colours upscaled bicubically, so that
    resizing and recompressing keep its perceptual hash while two seeds differ by ~32 bits."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8), "RGB")
    image = small.resize(size, Image.Resampling.BICUBIC)
    return image if mode == "RGB" else image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` RGB pixels with one tiny IDAT: built
    by hand in microseconds, it would need 1.2 GB to decode."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")


def make_item(label: str = "cats", url: str = "http://127.0.0.1/x.jpg", **fields: Any) -> ImageItem:
    return ImageItem(
        url=url, page_url="http://127.0.0.1/page", label=label, query=label, spider="test", **fields
    )


def run(coro: Any) -> Any:
    """Drive an ``async def process_item`` to completion outside a Scrapy reactor."""
    return asyncio.run(coro)
