"""Figures: ``gallery -a render=1`` on each kind of JavaScript gallery (issue 17).

Serves the local galleries of ``tests/crawler/render_sites.py`` (infinite scroll, "load more"
button, script-driven "next" pages, a JSON API feed whose page asks for more only on mouse-wheel
events, IntersectionObserver/srcset/<picture> lazy loading, an unlabelled "load more" icon found
with ``-a more_selector``) on 127.0.0.1, runs one whole ``scrapy crawl`` per gallery in Debian's
Chromium, and prints per gallery: images stored / in the gallery, wall time of the crawl
(Scrapy and Chromium start-up included), pages rendered, JSON API pages read without a browser,
image requests the server saw (and how many came from the browser: none expected), and the
spider's "page rendered" line.

Reproduce::

    .venv/bin/python -m benchmarks.render_galleries               # 48 images, 12 per batch
    .venv/bin/python -m benchmarks.render_galleries --total 120 --batch 24
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "crawler"))

from crawls import gallery_command, run_crawl, stored_paths  # noqa: E402
from render_sites import KINDS, RenderSite  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=48, help="images per gallery")
    parser.add_argument("--batch", type=int, default=12, help="images per scroll/click/page")
    args = parser.parse_args()
    print("| gallery | stored | wall s | pages rendered | API pages read plainly | image requests (browser) | rendering |")
    print("|---|---:|---:|---:|---:|---:|---|")
    with RenderSite(total=args.total, batch=args.batch) as site, tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            extra = ["-a", "more_selector=.fab"] if kind == "icon" else []
            dataset = Path(tmp) / kind
            site.requests.clear()
            start = time.perf_counter()
            result = run_crawl(gallery_command(site.url(kind), "pics", dataset, "-a", "render=1", *extra), timeout=600)
            wall = time.perf_counter() - start
            rendered = int(m.group(1)) if (m := re.search(r"'playwright/page_count': (\d+)", result.stdout)) else 0
            parsed = len(re.findall(r"INFO: page \d+: \d+ new image URLs", result.stdout))
            line = next((ln.split("rendered: ", 1)[1] for ln in result.stdout.splitlines() if " rendered: " in ln), "")
            images = site.logged("/img/")
            browser = sum(1 for _, headers in images if any(name.startswith("sec-") for name in headers))
            print(
                f"| {kind} | {len(stored_paths(dataset))}/{args.total} | {wall:.1f} | {rendered} | "
                f"{parsed - rendered} | {len(images)} ({browser}) | {line} |"
            )


if __name__ == "__main__":
    main()
