"""Image records from the JSON a gallery page loads its items from (its own API, "feed").

Plain functions on decoded JSON, no Scrapy and no browser: the render middleware feeds them the
XHR/fetch answers it captures while a page renders, and the gallery spider the JSON pages of a
plain crawl started at such an API.

A JSON answer lists a gallery's items when it holds a list of objects of which at least
:data:`MIN_ITEMS` carry an image URL. Per object, the image URL is the value, at the object's
top level or one level down (``"urls": {"full": ...}``, ``"image": {"src": ...}``), with the
best image key (:data:`IMAGE_KEYS`, larger sizes first; ``thumb``/``small`` ones last) whose
value is an http(s) URL (or a path, resolved against the answer's URL) that either ends in an
image extension or sits under an image key. The item's page is its ``link``/``permalink``/
``href``/``page_url`` (or a non-image ``url``), its title its ``title``/``name``/``alt``/
``caption``. These names are the common ones of public gallery and shop APIs (Unsplash, Flickr,
Pexels, WordPress, Shopify, Wikimedia), not a standard: an API they miss is still crawled by
rendering its page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlparse

__all__ = ["MIN_ITEMS", "FeedImage", "feed_images", "next_feed_url"]

#: An answer lists the gallery's items when at least this many objects carry an image URL
#: (one image in a JSON answer is usually a logo, an avatar or a settings object).
MIN_ITEMS = 2
# Image keys, most preferred first: originals and large sizes over thumbnails.
IMAGE_KEYS = (
    "original", "orig", "full", "fullsize", "full_size", "raw", "download_url", "hires",
    "large", "large_url", "url_o", "url_l", "src_large", "largeimageurl", "large2x",
    "image", "image_url", "imageurl", "img", "img_url", "photo", "photo_url", "picture",
    "src", "file", "file_url", "url", "href", "contenturl", "content_url",
    "regular", "medium", "url_m", "webformaturl",
    "small", "preview", "previewurl", "preview_url", "thumbnail", "thumbnail_url", "thumb",
    "thumburl", "url_s", "url_t", "tiny",
)
_IMAGE_KEY_RANK = {key: rank for rank, key in enumerate(IMAGE_KEYS)}
# Containers one level down that hold an item's image URLs by size or format.
_NESTED_KEYS = ("urls", "image", "images", "img", "photo", "picture", "src", "sizes", "media",
                "file", "thumbnail", "featured_image", "featured_media", "source")
PAGE_KEYS = ("link", "permalink", "href", "page_url", "pageurl", "page", "html_url", "detail_url",
             "url")
TITLE_KEYS = ("title", "name", "alt", "alt_text", "alt_description", "caption", "description")
NEXT_KEYS = ("next", "next_url", "nextpage", "next_page", "next_page_url", "nextpageurl", "next_href")
_PAGE_LIKE = (frozenset({"url", "href", "link", "src", "file"}), frozenset({"href", "link"}))
_IMAGE_PATH = re.compile(r"\.(jpe?g|jpe|png|gif|webp|bmp|tiff?|avif)$", re.I)


@dataclass(frozen=True)
class FeedImage:
    """One gallery item of a JSON answer: its image URL, its page (or ``None``) and title;
    ``sizes`` holds every image URL the item gives (the page may show any of them)."""

    url: str
    page_url: str | None = None
    title: str | None = None
    sizes: tuple[str, ...] = field(default=(), compare=False)


def feed_images(data: Any, base_url: str) -> list[FeedImage]:
    """The gallery items of one decoded JSON answer, in document order, one per image URL.

    Args:
        data: the decoded JSON (``json.loads`` of the answer's body).
        base_url: the answer's URL; relative URLs in it resolve against it.

    Returns:
        The items of every list of objects with at least :data:`MIN_ITEMS` image URLs; an empty
        list when the answer lists no images (a settings object, a count, an error message).
    """
    found: list[FeedImage] = []
    seen: set[str] = set()
    for items in _object_lists(data):
        images = [image for item in items if (image := _item_image(item, base_url))]
        if len(images) < MIN_ITEMS:
            continue
        for image in images:
            if image.url not in seen:
                seen.add(image.url)
                found.append(image)
    return found


def next_feed_url(data: Any, base_url: str) -> str | None:
    """The next page's URL a JSON answer names (``next``, ``links.next``, ``paging.next``...).

    Only a top-level key, or one inside a top-level ``links``/``paging``/``pagination``/``meta``
    object, counts: deeper ``next`` keys belong to items.
    """
    if not isinstance(data, dict):
        return None
    holders = [data] + [data[k] for k in ("links", "paging", "pagination", "meta", "_links")
                        if isinstance(data.get(k), dict)]
    for holder in holders:
        for key, value in holder.items():
            if key.lower().replace("-", "_") not in NEXT_KEYS:
                continue
            if isinstance(value, dict):  # HAL: "_links": {"next": {"href": ...}}
                value = value.get("href")
            if isinstance(value, str) and value.strip() and not value.startswith(("javascript:", "#")):
                url = urljoin(base_url, value.strip())
                if urlparse(url).scheme in ("http", "https"):
                    return url
    return None


def _object_lists(data: Any, depth: int = 0) -> Iterator[list[dict[str, Any]]]:
    """Every list of objects in ``data``, outermost first (bounded depth: hostile JSON)."""
    if depth > 8:
        return
    if isinstance(data, list):
        objects = [item for item in data if isinstance(item, dict)]
        if objects:
            yield objects
        for item in data:
            if isinstance(item, (dict, list)):
                yield from _object_lists(item, depth + 1)
    elif isinstance(data, dict):
        for value in data.values():
            if isinstance(value, (dict, list)):
                yield from _object_lists(value, depth + 1)


def _item_image(item: dict[str, Any], base_url: str) -> FeedImage | None:
    candidates: list[tuple[int, int, str]] = []  # (key rank, nesting depth, url)
    _image_candidates(item, base_url, 0, candidates)
    for key in _NESTED_KEYS:
        for nested in _as_objects(_get(item, key)):
            _image_candidates(nested, base_url, 1, candidates)
    if not candidates:
        return None
    url = min(candidates)[2]
    page = None
    for key in PAGE_KEYS:
        value = _get(item, key)
        if isinstance(value, str) and value.strip():
            resolved = _http_url(value, base_url)
            if resolved and resolved != url and not _IMAGE_PATH.search(urlparse(resolved).path):
                page = resolved
                break
    title = next((v.strip() for k in TITLE_KEYS if isinstance(v := _get(item, k), str) and v.strip()), None)
    return FeedImage(url, page, title, tuple(dict.fromkeys(c[2] for c in candidates)))


def _image_candidates(obj: dict[str, Any], base_url: str, depth: int, out: list[tuple[int, int, str]]) -> None:
    for key, value in obj.items():
        if not isinstance(value, str):
            continue
        name = key.lower().replace("-", "_")
        url = _http_url(value, base_url)
        if not url:
            continue
        rank = _IMAGE_KEY_RANK.get(name)
        if _IMAGE_PATH.search(urlparse(url).path):
            out.append((len(IMAGE_KEYS) if rank is None else rank, depth, url))
        elif rank is not None and name not in _PAGE_LIKE[depth > 0]:
            # No extension (CDN URLs like /photo-123?w=1080): trusted only under an image key;
            # a bare "url"/"src" only inside an image object ("image": {"url": ...}).
            out.append((rank, depth, url))


def _as_objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value[:1] if isinstance(v, dict)]  # an item's first image
    return []


def _get(obj: dict[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    for name, value in obj.items():
        if name.lower().replace("-", "_") == key:
            return value
    return None


def _http_url(value: str, base_url: str) -> str | None:
    text = value.strip()
    if not text or len(text) > 4096 or any(c.isspace() for c in text):
        return None
    if not (text.startswith(("http://", "https://", "//", "/")) or _IMAGE_PATH.search(text.split("?")[0])):
        return None  # plain words ("large", "jpeg") are not URLs
    url = urljoin(base_url, text)
    return url if urlparse(url).scheme in ("http", "https") else None
