"""Fixtures for the crawler tests: real image bytes made with Pillow, crawlers, pipelines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return tmp_path / "dataset"


@pytest.fixture
def make_crawler(dataset_dir: Path) -> Callable[..., Any]:
    """``make_crawler(**settings)``: an unstarted Crawler with DATASET_DIR set to a tmp folder."""

    def make(**settings: Any) -> Any:
        return get_crawler(settings_dict={"DATASET_DIR": str(dataset_dir), **settings})

    return make


@pytest.fixture
def build() -> Callable[..., Any]:
    """``build(cls, crawler)``: a component built the way Scrapy builds it."""
    return build_from_crawler


