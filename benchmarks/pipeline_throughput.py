"""Benchmark: crawl throughput (issue 4), ours beside img2dataset and fastai's download_images.

A local server on 127.0.0.1 serves N distinct generated JPEGs (320x240, ~15 KB) with a fixed
latency per response (default 50 ms) and one listing page with every URL. It is aiohttp on its
own asyncio event loop (in a thread of this process): the earlier ``ThreadingHTTPServer``, one
thread per connection, made 26 of 2000 requests time out at 64 concurrent connections (30 s
``DOWNLOAD_TIMEOUT``, then retried), a limit of the benchmark's server that stalled every
tool's run; the asyncio server serves them all without a timeout. Each tool gets the same URL
list in the same run:

* ours: ``scrapy crawl gallery`` on the listing page into a fresh dataset: download, verify
  (complete decode), dedupe (phash + variant hashes, index, catalog lookups), store (atomic
  write, SQLite row; ``--variant STORE_FSYNC=1`` adds the durable row, fsync included).
  Images/s = stored images / wall time of the process (start-up included, as for the peers);
  CPU s include the crawl's worker processes (``PIPELINE_PROCESSES``). The politeness defaults
  (8 requests per site, AutoThrottle) are meant for real sites; here the crawl downloads 32 at
  once like the peers' 32 workers (``CONCURRENT_REQUESTS``/``CONCURRENT_REQUESTS_PER_DOMAIN`` =
  ``--concurrency``, ``AUTOTHROTTLE_ENABLED=0``; ``CONCURRENT_ITEMS`` the project's, ``--items``),
  printed under the table. ``BENCH_PROFILE=<file>`` runs the crawl process under cProfile
  timed by the main thread's CPU clock (the reactor thread's CPU per function; stats written to
  <file>; pipeline threads and worker processes are not profiled). The ``ReactorLag`` extension ticks every 10 ms on Scrapy's reactor
  and reports the longest late tick: CPU work that blocked the reactor would show up there. ``BENCH_STATS=1`` also prints our crawl's
  Scrapy stats; ``--variant SETTING=VALUE`` adds a row with settings changed.
* img2dataset (its own venv, no torch beside it): ``--thread_count 32 --processes_count 2``
  (files output, no resize). With img2dataset's default 10,000 samples per shard the 2000 URLs
  make one shard, so one of its two processes downloads them, 32 at once, as ours does.
* fastai ``download_images(..., n_workers=32)`` (its venv, with torch).

``--rounds N`` runs every tool N times, alternating (ours, img2dataset, fastai, ours, ...), and
prints each round's rows, the median images/s and CPU s per tool, and the median of the rounds'
ratios ours / img2dataset (a ratio is only read within one round: the machine drifts).
``--images DIR`` serves the JPEGs under DIR (e.g. the 397 hymenoptera photos, 500x375 and
larger) instead of the generated ones; ``--img2dataset-resize 256`` makes img2dataset resize
(``--resize_mode keep_ratio --image_size 256``, re-encoding each image) as its users run it.

Reproduce::

    bash benchmarks/peers.sh            # once
    .venv/bin/python -m benchmarks.pipeline_throughput [--count 2000] [--latency 0.05] [--floor] [--rounds 3]
    .venv/bin/python -m benchmarks.pipeline_throughput --images ../shared/data/hymenoptera_data --img2dataset-resize 256 --only ours --only img2dataset --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
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


class ImageServer:
    """The benchmark's image server: aiohttp on its own asyncio event loop in a daemon thread.

    ``GET /img/<n>.jpg`` returns ``images[n]`` (image/jpeg), ``/list...`` the listing page with
    every image URL (text/html), anything else a robots.txt that allows all (text/plain); each
    after ``latency`` seconds (``asyncio.sleep``: no thread per request or connection)."""

    ROBOTS = b"User-agent: *\nAllow: /\n"

    def __init__(self, images: list[bytes], latency: float) -> None:
        self.images = images
        self.latency = latency
        listing = "".join(f'<img src="/img/{n}.jpg">' for n in range(len(images)))
        self.page = f"<html><body>{listing}</body></html>".encode()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="image-server", daemon=True)
        self._thread.start()
        self._runner, self.server_address = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()

    async def _start(self) -> tuple[web.AppRunner, tuple[str, int]]:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024, shutdown_timeout=1.0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return runner, (host, port)

    async def _handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.latency)
        if request.path.startswith("/img/"):
            body, ctype = self.images[int(request.path[5:].split(".")[0])], "image/jpeg"
        elif request.path.startswith("/list"):
            body, ctype = self.page, "text/html"
        else:
            body, ctype = self.ROBOTS, "text/plain"
        return web.Response(body=body, content_type=ctype)

    def shutdown(self) -> None:
        """Stop serving: clean up the runner on its loop, then stop the loop and join the thread."""
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def serve(images: list[bytes], latency: float) -> ImageServer:
    """Start the image server on 127.0.0.1 (a free port: ``server_address[1]``)."""
    return ImageServer(images, latency)


class ReactorLag:
    """Scrapy extension (benchmark only): how late a 10 ms ``LoopingCall`` on the reactor runs
    (longest and 99th percentile, seconds), the reactor thread's CPU time, the CPU time of the
    work each pipeline hands to worker threads (``run_in_thread``) or to a group-commit thread
    (``crawler.threads.BatchThread``: the store's ``catalog-commit``, with its batches), and
    garbage-collection time; written as JSON to ``BENCH_RESULT_FILE`` when the spider closes."""

    INTERVAL = 0.01
    STAGES = ("crawler.pipelines.prepare", "crawler.pipelines.dedupe", "crawler.pipelines.store", "crawler.recorder")

    def __init__(self, crawler: Any, path: str) -> None:
        from scrapy import signals
        from twisted.internet import task

        self.crawler = crawler
        self.path = path
        self.lags: list[tuple[float, float]] = []  # (lag, seconds since opening)
        self.thread_cpu: dict[str, float] = {}
        self.thread_wall: dict[str, float] = {}
        self.awaited: dict[str, float] = {}
        self.gc_seconds = [0.0, 0.0, 0.0]
        self._lock = threading.Lock()
        self._last = self._opened = self._main_cpu = self._gc_start = 0.0
        self._loop = task.LoopingCall(self._tick)
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Any) -> ReactorLag:
        return cls(crawler, crawler.settings.get("BENCH_RESULT_FILE"))

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last:
            self.lags.append((now - self._last - self.INTERVAL, time.time() - self._opened))
        self._last = now

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_seconds[info["generation"]] += time.perf_counter() - self._gc_start

    def _time_thread_work(self) -> None:
        """Wrap each stage's ``run_in_thread`` to sum the CPU time of what it runs."""
        import importlib

        def timed(stage: str, original: Any) -> Any:
            async def run_in_thread(func: Any, *args: object) -> Any:
                def work() -> Any:
                    started, cpu = time.perf_counter(), time.thread_time()
                    try:
                        return func(*args)
                    finally:
                        with self._lock:
                            self.thread_cpu[name] = self.thread_cpu.get(name, 0.0) + time.thread_time() - cpu
                            self.thread_wall[name] = self.thread_wall.get(name, 0.0) + time.perf_counter() - started

                name = f"{stage.rsplit('.', 1)[-1]}.{getattr(func, '__name__', '?')}"
                queued = time.perf_counter()
                try:
                    return await original(work)
                finally:
                    with self._lock:
                        self.awaited[name] = self.awaited.get(name, 0.0) + time.perf_counter() - queued

            return run_in_thread

        for stage in self.STAGES:
            module = importlib.import_module(stage)
            for name in ("run_in_thread", "run_io_in_thread"):
                if hasattr(module, name):
                    setattr(module, name, timed(stage, getattr(module, name)))

    def spider_opened(self) -> None:
        import gc

        self._opened = time.time()
        self._main_cpu = time.thread_time()
        gc.callbacks.append(self._gc)
        self._time_thread_work()
        self._loop.start(self.INTERVAL)

    def spider_closed(self) -> None:
        import gc

        if self._loop.running:
            self._loop.stop()
        lags = sorted(self.lags) or [(0.0, 0.0)]
        # Group-commit threads (crawler.threads.BatchThread) count their own CPU time.
        batches = {}
        engine = getattr(self.crawler, "engine", None)
        itemproc = getattr(getattr(engine, "scraper", None), "itemproc", None)
        for pipeline in getattr(itemproc, "middlewares", ()):
            committer = getattr(pipeline, "committer", None)
            if committer is not None:
                name = f"{type(pipeline).__module__.rsplit('.', 1)[-1]}.{committer.name}"
                self.thread_cpu[name] = committer.cpu_seconds
                batches[name] = (committer.batches, committer.tasks)
        result = {
            "opened": self._opened,
            "closed": time.time(),
            "max_lag": lags[-1][0],
            "max_lag_at": lags[-1][1],
            "p99_lag": lags[int(0.99 * (len(lags) - 1))][0],
            "main_cpu": time.thread_time() - self._main_cpu,
            "thread_cpu": self.thread_cpu,
            "thread_wall": self.thread_wall,
            "awaited": self.awaited,
            "batches": batches,
            "gc": self.gc_seconds,
            "gc_counts": [generation["collections"] for generation in gc.get_stats()],
            "stats": {k: v for k, v in self.crawler.stats.get_stats().items() if isinstance(v, int | float)},
        }
        Path(self.path).write_text(json.dumps(result))


# Runs a script (argv[2:]) under cProfile timed by the thread's CPU clock, stats to argv[1]: the
# default wall clock would charge the reactor thread's functions for the time other threads and
# the workers held the cores. cProfile (Python < 3.12) sees only the thread that enabled it.
PROFILE_CPU = """
import cProfile, runpy, sys, time
out, sys.argv = sys.argv[1], sys.argv[2:]
profiler = cProfile.Profile(time.thread_time)
profiler.enable()
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


def ours_settings(concurrency: int, items: int) -> dict[str, object]:
    """The ``-s`` settings of our benchmark crawl (besides DATASET_DIR)."""
    return {
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
        "CONCURRENT_ITEMS": items,
        "AUTOTHROTTLE_ENABLED": 0,
    }


def run_ours(base: str, tmp: Path, settings: dict[str, object]) -> tuple[float, int, dict]:
    from crawler import settings as project

    dataset = tmp / f"ours-{len(list(tmp.glob('ours*')))}"
    result = tmp / "ours-result.json"
    extensions = {**project.EXTENSIONS, "benchmarks.pipeline_throughput.ReactorLag": 900}
    options = {**settings, "LOG_LEVEL": "WARNING", "DATASET_DIR": dataset,
               "BENCH_RESULT_FILE": result, "EXTENSIONS": json.dumps(extensions)}
    # BENCH_PROFILE=<file>: the crawl process's main (reactor) thread under cProfile, stats to <file>.
    profile = os.environ.get("BENCH_PROFILE")
    command = [sys.executable, "-c", PROFILE_CPU, profile, str(_SCRAPY)] if profile else SCRAPY
    started, wall = time.perf_counter(), time.time()
    subprocess.run(
        [*command, "crawl", "gallery", "-a", "label=bench", "-a", f"start_urls={base}/list.html",
         *(arg for key, value in options.items() for arg in ("-s", f"{key}={value}"))],
        cwd=REPO, check=True, timeout=1800,
    )
    seconds = time.perf_counter() - started
    info = json.loads(result.read_text())
    stored = len(list((dataset / "bench").glob("*")))
    if "ITEM_PIPELINES" in settings:  # the floor row stores nothing: count downloaded items
        stored = int(info["stats"].get("item_scraped_count", 0))
    if os.environ.get("BENCH_STATS"):
        print(json.dumps(info["stats"], indent=1, sort_keys=True))  # noqa: T201
    info["phases"] = (info["opened"] - wall, info["closed"] - info["opened"], time.time() - info["closed"])
    return seconds, stored, info


def read_images(folder: Path) -> list[bytes]:
    """The bytes of every JPEG under ``folder`` (by magic number, sorted by path)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        body = path.read_bytes()
        if body[:3] == b"\xff\xd8\xff":
            found.append(body)
    return found


def run_img2dataset(python: Path, urls: Path, tmp: Path, resize: int = 0) -> tuple[float, int, dict]:
    out = tmp / f"img2dataset-{len(list(tmp.glob('img2dataset*')))}"
    how = ["--resize_mode", "keep_ratio", "--image_size", str(resize)] if resize else ["--resize_mode", "no", "--disable_all_reencoding", "True"]
    started = time.perf_counter()
    subprocess.run(
        [str(python.with_name("img2dataset")), "--url_list", str(urls), "--output_folder", str(out),
         "--thread_count", "32", "--processes_count", "2", *how,
         "--output_format", "files", "--input_format", "txt"],
        check=True, timeout=1800, capture_output=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    seconds = time.perf_counter() - started
    return seconds, len(list(out.rglob("*.jpg"))), {}


FASTAI = """
import sys
from pathlib import Path
from fastai.vision.utils import download_images
download_images(Path(sys.argv[2]), url_file=Path(sys.argv[1]), max_pics=10**9, n_workers=32)
"""


def run_fastai(python: Path, urls: Path, tmp: Path) -> tuple[float, int, dict]:
    out = tmp / f"fastai-{len(list(tmp.glob('fastai*')))}"
    started = time.perf_counter()
    subprocess.run([str(python), "-c", FASTAI, str(urls), str(out)], check=True, timeout=1800, capture_output=True)
    seconds = time.perf_counter() - started
    return seconds, len([p for p in out.iterdir() if p.is_file()]), {}


def measure(run: Any) -> tuple[tuple[str, ...], float, dict]:
    """Run one tool: its table cells (images, seconds, images/s, CPU s, server CPU s, lag,
    load), its images/s (0 when it failed) and what it reported."""
    load = os.getloadavg()[0]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = resource.getrusage(resource.RUSAGE_SELF)
    try:
        seconds, done, extra = run()
    except (OSError, subprocess.SubprocessError) as exc:
        return ("-", "-", f"not measured: {type(exc).__name__}", "-", "-", "-", f"{load:.2f}"), 0.0, {}
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    served = resource.getrusage(resource.RUSAGE_SELF)
    server_s = served.ru_utime + served.ru_stime - server.ru_utime - server.ru_stime
    lag = f"{extra['max_lag'] * 1000:.0f} (p99 {extra['p99_lag'] * 1000:.0f})" if "max_lag" in extra else "-"
    cells = (f"{done}", f"{seconds:.1f}", f"{done / seconds:.0f}", f"{cpu_s:.1f}", f"{server_s:.1f}", lag, f"{load:.2f}")
    return cells, done / seconds, extra


def summary(rates: dict[str, list[tuple[int, float, float]]]) -> list[str]:
    """Median images/s and CPU s per tool over the rounds, and the median of each round's ratio
    of every other tool to img2dataset (a ratio is read within one round)."""
    lines = ["medians over the rounds:"]
    peer = next((label for label in rates if label.startswith("img2dataset")), None)
    for label, runs in rates.items():
        line = f"  {label}: {statistics.median(r for _, r, _ in runs):.0f} images/s, {statistics.median(c for _, _, c in runs):.1f} CPU s"
        if peer and label != peer:
            theirs = {round_: rate for round_, rate, _ in rates[peer]}
            ratios = [rate / theirs[round_] for round_, rate, _ in runs if round_ in theirs]
            if ratios:
                line += f"; x img2dataset per round {' '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f}"
        lines.append(line)
    return lines


def describe(label: str, info: dict[str, Any]) -> str:
    """One line of where our crawl's time went (from ``ReactorLag``)."""
    startup, crawl, exit_ = info["phases"]
    gc = ", ".join(f"gen{n} {c}x {t:.2f} s" for n, (c, t) in enumerate(zip(info["gc_counts"], info["gc"], strict=True)))
    def work(name: str, seconds: float) -> str:
        if name in info.get("batches", {}):
            batches, tasks = info["batches"][name]
            return f"{name} {seconds:.2f} ({batches} batches of {tasks / max(batches, 1):.1f} items)"
        return f"{name} {seconds:.2f} (ran {info['thread_wall'].get(name, 0.0):.1f}, awaited {info['awaited'].get(name, 0.0):.1f})"

    cpu = ", ".join(work(name, seconds) for name, seconds in sorted(info["thread_cpu"].items()))
    return (
        f"{label}: start-up {startup:.1f} s, crawl {crawl:.1f} s, exit {exit_:.1f} s; longest lag "
        f"{info['max_lag_at']:.1f} s after opening; CPU s: reactor thread {info['main_cpu']:.2f}; work in threads, CPU s "
        f"(ran s, awaited s, summed over items): {cpu}; "
        f"garbage collection {gc}"
    )


def main(argv: list[str] | None = None) -> int:
    from crawler import settings as project

    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="image URLs (default 2000)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per response (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=32, help="our CONCURRENT_REQUESTS (default 32, the peers' workers)")
    parser.add_argument("--items", type=int, default=project.CONCURRENT_ITEMS,
                        help=f"our CONCURRENT_ITEMS (default: the project's CONCURRENT_ITEMS, {project.CONCURRENT_ITEMS})")
    parser.add_argument("--variant", action="append", default=[], metavar="SETTING=VALUE[,...]",
                        help="also run ours with these settings changed (repeatable)")
    parser.add_argument("--floor", action="store_true",
                        help="also run ours with the download stage only (Scrapy's own cost: no verify, dedupe or store)")
    parser.add_argument("--peers", type=Path, default=DEFAULT_PEERS, help="folder made by benchmarks/peers.sh")
    parser.add_argument("--only", choices=["ours", "img2dataset", "fastai"], action="append")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of every tool (default 1)")
    parser.add_argument("--images", type=Path, help="serve the JPEGs under this folder instead of generated ones")
    parser.add_argument("--img2dataset-resize", type=int, default=0, metavar="SIDE",
                        help="img2dataset resizes to this shorter side (keep_ratio) instead of keeping the bytes")
    args = parser.parse_args(argv)
    ours = ours_settings(args.concurrency, args.items)
    images = read_images(args.images) if args.images else make_images(args.count)
    args.count = len(images)
    httpd = serve(images, args.latency)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    rows = []
    details: list[str] = []
    rates: dict[str, list[tuple[int, float, float]]] = {}  # label: (round, images/s, CPU s)
    try:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            urls = tmp / "urls.txt"
            urls.write_text("".join(f"{base}/img/{n}.jpg\n" for n in range(args.count)))
            runners = {
                "ours (verify+dedupe+catalog)": ("ours", lambda: run_ours(base, tmp, ours)),
                f"img2dataset (32 threads x 2{f', resize {args.img2dataset_resize}' if args.img2dataset_resize else ''})": (
                    "img2dataset",
                    lambda: run_img2dataset(args.peers / "img2dataset" / "bin" / "python", urls, tmp, args.img2dataset_resize),
                ),
                "fastai download_images (32)": ("fastai", lambda: run_fastai(args.peers / "torch" / "bin" / "python", urls, tmp)),
            }
            if args.floor:
                floor = {**ours, "ITEM_PIPELINES": json.dumps({"crawler.pipelines.download.DownloadPipeline": 100})}
                runners["ours, download stage only"] = ("ours", lambda: run_ours(base, tmp, floor))
            for variant in args.variant:
                changed = dict(pair.split("=", 1) for pair in variant.split(","))
                runners[f"ours, {variant}"] = ("ours", lambda changed=changed: run_ours(base, tmp, {**ours, **changed}))
            chosen = [(label, run) for label, (key, run) in runners.items() if not args.only or key in args.only]
            for round_ in range(1, args.rounds + 1):
                for label, run in chosen:
                    row, rate, extra = measure(run)
                    rows.append((label, str(round_), *row))
                    if rate:
                        rates.setdefault(label, []).append((round_, rate, float(row[3])))
                    if "phases" in extra:
                        details.append(describe(f"{label}, round {round_}", extra))
    finally:
        httpd.shutdown()
    header = ("tool", "round", "images", "seconds", "images/s", "CPU s", "server CPU s", "reactor lag ms", "load (1 min)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{args.count} URLs, {args.latency * 1000:.0f} ms latency, {os.cpu_count()} cores"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.append(
        "CPU s: user + system time of the tool's processes; server CPU s: the local image server's "
        "(this process) meanwhile; reactor lag: longest (99th percentile) delay of a 10 ms tick"
    )
    lines += summary(rates) if args.rounds > 1 else []
    lines += details
    lines.append("ours: " + " ".join(f"-s {k}={v}" for k, v in ours.items()))
    source = f"--images {args.images}" if args.images else f"--count {args.count}"
    lines.append(f"reproduce: bash benchmarks/peers.sh && .venv/bin/python -m benchmarks.pipeline_throughput {source} --latency {args.latency} --rounds {args.rounds}")
    print("\n".join(lines))  # noqa: T201 (a benchmark's output is its table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
