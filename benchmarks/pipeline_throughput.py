"""Benchmark: crawl throughput (issue 4), ours beside img2dataset and fastai's download_images.

A local server on 127.0.0.1 serves N distinct generated JPEGs (320x240, ~15 KB) with a fixed
latency per response (default 50 ms) and one listing page with every URL. Each tool gets the
same URL list in the same run:

* ours: ``scrapy crawl gallery`` on the listing page into a fresh dataset: download, verify
  (full decode), dedupe (phash + variant hashes, index, catalog lookups), store (atomic write,
  SQLite row). Images/s = stored images / wall time of the process.
* img2dataset (its own venv, no torch beside it): ``--thread_count 32``, files output, no resize.
* fastai ``download_images(..., n_workers=32)`` (its venv, with torch).

Reproduce::

    bash benchmarks/peers.sh            # once
    .venv/bin/python -m benchmarks.pipeline_throughput [--count 2000] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEERS = Path(os.environ.get("PEERS_DIR", "/tmp/imageclf-peers"))
_SCRAPY = Path(sys.executable).with_name("scrapy")
SCRAPY = [str(_SCRAPY)] if _SCRAPY.exists() else [sys.executable, "-m", "scrapy"]


def make_images(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct photo-like JPEGs (coarse + fine random colour fields)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((320, 240), Image.Resampling.BICUBIC)
        fine = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).resize((320, 240), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        Image.blend(coarse, fine, 0.35).save(out, "JPEG", quality=85)
        images.append(out.getvalue())
    return images


def serve(images: list[bytes], latency: float) -> ThreadingHTTPServer:
    listing = "".join(f'<img src="/img/{n}.jpg">' for n in range(len(images)))
    page = f"<html><body>{listing}</body></html>".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            time.sleep(latency)
            if self.path.startswith("/img/"):
                body, ctype = images[int(self.path[5:].split(".")[0])], "image/jpeg"
            elif self.path.startswith("/list"):
                body, ctype = page, "text/html"
            else:
                body, ctype = b"User-agent: *\nAllow: /\n", "text/plain"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.request_queue_size = 256
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def run_ours(base: str, tmp: Path, count: int, concurrency: int) -> tuple[float, int]:
    dataset = tmp / "ours"
    started = time.perf_counter()
    subprocess.run(
        [
            *SCRAPY, "crawl", "gallery", "-a", "label=bench", "-a", f"start_urls={base}/list.html",
            "-s", f"DATASET_DIR={dataset}", "-s", "AUTOTHROTTLE_ENABLED=0", "-s", "LOG_LEVEL=WARNING",
            "-s", f"CONCURRENT_REQUESTS={concurrency}", "-s", f"CONCURRENT_REQUESTS_PER_DOMAIN={concurrency}",
            "-s", f"CONCURRENT_ITEMS={concurrency}",
        ],
        cwd=REPO, check=True, timeout=1800,
    )
    seconds = time.perf_counter() - started
    stored = len(list((dataset / "bench").glob("*")))
    return seconds, stored


def run_img2dataset(python: Path, urls: Path, tmp: Path) -> tuple[float, int]:
    out = tmp / "img2dataset"
    started = time.perf_counter()
    subprocess.run(
        [str(python.with_name("img2dataset")), "--url_list", str(urls), "--output_folder", str(out),
         "--thread_count", "32", "--processes_count", "2", "--resize_mode", "no",
         "--output_format", "files", "--input_format", "txt", "--disable_all_reencoding", "True"],
        check=True, timeout=1800, capture_output=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    seconds = time.perf_counter() - started
    return seconds, len(list(out.rglob("*.jpg")))


FASTAI = """
import sys
from pathlib import Path
from fastai.vision.utils import download_images
download_images(Path(sys.argv[2]), url_file=Path(sys.argv[1]), max_pics=10**9, n_workers=32)
"""


def run_fastai(python: Path, urls: Path, tmp: Path) -> tuple[float, int]:
    out = tmp / "fastai"
    started = time.perf_counter()
    subprocess.run([str(python), "-c", FASTAI, str(urls), str(out)], check=True, timeout=1800, capture_output=True)
    seconds = time.perf_counter() - started
    return seconds, len([p for p in out.iterdir() if p.is_file()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="image URLs (default 2000)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per response (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=64, help="our CONCURRENT_REQUESTS/ITEMS (default 64)")
    parser.add_argument("--peers", type=Path, default=DEFAULT_PEERS, help="folder made by benchmarks/peers.sh")
    parser.add_argument("--only", choices=["ours", "img2dataset", "fastai"], action="append")
    args = parser.parse_args(argv)
    images = make_images(args.count)
    httpd = serve(images, args.latency)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    rows = []
    try:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            urls = tmp / "urls.txt"
            urls.write_text("".join(f"{base}/img/{n}.jpg\n" for n in range(args.count)))
            runners = {
                "ours (verify+dedupe+catalog)": ("ours", lambda: run_ours(base, tmp, args.count, args.concurrency)),
                "img2dataset (32 threads x 2)": ("img2dataset", lambda: run_img2dataset(args.peers / "img2dataset" / "bin" / "python", urls, tmp)),
                "fastai download_images (32)": ("fastai", lambda: run_fastai(args.peers / "torch" / "bin" / "python", urls, tmp)),
            }
            for label, (key, run) in runners.items():
                if args.only and key not in args.only:
                    continue
                load = os.getloadavg()[0]
                try:
                    seconds, done = run()
                    rows.append((label, f"{done}", f"{seconds:.1f}", f"{done / seconds:.0f}", f"{load:.2f}"))
                except (OSError, subprocess.SubprocessError) as exc:
                    rows.append((label, "-", "-", f"not measured: {type(exc).__name__}", f"{load:.2f}"))
    finally:
        httpd.shutdown()
    header = ("tool", "images", "seconds", "images/s", "load")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = [f"{args.count} URLs, {args.latency * 1000:.0f} ms latency, {os.cpu_count()} cores"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.append(f"reproduce: bash benchmarks/peers.sh && .venv/bin/python -m benchmarks.pipeline_throughput --count {args.count} --latency {args.latency}")
    print("\n".join(lines))  # noqa: T201 (a benchmark's output is its table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
