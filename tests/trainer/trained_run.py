"""Helpers for the after-training tests: one tiny trained run, a live server, a headless Chromium.

(A module rather than conftest.py, so test modules can import it: pytest puts this folder on
sys.path.)"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from trainer_testkit import write_catalog_dataset
from uvicorn_thread import live_server as uvicorn_live_server

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def train_tiny_run(base: Path, *overrides: str, per_class: int = 12) -> tuple[Path, Path, dict[str, Any]]:
    """Train baseline_cnn for 3 epochs on a 3-class dataset of drawn shapes (32 px, CPU).

    Returns ``(dataset dir, run dir, summary)``.
    """
    from trainer.train import train

    dataset, run = base / "dataset", base / "run"
    write_catalog_dataset(dataset, per_class=per_class)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                config_name="train",
                return_hydra_config=True,
                overrides=[
                    "trainer=cpu", "data.image_size=32", "data.batch_size=8", "data.num_workers=0",
                    "data.persistent_workers=false", "data.pin_memory=false", "data.augment=none",
                    "trainer.max_epochs=3", "+trainer.enable_progress_bar=false", "~callbacks.progress_bar",
                    "model.optimizer.lr=0.003", f"data.root={dataset}", *overrides,
                ],
            )
        with open_dict(cfg):
            cfg.paths.output_dir = str(run)
            cfg.paths.log_dir = str(base / "runs")
            cfg.hydra.runtime.output_dir = str(run)
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        summary = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    return dataset, run, summary


# ``with live_server(app) as url``: the shared uvicorn thread, with the ASGI lifespan required.
live_server = functools.partial(uvicorn_live_server, lifespan="on")


@contextlib.contextmanager
def chromium_page(width: int = 1000, height: int = 700) -> Iterator[Any]:
    """A page of Debian's headless Chromium driven by Playwright (it cannot download its own)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def post_file(url: str, data: bytes | None, filename: str = "x.png", field: str = "file") -> tuple[int, dict]:
    """POST ``data`` as a multipart upload (``None``: an empty form); return (status, JSON body)."""
    import json
    import urllib.error
    import urllib.request

    boundary = "----testboundary7d3f"
    body = b""
    if data is not None:
        body += (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + b"\r\n"
    else:
        body += f"--{boundary}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n".encode()
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
