"""The item that flows from a spider through download -> prepare -> dedupe -> store."""

from __future__ import annotations

import scrapy

__all__ = ["ImageItem"]

# Fields too big to log: the downloaded bytes and the hashes.
_HEAVY = frozenset({"body", "image_hashes", "file_urls", "files", "look", "pdq_dihedral"})


class ImageItem(scrapy.Item):
    """One image URL found on one page, and what the pipelines learnt about it.

    Set by the spider: ``url`` (the image URL, ``data:`` URIs included), ``page_url``, ``label``,
    ``query``, ``spider``, optional ``licence``/``author``, ``listing_url`` (the listing page that
    linked to ``page_url`` when the image was taken from an item's detail page), and ``file_urls`` (``[url]``, the
    field Scrapy's FilesPipeline reads).
    Set by the pipelines: ``body`` (bytes in flight: downloaded, then the bytes to store),
    ``bytes`` (size of the downloaded bytes), ``sha256`` (of the downloaded bytes, hex),
    ``image_hashes`` (the prepare stage's perceptual hashes of the image, ``{kind: hex}``,
    removed by dedupe) and ``staged`` (``(temporary file, SHA-256 hex)`` of the bytes to store,
    which then replace ``body``; set whether the prepare stage ran in a worker process or a
    thread, whenever the crawl has a dataset), ``width`` and ``height`` (pixels of the
    stored image, after EXIF orientation and any ``VERIFY_MAX_SIDE`` resize), ``source_width`` and ``source_height`` (pixels of the
    downloaded image, after EXIF orientation), ``format`` (Pillow name of the stored bytes),
    ``ext``, ``phash`` (16 hex chars), ``hashes`` (``{kind: hex}``, the extra perceptual hashes
    of dedupe's variants, catalogued in ``image_hashes``), with ``DEDUPE_HASH=pdq`` ``pdq`` (64
    hex chars), ``pdq_quality`` (0-100), ``pdq_dihedral`` (its 8 flips and rotations, for the
    store's re-check) and ``look`` (the second look's thumbnail, bytes), ``catalog_seen_id`` (last catalog id dedupe compared
    against), and the outcome: ``status`` (``stored``/``duplicate``/``rejected``), ``reason``,
    ``path``, ``duplicate_of``, ``hash_distance`` (bits); ``replaces`` (``[(path, distance)]`` of
    smaller stored copies this item supersedes).
    """

    url = scrapy.Field()
    page_url = scrapy.Field()
    listing_url = scrapy.Field()
    label = scrapy.Field()
    query = scrapy.Field()
    spider = scrapy.Field()
    licence = scrapy.Field()
    author = scrapy.Field()
    file_urls = scrapy.Field()
    files = scrapy.Field()
    body = scrapy.Field()
    bytes = scrapy.Field()
    sha256 = scrapy.Field()
    image_hashes = scrapy.Field()
    staged = scrapy.Field()
    width = scrapy.Field()
    height = scrapy.Field()
    source_width = scrapy.Field()
    source_height = scrapy.Field()
    format = scrapy.Field()
    ext = scrapy.Field()
    phash = scrapy.Field()
    hashes = scrapy.Field()
    pdq = scrapy.Field()
    pdq_quality = scrapy.Field()
    pdq_dihedral = scrapy.Field()
    look = scrapy.Field()
    catalog_seen_id = scrapy.Field()
    status = scrapy.Field()
    reason = scrapy.Field()
    path = scrapy.Field()
    duplicate_of = scrapy.Field()
    hash_distance = scrapy.Field()
    replaces = scrapy.Field()

    def __repr__(self) -> str:
        # Scrapy logs dropped and scraped items with repr(); megabytes of bytes would flood it.
        shown = {}
        for key, value in self.items():
            if key in _HEAVY:
                continue
            if isinstance(value, str) and value.startswith("data:") and len(value) > 60:
                value = value[:60] + "..."
            shown[key] = value
        return f"ImageItem({shown!r})"
