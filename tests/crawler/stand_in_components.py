"""A component that refuses its setting the way the project's pipelines do, for
test_user_errors.py (imported by a ``scrapy crawl`` subprocess through PYTHONPATH)."""

from __future__ import annotations

from crawler.errors import UserError


class PickyPipeline:
    """Refuses any ``PICKY_SIDE`` that is not a whole number, from ``from_crawler``."""

    @classmethod
    def from_crawler(cls, crawler):
        value = crawler.settings.get("PICKY_SIDE", "64")
        if not str(value).isdigit():
            raise UserError(f"PICKY_SIDE must be a whole number of pixels, got {value!r} (-s PICKY_SIDE=64)")
        return cls()

    def process_item(self, item):
        return item
