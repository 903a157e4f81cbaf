"""What a crawl loads at start-up: modules only an optional feature needs stay unimported.

Start-up is part of every crawl's wall time (``benchmarks/pipeline_throughput``): redis and
scrapy-redis (the shared frontier, ``crawler/frontier.py``) and aiohttp (Scrapy's RemoteControl
extension, left out of ``EXTENSIONS_BASE`` in ``crawler/settings.py``) cost ~0.15 s together."""

from __future__ import annotations

import json
import sys

from crawls import gallery_command, run_crawl
from local_sites import LocalSite, encode, picture

# Runs `scrapy` in this interpreter and prints, at exit, which of the watched modules it loaded.
_WATCH = """
import atexit, json, runpy, sys
watched = ("redis", "scrapy_redis", "aiohttp", "scrapy.extensions.remote_control")
atexit.register(lambda: print("LOADED " + json.dumps([m for m in watched if m in sys.modules])))
sys.argv = ["scrapy", *sys.argv[1:]]
runpy.run_module("scrapy", run_name="__main__")
"""


def _site() -> LocalSite:
    images = "".join(f'<img src="/img/{n}.png">' for n in range(2))
    routes = {
        "/robots.txt": ("text/plain", b"User-agent: *\nAllow: /\n"),
        "/gallery": ("text/html; charset=utf-8", f"<html><body>{images}</body></html>".encode()),
    }
    return LocalSite(routes | {f"/img/{n}.png": ("image/png", encode(picture(4000 + n))) for n in range(2)})


def test_a_plain_crawl_imports_neither_redis_nor_aiohttp(tmp_path) -> None:
    with _site() as site:
        command = gallery_command(f"{site.url}/gallery", "cats", tmp_path / "data")
        result = run_crawl([sys.executable, "-c", _WATCH, *command[command.index("crawl"):]])
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(list((tmp_path / "data" / "cats").iterdir())) == 2  # the crawl did its work
    loaded = json.loads(result.stdout.rsplit("LOADED ", 1)[1].splitlines()[0])
    assert loaded == [], loaded


def test_scrapy_extensions_but_remote_control_stay_on() -> None:
    from scrapy.settings import default_settings

    from crawler import settings

    expected = dict(default_settings.EXTENSIONS_BASE)
    del expected["scrapy.extensions.remote_control.RemoteControl"]
    assert settings.EXTENSIONS_BASE == expected
