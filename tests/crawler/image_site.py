"""A local image server that logs every hit, and the image sets the multi-process crawl tests
serve with it (generated pictures; real photos with exact and near copies).

(A module rather than conftest.py, so test modules and the benchmark can import it.)"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from crawler_testkit import encode, picture
from http_testkit import HttpServer, Request
from PIL import Image

__all__ = ["ImageSite", "generated_images", "real_photos_with_copies"]


class ImageSite(HttpServer):
    """Serves ``images`` (name -> JPEG bytes) under ``/img/<name>`` after ``latency`` seconds;
    logs every image hit (``hits``); other names 404."""

    def __init__(self, images: dict[str, bytes], latency: float = 0.0) -> None:
        super().__init__()
        self.images = images
        self.latency = latency
        self.hits: list[str] = []
        self._lock = threading.Lock()

    def on_get(self, request: Request) -> None:
        if request.path == "/robots.txt":
            request.reply(200, "text/plain", b"User-agent: *\nDisallow:\n")
            return
        name = request.path.removeprefix("/img/")
        with self._lock:
            self.hits.append(request.path)
        if self.latency:
            time.sleep(self.latency)
        body = self.images.get(name)
        if body is None:
            request.reply(404, "text/plain", b"not found")
        else:
            request.reply(200, "image/jpeg", body)

    def url(self, name: str) -> str:
        return f"{self.base}/img/{name}"


def generated_images(count: int) -> dict[str, bytes]:
    return {f"g{i}.jpg": encode(picture(1000 + i, size=(160, 120)), "JPEG", quality=90) for i in range(count)}


def real_photos_with_copies(root: Path, count: int, copies: int = 20) -> dict[str, bytes]:
    """``count`` real photos (at most as many as ``root/*/*/*.jpg`` has), plus ``copies`` exact
    copies (same bytes, another name) and ``copies`` near copies (re-encoded at 70% size, JPEG
    quality 75) of some of them."""
    photos = sorted(root.glob("*/*/*.jpg"))[:count]
    images = {f"p{i}.jpg": path.read_bytes() for i, path in enumerate(photos)}
    step = max(1, (len(photos) - 4) // copies)
    for i in range(copies):
        images[f"exact{i}.jpg"] = images[f"p{i * step}.jpg"]
        with Image.open(io.BytesIO(images[f"p{i * step + 3}.jpg"])) as image:
            near = image.convert("RGB").resize((image.width * 7 // 10, image.height * 7 // 10))
        images[f"near{i}.jpg"] = encode(near, "JPEG", quality=75)
    return images
